"""LeNet-300-100 (LeCun et al. 1998; the Deep Compression MLP) and LeNet-5 for 28x28 images."""

from __future__ import annotations

import torch
from torch import nn


class LeNet300100(nn.Module):
    """784-300-100-10 fully connected network with ReLU."""

    def __init__(self, in_features: int = 784, num_classes: int = 10) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1, self.relu1 = nn.Linear(in_features, 300), nn.ReLU()
        self.fc2, self.relu2 = nn.Linear(300, 100), nn.ReLU()
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 28, 28)
        x = self.relu1(self.fc1(self.flatten(x)))
        return self.fc3(self.relu2(self.fc2(x)))


class LeNet5(nn.Module):
    """Two 5x5 conv + max-pool stages, then 120-84-10 fully connected (ReLU activations)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)  # (B, 6, 28, 28)
        self.relu1, self.pool1 = nn.ReLU(), nn.MaxPool2d(2)  # (B, 6, 14, 14)
        self.conv2 = nn.Conv2d(6, 16, 5)  # (B, 16, 10, 10)
        self.relu2, self.pool2 = nn.ReLU(), nn.MaxPool2d(2)  # (B, 16, 5, 5)
        self.flatten = nn.Flatten()
        self.fc1, self.relu3 = nn.Linear(16 * 5 * 5, 120), nn.ReLU()
        self.fc2, self.relu4 = nn.Linear(120, 84), nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.flatten(self.pool2(self.relu2(self.conv2(x))))
        x = self.relu4(self.fc2(self.relu3(self.fc1(x))))
        return self.fc3(x)
