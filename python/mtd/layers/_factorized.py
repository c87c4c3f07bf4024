"""What every decomposed layer has: a settable backend and the relative error of its decomposition."""
from __future__ import annotations

import torch
from torch import nn

from ._geometry import check_backend


class FactorizedModule(nn.Module):
    """Base of the decomposed conv layers and of :class:`LowRankLinear`."""

    def __init__(self, backend: str):
        super().__init__()
        self._backend = check_backend(backend)
        # NaN until the layer is built from a decomposition; persisted in the state_dict
        self.register_buffer("_rel_error", torch.tensor(float("nan"), dtype=torch.float64))

    @property
    def backend(self) -> str:
        """'fused' (torch.ops.mtd) or 'torch' (chain of standard modules: trainable and exportable)."""
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._backend = check_backend(value)

    @property
    def rel_error(self) -> float:
        """||W - W_hat|| / ||W|| of the decomposition this layer was built from (NaN if none)."""
        return float(self._rel_error)

    @rel_error.setter
    def rel_error(self, value: float) -> None:
        self._rel_error.fill_(float(value))
