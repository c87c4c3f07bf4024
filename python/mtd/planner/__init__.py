"""The MTD planner: choose a decomposition (CP3 / CP4 / Tucker-2 / SVD / dense) per layer.

Entry points: :func:`compress` (plan + fine-tune + verify, configured by :class:`CompressConfig`), :func:`apply_plan` (rebuild a compressed
model from a plan), :class:`Plan` (the JSON record), and the baseline rank rules (:func:`evbmf_rank`).
"""
from ..layers.compressible import UnsupportedLayerError
from .apply import apply_plan
from .baselines import (evbmf_rank, uniform_cp_rank, uniform_svd_rank, uniform_tucker_ranks, vbmf_cp_rank,
                        vbmf_tucker_ranks)
from .candidates import Candidate, CandidateGrid
from .compress import BudgetNotMetError, compress
from .config import PLANNER_METHODS, CompressConfig
from .factor_cache import DecompositionSettings, FactorCache
from .plan import LayerPlan, Plan

__all__ = [
    "compress", "CompressConfig", "BudgetNotMetError", "apply_plan", "Plan", "LayerPlan", "PLANNER_METHODS", "CandidateGrid", "Candidate",
    "FactorCache", "DecompositionSettings", "UnsupportedLayerError", "evbmf_rank", "vbmf_cp_rank",
    "vbmf_tucker_ranks", "uniform_cp_rank", "uniform_tucker_ranks", "uniform_svd_rank",
]
