"""Decompositions of conv / linear weights: CP3, CP4, Tucker-2 and truncated SVD."""
from .cp import cp4_decompose_conv, cp_decompose_conv
from .cp_als import CPDecompositionError
from .engines import DEFAULT_ENGINE, ENGINES
from .factors import CP4Factors, CPFactors, SVDFactors, TuckerFactors
from .ranks import (check_cp_rank, check_svd_rank, check_tucker_ranks, kernel_shape, max_cp_rank,
                    max_tucker_ranks)
from .svd import svd_decompose
from .tucker import tucker2_decompose_conv

__all__ = [
    "cp_decompose_conv", "cp4_decompose_conv", "tucker2_decompose_conv", "svd_decompose",
    "CPFactors", "CP4Factors", "TuckerFactors", "SVDFactors", "CPDecompositionError",
    "max_cp_rank", "max_tucker_ranks", "check_cp_rank", "check_tucker_ranks", "check_svd_rank",
    "kernel_shape", "DEFAULT_ENGINE", "ENGINES",
]
