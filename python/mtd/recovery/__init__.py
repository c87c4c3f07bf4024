"""Recovering accuracy after decomposition from calibration data: input statistics of the layers and
activation-aware decompositions that minimise the error of each layer's output on that data."""
from .activation_stats import DEFAULT_PATCH_LIMIT, InputStats, collect_input_stats
from .aware import DEFAULT_RIDGE, aware_cp, aware_cp4, aware_svd, aware_tucker2, output_error

__all__ = ["DEFAULT_PATCH_LIMIT", "InputStats", "collect_input_stats", "DEFAULT_RIDGE", "aware_cp", "aware_cp4",
           "aware_svd", "aware_tucker2", "output_error"]
