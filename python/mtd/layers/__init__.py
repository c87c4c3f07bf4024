"""Decomposed layers (CP3, CP4, Tucker-2 convs; low-rank linear), counting and model surgery."""
from .base import FactorizedConv2d
from .counting import conv_macs, conv_output_hw, linear_macs, module_macs, num_parameters
from .cp4_conv import CP4Conv2d
from .cp_conv import CPConv2d
from .inference import prepare_inference
from .low_rank_linear import LowRankLinear
from .compressible import UnsupportedLayerError, check_compressible, is_compressible, unsupported_reason
from .surgery import (compressible_layers, fold_batchnorm, fold_batchnorm_into, get_module, replace_module,
                      swapped)
from .tucker_conv import TuckerConv2d

__all__ = [
    "FactorizedConv2d", "CPConv2d", "CP4Conv2d", "TuckerConv2d", "LowRankLinear",
    "conv_macs", "conv_output_hw", "linear_macs", "module_macs", "num_parameters",
    "fold_batchnorm", "fold_batchnorm_into", "get_module", "replace_module", "compressible_layers", "swapped",
    "UnsupportedLayerError", "check_compressible", "is_compressible", "unsupported_reason", "prepare_inference",
]
