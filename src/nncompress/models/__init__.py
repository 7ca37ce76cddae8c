"""Reference architectures used by the built-in tasks."""

from nncompress.models.gpt import GPT, GPTConfig
from nncompress.models.lenet import LeNet5, LeNet300100
from nncompress.models.resnet import BasicBlock, ResNet
from nncompress.models.vit import VisionTransformer

__all__ = ["GPT", "BasicBlock", "GPTConfig", "LeNet5", "LeNet300100", "ResNet", "VisionTransformer"]
