"""Small architectures that exercise structured pruning's coupling rules, for 1x28x28 inputs.

Each is post-activation (conv -> BN -> ReLU), so a channel whose producer rows and BN scale and
shift are zero is exactly zero downstream: removing it must leave the function unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(c_in: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (same padding) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class DenseNetStyle(nn.Module):
    """A dense block: each layer's output is concatenated onto its input (channel offsets)."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = conv_bn(1, 8, stride=2)  # (B, 8, 14, 14)
        self.layer1 = conv_bn(8, 4)  # reads [stem]
        self.layer2 = conv_bn(12, 4)  # reads [stem, layer1]
        self.transition = conv_bn(16, 8, k=1)  # reads [stem, layer1, layer2]
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([x, self.layer1(x)], dim=1)  # (B, 12, 14, 14)
        x = torch.cat([x, self.layer2(x)], dim=1)  # (B, 16, 14, 14)
        return self.fc(torch.flatten(self.pool(self.transition(x)), 1))


class MobileNetStyle(nn.Module):
    """Depthwise-separable blocks (one with channel multiplier 2) and an inverted residual."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = conv_bn(1, 8, stride=2)  # (B, 8, 14, 14)
        self.dw1 = conv_bn(8, 16, groups=8)  # depthwise, multiplier 2
        self.pw1 = conv_bn(16, 16, k=1)
        self.expand = conv_bn(16, 32, k=1)
        self.dw2 = conv_bn(32, 32, groups=32)
        self.project = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.pool, self.flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten()
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw1(self.dw1(self.stem(x)))
        x = x + self.project(self.dw2(self.expand(x)))  # inverted residual
        return self.fc(self.flatten(self.pool(x)))


class GroupedNet(nn.Module):
    """ResNeXt-style grouped convolutions (2 and 4 groups) ending in flatten -> Linear."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = conv_bn(1, 8, stride=2)  # (B, 8, 14, 14)
        self.g2 = conv_bn(8, 16, groups=2, stride=2)  # (B, 16, 7, 7)
        self.g4 = conv_bn(16, 16, groups=4)
        self.pool = nn.AdaptiveAvgPool2d(2)  # (B, 16, 2, 2)
        self.fc1, self.relu = nn.Linear(16 * 4, 16), nn.ReLU()
        self.fc2 = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.g4(self.g2(self.stem(x))))
        return self.fc2(self.relu(self.fc1(x.flatten(1))))


class SkipMLP(nn.Module):
    """An MLP with residual blocks, a BatchNorm1d, and one block applied twice (shared weights)."""

    def __init__(self, num_classes: int = 4, width: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.inp = nn.Linear(784, width)
        self.fc1, self.act, self.fc2 = nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width)
        self.bn = nn.BatchNorm1d(width)
        self.shared = nn.Linear(width, width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x.flatten(1))
        h = h + self.bn(self.fc2(self.act(self.fc1(h))))
        h = h + self.act(self.shared(h))
        h = h + self.act(self.shared(h))
        return self.head(h)


class Conv1dNet(nn.Module):
    """Image rows as a sequence: Conv1d + BatchNorm1d, a grouped Conv1d, flatten -> Linear."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(28, 16, 3, padding=1)
        self.bn1, self.relu = nn.BatchNorm1d(16), nn.ReLU()
        self.conv2 = nn.Conv1d(16, 16, 3, stride=2, padding=1, groups=2)
        self.bn2 = nn.BatchNorm1d(16)
        self.pool = nn.AdaptiveAvgPool1d(4)
        self.fc = nn.Linear(16 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 28, 28)
        x = self.relu(self.bn1(self.conv1(x.flatten(1, 2))))  # (B, 16, 28)
        x = self.pool(self.relu(self.bn2(self.conv2(x))))  # (B, 16, 4)
        return self.fc(x.flatten(1))


ARCHS = {
    "densenet": DenseNetStyle,
    "mobilenet": MobileNetStyle,
    "grouped": GroupedNet,
    "skipmlp": SkipMLP,
    "conv1d": Conv1dNet,
}
