"""A frozen teacher's outputs, computed once per (image, view) and reused by every fine-tune over the same views.

Distillation needs the teacher's output for every augmented image a student sees. When the augmentation is a
pure function of (image id, view) (``TensorDataLoader(views=K)``, view = epoch mod K), the output of each
(image, view) never changes: the bank runs the teacher on a view the first time a batch shows it (in the pass's
precision, no autograd) and hands back the stored output afterwards. This is "consistent teaching" (Beyer et
al., CVPR 2022; FKD, Shen & Xing, ECCV 2022). Outputs are kept as fp16, one row per key ``id * K + view``:
50,000 CIFAR images x 16 views x 10 classes = 16 MB.

``path`` makes the bank persistent (``mtd.compress`` keeps one per teacher, data, augmentation, K and precision
in its cache folder, see :func:`bank_key`): written atomically by :meth:`TeacherBank.save`, read with numpy's
non-pickling loader and checked (its key, row count, dtype, finiteness); a corrupt or mismatched file is
ignored with a warning and recomputed.
"""
from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..utils.atomic import atomic_write
from .distributed import get_rank, get_world_size
from ..utils.precision import Precision, resolve_precision

FORMAT = "mtd-teacher-bank-1"


class TeacherBank(nn.Module):
    """``bank(x, keys)``: the teacher's logits for the batch ``x`` whose rows are the views ``keys`` (B,) int64.

    Args:
        teacher: the frozen teacher (kept in eval mode).
        num_keys: ``number of image ids x views``; keys must lie in ``[0, num_keys)``.
        precision: how the teacher runs ("auto", "bf16", "fp32" or a :class:`Precision`).
        path: a ``.npz`` file to load from (if present and valid) and :meth:`save` to; ``key`` must then name
            what the outputs depend on (:func:`bank_key`).
        max_bytes: the most memory the stored outputs may take; a bank that would need more (many images,
            views or classes) runs the teacher on every batch instead, with a warning.
    """

    def __init__(self, teacher: nn.Module, num_keys: int, *, precision: Union[str, Precision, None] = "auto",
                 path: Optional[Union[str, os.PathLike]] = None, key: str = "", max_bytes: int = 1 << 30):
        super().__init__()
        if not (isinstance(num_keys, int) and 1 <= num_keys <= max_bytes // 2):
            raise ValueError(f"num_keys must be an int in [1, {max_bytes // 2}] (max_bytes {max_bytes}), got "
                             f"{num_keys!r}")
        self.max_bytes = max_bytes
        self.passthrough = False  # set when one row per key would not fit in max_bytes
        if path is not None and not key:
            raise ValueError("a persistent TeacherBank needs a key naming its teacher, data and views")
        self.teacher = teacher.eval()
        self.num_keys = num_keys
        device = next((t.device for t in teacher.parameters()), torch.device("cpu"))
        self.precision = resolve_precision(precision, device)
        self.path, self.key = (Path(path) if path is not None else None), key
        self.logits: Optional[torch.Tensor] = None  # (num_keys, classes) float16, allocated at the first miss
        self.filled = torch.zeros(num_keys, dtype=torch.bool)
        self.hits = self.misses = 0  # images served from the bank / run through the teacher
        self._dirty = False
        self._new_rows: list[torch.Tensor] = []  # rows this process computed since it last shared them
        if self.path is not None and self.path.is_file():
            self._load()

    def train(self, mode: bool = True) -> "TeacherBank":
        if mode:
            raise RuntimeError("TeacherBank wraps a frozen teacher; it cannot be put in training mode")
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, keys: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Float32 logits (B, classes) on ``x``'s device; without ``keys`` the teacher simply runs."""
        if keys is None or self.passthrough:
            return self._run(x)
        keys = torch.as_tensor(keys).to("cpu", torch.int64)
        if keys.shape != (x.shape[0],):
            raise ValueError(f"need one key per image: {x.shape[0]} images, keys of shape {tuple(keys.shape)}")
        if keys.numel() and (int(keys.min()) < 0 or int(keys.max()) >= self.num_keys):
            raise ValueError(f"keys must lie in [0, {self.num_keys}), got {int(keys.min())}..{int(keys.max())}")
        missing = ~self.filled[keys]
        n_missing = int(missing.sum())
        if n_missing:
            out = self._run(x if n_missing == len(keys) else x[missing.to(x.device)])  # (M, classes)
            if self.logits is None and self.num_keys * out.shape[1] * 2 > self.max_bytes:
                warnings.warn(f"teacher bank: {self.num_keys} keys x {out.shape[1]} outputs exceed {self.max_bytes} "
                              "bytes; the teacher runs on every batch instead", RuntimeWarning, stacklevel=2)
                self.passthrough = True
                return out if n_missing == len(keys) else self._run(x)
            if self.logits is None:
                self.logits = torch.zeros(self.num_keys, out.shape[1], dtype=torch.float16)
            elif out.shape[1] != self.logits.shape[1]:
                raise ValueError(f"the teacher returns {out.shape[1]} outputs but the bank holds "
                                 f"{self.logits.shape[1]}")
            rows = keys[missing]
            self.logits[rows] = out.to("cpu", torch.float16)
            self.filled[rows] = True
            self._dirty = True
            if get_world_size() > 1:  # shared with rank 0 at save()
                self._new_rows.append(rows)
        self.misses += n_missing
        self.hits += len(keys) - n_missing
        return self.logits[keys].to(x.device, torch.float32)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        with self.precision.autocast():
            return self.teacher(self.precision.inputs(x)).float()

    # -- persistence --------------------------------------------------------------------------------------
    def save(self) -> bool:
        """Write the bank to ``path`` (atomically) if it has outputs it did not load; returns whether it wrote.

        Under a process group every rank calls it: the rows each rank computed for its shard are gathered on rank
        0, which alone writes."""
        if self.path is None:
            return False
        if get_world_size() > 1:
            self._gather_on_main()
            if get_rank() != 0:
                self._dirty = False
                return False
        if not self._dirty or self.logits is None:
            return False
        with atomic_write(self.path) as handle:
            np.savez(handle, format=np.array(FORMAT), key=np.array(self.key), logits=self.logits.numpy(),
                     filled=self.filled.numpy())
        self._dirty = False
        return True

    def _gather_on_main(self) -> None:
        """Rank 0 receives the rows the other ranks computed since they last shared them (collective)."""
        rows = torch.cat(self._new_rows) if self._new_rows else torch.zeros(0, dtype=torch.int64)
        self._new_rows = []
        mine = (rows, self.logits[rows] if self.logits is not None else None)
        parts = [None] * get_world_size() if get_rank() == 0 else None
        dist.gather_object(mine, parts, dst=0)
        if get_rank() != 0:
            return
        for rows, logits in parts[1:]:
            if logits is None or not rows.numel():
                continue
            if self.logits is None:
                self.logits = torch.zeros(self.num_keys, logits.shape[1], dtype=torch.float16)
            new = ~self.filled[rows]
            self.logits[rows[new]] = logits[new]
            self.filled[rows[new]] = True
            self._dirty = self._dirty or bool(new.any())

    def _load(self) -> None:
        try:
            logits, filled = self._read()
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            warnings.warn(f"teacher bank {str(self.path)!r} is unusable ({err}); its outputs will be recomputed",
                          RuntimeWarning, stacklevel=3)
            return
        self.logits, self.filled = torch.from_numpy(logits), torch.from_numpy(filled)

    def _read(self) -> tuple[np.ndarray, np.ndarray]:
        size = self.path.stat().st_size
        limit = self.num_keys * (2 * MAX_CLASSES + 1) + (1 << 20)
        if size > limit:
            raise ValueError(f"{size} bytes, more than a bank of {self.num_keys} rows can hold")
        with np.load(self.path, allow_pickle=False) as f:
            if str(f["format"]) != FORMAT or str(f["key"]) != self.key:
                raise ValueError("it was made for another teacher, data or augmentation")
            logits, filled = f["logits"], f["filled"]
        if (logits.dtype != np.float16 or logits.ndim != 2 or logits.shape[0] != self.num_keys
                or filled.dtype != np.bool_ or filled.shape != (self.num_keys,)):
            raise ValueError(f"unexpected contents: logits {logits.dtype} {logits.shape}, filled {filled.dtype} "
                             f"{filled.shape}")
        if not np.isfinite(logits[filled]).all():
            raise ValueError("it holds non-finite outputs")
        return logits, filled


MAX_CLASSES = 100_000  # bounds the file size a bank may have (the reader's size check)


def bank_key(teacher: nn.Module, data_fingerprint: str, views: int, precision: Precision, augmentation: str) -> str:
    """A digest of everything a bank's outputs depend on: the teacher's weights and buffers, the data, the
    augmentation (its name and version), the number of views and the teacher's precision."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(teacher.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    h.update(f"|{type(teacher).__name__}|{data_fingerprint}|{views}|{precision.name}|{augmentation}".encode())
    return h.hexdigest()
