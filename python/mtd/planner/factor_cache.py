"""Cached, deterministic decompositions of layer weights.

Keyed by a hash of the weight plus (method, ranks, seed, warm-start chain, ALS settings, and for an
activation-aware decomposition a hash of the input statistics): the same key always gives bit-identical
factors, which is what lets :func:`apply_plan` rebuild a weight-only decomposition exactly. Lower CP ranks are
warm-started from the next higher rank's factors; the chain of ranks used is part of the key (and of the
plan). An aware decomposition starts from the weight-only factors of the same key.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from .. import methods
from ..methods import DecompositionSettings
from ..utils import atomic_write

__all__ = ["DecompositionSettings", "FactorCache", "weight_hash"]


def weight_hash(weight: torch.Tensor) -> str:
    """Content hash of a weight tensor (shape, dtype and values)."""
    w = weight.detach().to("cpu").contiguous()
    h = hashlib.sha1(f"{tuple(w.shape)}|{w.dtype}".encode())
    h.update(w.numpy().tobytes())
    return h.hexdigest()[:20]


class FactorCache:
    """In-memory (and optional on-disk) cache of decompositions. ``writable=False`` reads the folder but never
    writes to it (the ranks of a process group other than rank 0)."""

    def __init__(self, cache_dir: Optional[str | Path] = None,
                 settings: DecompositionSettings = DecompositionSettings(), *, writable: bool = True):
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.settings = settings
        self.writable = writable
        self._memory: dict[tuple, Any] = {}
        self._stats_hashes: dict[int, tuple[Any, str]] = {}
        self.hits = 0
        self.misses = 0

    def factors(self, weight: torch.Tensor, method: str, ranks: Sequence[int], seed: int = 0,
                warm_start: Sequence[int] = (), whash: Optional[str] = None, stats: Any = None) -> Any:
        """Factors of ``weight`` for ``method`` at ``ranks``; a method that warm-starts (CP/CP4) first
        decomposes the ranks in ``warm_start`` (in order), each warm-starting the next. With ``stats`` (the
        layer's ``InputStats``) and a method that has an activation-aware variant, the weight-only factors are
        refined by it."""
        entry = methods.get(method)
        whash = whash or weight_hash(weight)
        key = self._key(weight, method, ranks, seed, warm_start, whash, stats)
        result = self._cached(key)
        if result is not None:
            return result
        self.misses += 1
        ranks, warm_start = key[2], key[4]
        if key[6] is not None:  # activation-aware
            start = self.factors(weight, method, ranks, seed, warm_start, whash)
            result = entry.aware(weight, ranks, stats, start=start)
        else:
            init = "svd"
            if warm_start:
                init = self.factors(weight, method, warm_start[-1:], seed, warm_start[:-1], whash)
            result = entry.decompose(weight, ranks, seed=seed, init=init, settings=self.settings)
        self.put(key, result)
        return result

    def lookup(self, weight: torch.Tensor, method: str, ranks: Sequence[int], seed: int = 0,
               warm_start: Sequence[int] = (), stats: Any = None) -> tuple[tuple, Any]:
        """``(key, factors)`` when memory or the folder holds them, ``(key, None)`` otherwise (nothing computed)."""
        key = self._key(weight, method, ranks, seed, warm_start, None, stats)
        return key, self._cached(key)

    def put(self, key: tuple, result: Any) -> None:
        """Keep ``result`` under ``key`` (a :meth:`lookup` key) in memory, and in the folder if writable."""
        if key not in self._memory:
            self._store(key, result)
        self._memory[key] = result

    def _key(self, weight, method, ranks, seed, warm_start, whash, stats) -> tuple:
        entry = methods.get(method)
        ranks, warm_start = tuple(int(r) for r in ranks), tuple(int(r) for r in warm_start)
        if warm_start and not entry.warm_starts:
            raise ValueError(f"method {method!r} does not warm-start from higher ranks; got warm_start {warm_start}")
        aware = stats is not None and entry.aware is not None
        return (whash or weight_hash(weight), method, ranks, seed, warm_start, self.settings,
                self.stats_hash(stats) if aware else None)

    def _cached(self, key: tuple) -> Any:
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        result = self._load(key)
        if result is not None:
            self._memory[key] = result
        return result

    def stats_hash(self, stats: Any) -> str:
        """Content hash of a layer's input statistics (computed once per object: a patch moment is large)."""
        cached = self._stats_hashes.get(id(stats))
        if cached is not None and cached[0] is stats:
            return cached[1]
        h = hashlib.sha1(f"{stats.count}|{tuple(stats.kernel_size)}".encode())
        for t in (stats.channel_moment, stats.mean, stats.patch_moment):
            if t is not None:
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        digest = h.hexdigest()[:16]
        self._stats_hashes[id(stats)] = (stats, digest)
        return digest

    # -- disk ---------------------------------------------------------------------------------------------
    def _path(self, key: tuple) -> Optional[Path]:
        if self.cache_dir is None:
            return None
        whash, method, ranks, seed, warm, settings, stats = key
        fields = (ranks, seed, warm, dataclasses.astuple(settings)) + ((stats,) if stats else ())
        tag = hashlib.sha1(repr(fields).encode()).hexdigest()[:16]
        return self.cache_dir / f"{whash}-{method}-{tag}.pt"

    def _load(self, key: tuple) -> Any:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            return methods.get(key[1]).factors(**payload)
        except Exception:  # a stale or damaged cache entry is recomputed, never trusted
            return None

    def _store(self, key: tuple, result: Any) -> None:
        path = self._path(key)
        if path is None or not self.writable:
            return
        with atomic_write(path, "wb") as f:
            torch.save(dataclasses.asdict(result), f)
