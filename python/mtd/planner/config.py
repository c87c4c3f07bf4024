"""``CompressConfig``: every setting of :func:`mtd.compress` in one frozen, JSON-serialisable object.

It is validated when it is made (so a CLI can reject ``--max-drop -1`` before any work starts) and stored in
the plan (``plan.config``), so a plan says exactly how it was made.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional, Union

from ..utils.precision import PRECISIONS
from .baselines import RANK_RULES
from .candidates import CandidateGrid

PLANNER_METHODS = ("mtd", "thesis", *RANK_RULES)
GRID_NAMES = ("full", "small", "coarse", "tiny")


@dataclass(frozen=True)
class CompressConfig:
    """How :func:`mtd.compress` plans, fine-tunes and verifies (see the README for a walk-through).

    Budget
        max_drop: accuracy points the compressed model may lose, verified on held-out images after
            fine-tuning (``None`` only with ``target_ratio``).
        target_ratio: reach this whole-model parameter ratio instead of searching the budget (the drop is
            still verified and reported; ``strict`` makes a miss of ``max_drop`` an error). ``max_drop=None``
            with an EVBMF method returns the rule's model whatever its drop (a baseline, not a promise).
        confidence: one-sided confidence that the true drop is within ``max_drop``: a model passes when
            ``drop + z * se <= max_drop``, ``se`` the paired standard error of the held-out drop and ``z``
            the normal quantile of ``confidence`` (0.5 = no margin).
        strict: raise :class:`BudgetNotMetError` instead of falling back to a less compressed model.
    Planning
        method: ``mtd`` (searched per layer), ``thesis`` (the thesis' per-layer rule), ``cp-vbmf`` /
            ``tucker-vbmf`` (EVBMF ranks) or ``cp-uniform`` / ``tucker-uniform`` (needs ``target_ratio``).
        grid: candidate grid name (``full``, ``small``, ``coarse``, ``tiny``) or a :class:`CandidateGrid`.
        layers: names of the layers to consider (default: all that ``filter_fn`` passes).
        calib_size: training images held out of fine-tuning for scoring candidates and guiding the search.
        score_images: how many of them score each single-layer candidate.
        holdout_size: training images held out of everything but the final verification.
        search_rounds: fine-tuned and verified steps of the search (each costs ``finetune_epochs``). Every
            round is verified at the Bonferroni-corrected confidence ``1 - (1 - confidence) / search_rounds``,
            so that keeping the best of them still keeps the promise at ``confidence``.
        probe_fraction: a short fine-tune of each search probe, in epochs (0, the default: probes measure the
            assignment after reconstruction and BatchNorm re-estimation only).
        layer_tolerance: the thesis rule's per-layer drop tolerance (default ``max_drop``).
    Recovery (before fine-tuning)
        aware: decompose activation-aware (``mtd.recovery.aware``: each layer's output error on the inputs it
            sees, not its weight error), from input statistics of ``recovery_images`` images; candidates are
            scored with these factors. Off by default: it halves single layers' output errors
            (``benchmarks/results/bench_aware.md``), but on full-width VGG11 at 35x
            (``benchmarks/results/recovery_vgg11.md``) the reconstructed model was 1.9 points worse before
            fine-tuning with it (75.07% against 77.00%) and the same after one epoch (80.13% against 80.10%).
        reconstruct: fit each decomposed layer, in network order, to the original layer's output from the
            compressed prefix's input (``mtd.recovery.reconstruct``), before BatchNorm re-estimation.
        recovery_images: fine-tuning images (never scored) the statistics and the reconstruction use.
        reconstruct_steps: Adam steps per layer of the reconstruction (0: its closed-form solve only).
    Fine-tuning
        finetune_epochs, finetune_lr, finetune_batch_size, teacher_kd (distil from the original),
        cp_lr_scale (learning-rate multiplier of CP factors), max_grad_norm.
        finetune_views: K, the number of augmented views of each fine-tuning image (view = epoch mod K, each a
            fixed function of the image); the teacher's output for each view is computed once and reused by
            every fine-tune (``mtd.train.teacher_bank``; kept in ``cache_dir`` across calls). 0: a fresh random
            augmentation every epoch and the teacher run on every batch. Only uint8 array data (e.g.
            ``CIFAR10Arrays``) has views; a ``Dataset``'s own transforms are used as they are.
    Speed
        precision: ``auto`` (bf16 autocast + channels_last where the device computes bf16 natively: CUDA, CPUs
            with AVX512_BF16 or AMX; fp32 elsewhere), ``bf16`` or ``fp32``: for fine-tuning, candidate scoring,
            probes and BatchNorm re-estimation. The verification that decides the budget and the check of the
            shipped model always run fp32.
    Data
        mean, std: per-channel normalisation of uint8 images (CIFAR-10's for ``CIFAR10Arrays`` by default).
        batch_size: batch size of the scoring and verification passes.
    Other
        seed, cache_dir (decompositions on disk), cp_n_iter_max (ALS iterations), prepare_inference (fold
        BatchNorm and fuse ReLU into the returned model).
    """

    max_drop: Optional[float] = 1.0
    target_ratio: Optional[float] = None
    confidence: float = 0.8
    strict: bool = False
    method: str = "mtd"
    grid: Union[str, CandidateGrid] = "full"
    layers: Optional[tuple[str, ...]] = None
    calib_size: int = 1024
    score_images: int = 512
    holdout_size: int = 5000
    search_rounds: int = 3
    probe_fraction: float = 0.0
    layer_tolerance: Optional[float] = None
    aware: bool = False
    reconstruct: bool = True
    recovery_images: int = 512
    reconstruct_steps: int = 150
    finetune_epochs: int = 1
    finetune_lr: float = 0.01
    finetune_batch_size: int = 128
    teacher_kd: bool = True
    cp_lr_scale: float = 0.5
    max_grad_norm: Optional[float] = 5.0
    finetune_views: int = 16
    precision: str = "auto"
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    batch_size: int = 256
    seed: int = 0
    cache_dir: Optional[str] = None
    cp_n_iter_max: int = 100
    prepare_inference: bool = False

    def __post_init__(self) -> None:
        fix = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen)
        if self.layers is not None:
            if isinstance(self.layers, str) or not all(isinstance(n, str) for n in self.layers):
                raise ValueError(f"layers must be a list of layer names, got {self.layers!r}")
            fix("layers", tuple(dict.fromkeys(self.layers)))
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                fix(name, tuple(float(v) for v in value))
        if isinstance(self.grid, str) and self.grid not in GRID_NAMES:
            raise ValueError(f"unknown candidate grid {self.grid!r}; choose one of {', '.join(GRID_NAMES)}")
        if not isinstance(self.grid, (str, CandidateGrid)):
            raise ValueError(f"grid must be a grid name or a CandidateGrid, got {type(self.grid).__name__}")
        self._validate()

    def _validate(self) -> None:
        if self.method not in PLANNER_METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(PLANNER_METHODS)}")
        if self.target_ratio is not None and not (_is_number(self.target_ratio) and self.target_ratio > 1):
            raise ValueError(f"target_ratio must be > 1 (e.g. 8 for 8x fewer parameters), got {self.target_ratio!r}")
        rule = RANK_RULES.get(self.method)
        if rule is not None and rule.needs_ratio and self.target_ratio is None:
            raise ValueError(f"method {self.method!r} needs target_ratio (the per-layer compression ratio)")
        if self.max_drop is None:
            if self.target_ratio is None and (rule is None or rule.needs_ratio):
                raise ValueError("max_drop=None needs a target_ratio or an EVBMF method (otherwise there is "
                                 "nothing to aim at)")
        elif not (_is_number(self.max_drop) and 0 <= self.max_drop < 100):
            raise ValueError(f"max_drop must be a number of accuracy points in [0, 100), got {self.max_drop!r}")
        if not (_is_number(self.confidence) and 0.5 <= self.confidence < 1):
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence!r}")
        for name in ("calib_size", "score_images", "finetune_batch_size", "batch_size", "search_rounds",
                     "cp_n_iter_max", "recovery_images"):
            _check_int(name, getattr(self, name), 1)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("holdout_size", "finetune_epochs", "seed", "reconstruct_steps", "finetune_views"):
            _check_int(name, getattr(self, name), 0)
        for name in ("finetune_lr", "cp_lr_scale"):
            if not (_is_number(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.finetune_views > 1 << 16:
            raise ValueError(f"finetune_views must be at most 65536, got {self.finetune_views}")
        if not (_is_number(self.probe_fraction) and self.probe_fraction >= 0):
            raise ValueError(f"probe_fraction must be >= 0, got {self.probe_fraction!r}")
        for name in ("aware", "reconstruct"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.max_grad_norm is not None and not (_is_number(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")
        if self.layer_tolerance is not None and not (_is_number(self.layer_tolerance) and self.layer_tolerance >= 0):
            raise ValueError(f"layer_tolerance must be >= 0, got {self.layer_tolerance!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std (per-channel normalisation), or neither")
        if self.std is not None and (len(self.std) != len(self.mean) or min(self.std) <= 0):
            raise ValueError(f"std must be positive and as long as mean, got mean={self.mean} std={self.std}")

    def candidate_grid(self) -> CandidateGrid:
        """The :class:`CandidateGrid` this config names."""
        return self.grid if isinstance(self.grid, CandidateGrid) else CandidateGrid.named(self.grid)

    def z(self, tests: int = 1) -> float:
        """The verification margin in standard errors when up to ``tests`` models are verified on the same
        images and one is kept (``verify.selection_z``; 1: the normal quantile of ``confidence``)."""
        from .verify import selection_z

        return selection_z(self.confidence, tests)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (a custom grid is written out field by field)."""
        d = dataclasses.asdict(self)
        if isinstance(self.grid, CandidateGrid):
            d["grid"] = dataclasses.asdict(self.grid)
        for name in ("layers", "mean", "std"):
            if d[name] is not None:
                d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CompressConfig":
        """Inverse of :meth:`to_dict` (unknown keys are ignored, so newer plans still load)."""
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if isinstance(d.get("grid"), dict):
            d["grid"] = CandidateGrid(**{k: tuple(v) for k, v in d["grid"].items()})
        return cls(**d)

    def replace(self, **changes: Any) -> "CompressConfig":
        """A copy with ``changes`` (validated)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown CompressConfig field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
