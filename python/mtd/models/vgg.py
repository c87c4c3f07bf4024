"""CIFAR VGG with BatchNorm: 3x3 conv (pad 1) + BN + ReLU blocks, 2x2 max-pools, one Linear classifier.

After the five pools a 32x32 input is 1x1, so the classifier is ``Linear(512 * width, num_classes)``.
Convs have no bias because the BatchNorm right after them would cancel it.
"""
from __future__ import annotations

from typing import Dict, List, Union

import torch
from torch import nn

from .width import check_num_classes, scaled_channels

# An int is a conv's output channels, "M" a 2x2 max-pool (the usual CIFAR VGG configurations).
VGG_CONFIGS: Dict[str, List[Union[int, str]]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG-BN for 32x32 inputs: ``features`` (an ``nn.Sequential``) then ``classifier`` (an ``nn.Linear``)."""

    def __init__(self, config: List[Union[int, str]], num_classes: int = 10, width: float = 1.0,
                 in_channels: int = 3):
        super().__init__()
        check_num_classes(num_classes)
        layers: List[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            out_channels = scaled_channels(int(item), width)
            layers += [nn.Conv2d(channels, out_channels, kernel_size=3, padding=1, bias=False),
                       nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, C, 1, 1) for 32x32 inputs
        return self.classifier(torch.flatten(x, 1))


def _init_weights(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _make(name: str, num_classes: int, width: float) -> VGG:
    return VGG(VGG_CONFIGS[name], num_classes=num_classes, width=width)


def vgg11(num_classes: int = 10, width: float = 1.0) -> VGG:
    """VGG11-BN (8 convs)."""
    return _make("vgg11", num_classes, width)


def vgg13(num_classes: int = 10, width: float = 1.0) -> VGG:
    """VGG13-BN (10 convs)."""
    return _make("vgg13", num_classes, width)


def vgg16(num_classes: int = 10, width: float = 1.0) -> VGG:
    """VGG16-BN (13 convs)."""
    return _make("vgg16", num_classes, width)


def vgg19(num_classes: int = 10, width: float = 1.0) -> VGG:
    """VGG19-BN (16 convs)."""
    return _make("vgg19", num_classes, width)
