"""A tiny ResNet-style CIFAR net: a skip connection, a stride-2 5x5 conv and a 1x1 projection.

Small on purpose: it gives the planner a non-VGG graph (residual add, strided and 5x5 kernels).
"""
from __future__ import annotations

import torch
from torch import nn

from .width import check_num_classes, scaled_channels


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(out_ch))


class TinyResNet(nn.Module):
    """stem 3x3 -> residual block (5x5 stride 2, 3x3; 1x1 stride-2 shortcut) -> 3x3 -> pool -> Linear."""

    def __init__(self, num_classes: int = 10, width: float = 1.0, in_channels: int = 3):
        super().__init__()
        check_num_classes(num_classes)
        c1, c2 = scaled_channels(16, width), scaled_channels(32, width)
        self.stem = _conv_bn(in_channels, c1, 3)
        self.block_conv1 = _conv_bn(c1, c2, 5, stride=2)  # (N, c2, H/2, W/2)
        self.block_conv2 = _conv_bn(c2, c2, 3)
        self.shortcut = _conv_bn(c1, c2, 1, stride=2)
        self.head_conv = _conv_bn(c2, c2, 3)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem(x))
        out = self.relu(self.block_conv1(x))
        out = self.relu(self.block_conv2(out) + self.shortcut(x))
        out = self.relu(self.head_conv(out))
        return self.classifier(torch.flatten(self.pool(out), 1))


def tiny_resnet(num_classes: int = 10, width: float = 1.0) -> TinyResNet:
    """Build a :class:`TinyResNet`."""
    return TinyResNet(num_classes=num_classes, width=width)
