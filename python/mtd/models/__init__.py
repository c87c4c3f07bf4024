"""CIFAR models (VGG-BN family, a tiny ResNet-style net) and checkpoint helpers."""
from .checkpoint import load_checkpoint, load_model, load_weights, save_checkpoint
from .registry import MODEL_NAMES, build_model
from .tiny_resnet import TinyResNet, tiny_resnet
from .vgg import VGG, VGG_CONFIGS, vgg11, vgg13, vgg16, vgg19

__all__ = [
    "VGG", "VGG_CONFIGS", "vgg11", "vgg13", "vgg16", "vgg19", "TinyResNet", "tiny_resnet",
    "MODEL_NAMES", "build_model", "save_checkpoint", "load_checkpoint", "load_model", "load_weights",
]
