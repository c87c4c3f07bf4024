"""``mtd.compress``: plan, build, fine-tune and verify a mixed-decomposition compression of a CNN.

The promise: in budget mode (``max_drop`` without ``target_ratio``) the returned model's verified held-out
drop (plus the confidence margin, ``verify.py``) is within ``max_drop``. When no compressed model passes, the
original model is returned with a warning (``strict=True``: :class:`BudgetNotMetError`). In ratio mode the
ratio is what is promised; the drop is verified and a miss of ``max_drop`` is warned about (or raised).

The steps of one call (:class:`_Run`), in order:

1. ``__init__``: split the data, check it against the model, score the original on calibration / held-out images;
2. ``_score``: every candidate of every layer decomposed and scored alone in the network;
3. ``_choose``: a search (budget mode) or a rule picks an assignment; each model it measures is *built* by
   ``_build`` (decompose, reconstruct layer by layer, re-estimate BatchNorm), fine-tuned and verified;
4. ``_ship``: the chosen model in the configuration it is returned in (fused ops, optionally prepared for
   inference), checked against the verified one;
5. ``_report``: the plan, every measurement and the one-line verdict.

Under a process group (``torchrun``; :func:`mtd.train.distributed.init_distributed`) every rank calls
``compress`` with the same arguments and the work is split: each rank decomposes and scores its share of the
candidates (``options.candidate_owners``), scores and verifies its share of the calibration and held-out
batches (the per-batch and per-image results gathered, so every choice and the verdict are exactly what one
process computes for the same model), collects input statistics (``aware``) and reconstructs each layer from its
share of the recovery images (moments, Gram matrices and gradients summed), fine-tunes through DDP on its shard
of the fine-tuning images (the global batch unchanged), re-estimates BatchNorm on its shard (averaged), and fills
the teacher bank for its shard. The built and fine-tuned models are copied from rank 0, so every rank holds and
returns the same model. Only rank 0 prints and writes to the cache folder.
"""
from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from .. import methods
from ..data.adapter import as_planning_data
from ..data.loader import VIEW_AUGMENTATION
from ..layers import compressible_layers, get_module, replace_module
from ..layers.compressible import UnsupportedLayerError, check_compressible
from ..layers.surgery import FilterFn
from ..train.distributed import (DistInfo, all_reduce_sum, average_batchnorm_stats, broadcast_object, get_rank,
                                 get_world_size, sync_module, wrap_ddp)
from ..train.teacher_bank import TeacherBank, bank_key
from ..train.teacher_cache import CachedTeacher
from ..utils import pick_device, progress_bar, seed_everything
from ..utils.precision import resolve_precision
from .baselines import RANK_RULES
from .candidates import Candidate
from .config import CompressConfig
from .factor_cache import DecompositionSettings, FactorCache
from .layer_factory import build_layer, set_backend
from .options import (candidate_owners, load_options, record_io_shapes, save_options, score_key, score_options,
                      warm_chain)
from .plan import LayerPlan, Plan, current_versions
from .search import FrontierSearch
from .select import Assignment, Scored, assignment_path, search_ratio
from .sensitivity import Calibration, score_loader
from .thesis_rule import thesis_assignment
from .verify import Verification, correct_mask, verify


class BudgetNotMetError(RuntimeError):
    """``strict=True`` and no compressed model kept the accuracy budget (``.plan`` holds what was measured)."""

    def __init__(self, message: str, plan: Plan):
        super().__init__(message)
        self.plan = plan


def compress(model: nn.Module, train_data: Any, config: Optional[CompressConfig] = None, *,
             val_data: Any = None, filter_fn: Optional[FilterFn] = None, device: Any = None,
             progress: bool = True, **overrides: Any) -> tuple[nn.Module, Plan]:
    """Compress ``model`` by per-layer CP / CP4 / Tucker-2 / SVD decomposition, fine-tune it and verify it.

    Args:
        model: the trained network (not modified; a compressed copy is returned).
        train_data: training images: ``mtd.data.CIFAR10Arrays``, ``(images, labels)``, a ``Dataset`` or a
            ``DataLoader``. Split (seeded) into calibration, held-out and fine-tuning images.
        config: a :class:`CompressConfig`; keyword ``overrides`` replace its fields
            (``compress(model, data, max_drop=0.5)``).
        val_data: verify the budget on these images instead of a held-out slice of ``train_data``.
        filter_fn: ``filter_fn(module, name) -> bool`` picks the layers to consider (with ``config.layers``).
        device: where to plan and fine-tune (default: CUDA if available).
    Returns:
        ``(compressed_model, plan)``; the model runs the fused ``mtd_kernels`` ops; ``plan.results`` holds
        every measurement and ``plan.results["verdict"]`` a one-line summary.
    """
    cfg = (config or CompressConfig()).replace(**overrides) if overrides else (config or CompressConfig())
    return _Run(model, train_data, cfg, val_data, filter_fn, device, progress).run()


# ------------------------------------------------------------------------------------------------------------
class _Run:
    """One call of :func:`compress` (state shared by its steps)."""

    def __init__(self, model, train_data, cfg: CompressConfig, val_data, filter_fn, device, progress):
        self.t_start = time.perf_counter()
        self.rank, self.world = get_rank(), get_world_size()
        progress = progress and self.rank == 0  # only rank 0 talks
        self.cfg, self.progress = cfg, progress
        self.log = progress_bar(enabled=False).write if progress else (lambda message: None)
        seed_everything(cfg.seed)
        self.device = pick_device(device)
        if self.world > 1 and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU (init_distributed)
        self.precision = resolve_precision(cfg.precision, self.device)
        norm = {} if cfg.mean is None else {"mean": cfg.mean, "std": cfg.std}
        self.data = as_planning_data(train_data, **norm)
        self.val = as_planning_data(val_data, **norm) if val_data is not None else None
        self.model = model
        self.original = copy.deepcopy(model).to(self.device).eval()
        self.layers = _select_layers(self.original, cfg.layers, filter_fn)
        self.splits = _split(len(self.data), cfg, self.val is not None)
        self.calib = Calibration(self.data.batches(self.splits["calibration"], cfg.batch_size, self.device),
                                 self.precision)
        self.num_classes = _check_inputs(self.original, self.data, self.val, self.calib)
        if self.val is not None:
            self.holdout = self.val.batches(np.arange(len(self.val)), cfg.batch_size, self.device)
        else:
            self.holdout = self.data.batches(self.splits["holdout"], cfg.batch_size, self.device)
        self.base_correct = correct_mask(self.original, self.holdout)
        # the budget search verifies up to search_rounds models on the same images and keeps one (verify.py)
        self.tests = cfg.search_rounds if cfg.method == "mtd" and cfg.target_ratio is None else 1
        self.z = cfg.z(self.tests)
        # input statistics and reconstruction targets: fine-tuning images (never scored), without augmentation
        self.recovery_images = self.data.batches(self.splits["finetune"][:cfg.recovery_images], cfg.batch_size,
                                                 self.device) if cfg.reconstruct or cfg.aware else []
        self.stats = None
        if cfg.aware:
            from ..recovery.activation_stats import collect_input_stats

            # collective: each rank its share of the images, the sums added (the same statistics everywhere)
            self.stats = collect_input_stats(self.original, self.recovery_images, self.layers,
                                             progress=self.progress)
        self.base_calib = self.calib.score(self.original)
        self.cache = FactorCache(cfg.cache_dir, DecompositionSettings(cp_n_iter_max=cfg.cp_n_iter_max),
                                 writable=self.rank == 0)
        self.model_params = sum(p.numel() for p in self.original.parameters())
        self.teacher = self._teacher()
        self._owners: Optional[dict] = None  # (layer, method) -> the rank that scored it (_factors)

    # -- steps --------------------------------------------------------------------------------------------
    def run(self) -> tuple[nn.Module, Plan]:
        self.options = self._score()
        chosen, model, info = self._choose()
        fallback = chosen is None
        if fallback:  # nothing compressed kept the budget: the original is the least compressed verified model
            chosen, model = {n: o[0] for n, o in self.options.items()}, copy.deepcopy(self.original)
        model, info = self._ship(model, info, fallback)
        return self._report(chosen, model, info, fallback)

    def _choose(self) -> tuple[Optional[Assignment], Optional[nn.Module], dict]:
        """The assignment and its fine-tuned model (None, None when no compressed model kept the budget)."""
        cfg = self.cfg
        if cfg.method == "mtd":
            path = assignment_path(self.options, sum(o[0].params for o in self.options.values()))
            self.path = [a for a in path if self.ratio_of(a) > 1.0]  # all-dense is the fallback, not a step
            if not self.path:
                return None, None, {"search": "no candidate saves parameters"}
            if cfg.target_ratio is not None:
                idx, chosen = search_ratio(self.path, self.ratio_of, cfg.target_ratio)
                return self._single(chosen, reached=idx is not None)
            return self._search()
        if cfg.method == "thesis":
            shapes = {n: _in_out(get_module(self.original, n)) for n in self.layers}
            tolerance = cfg.max_drop if cfg.layer_tolerance is None else cfg.layer_tolerance
            return self._single(thesis_assignment(self.options, shapes, tolerance))
        return self._single({n: o[-1] for n, o in self.options.items()})  # the rule's one candidate

    def _score(self) -> dict[str, list[Scored]]:
        cfg = self.cfg
        io_shapes = record_io_shapes(self.original, self.layers, self.calib.batches[0][0][:2])
        n_batches = max(1, -(-min(cfg.score_images, self.calib.num_images) // cfg.batch_size))
        score_calib = Calibration(self.calib.batches[:n_batches], self.precision)
        rule = cfg.method not in ("mtd", "thesis")
        only = _rule_candidates(cfg.method, cfg.target_ratio) if rule else None
        path = None
        if cfg.cache_dir:  # sensitivities depend on the whole model, the grid and the scoring images
            key = score_key(self.original, self.layers, {
                "method": cfg.method if rule else "grid", "target_ratio": cfg.target_ratio if rule else None,
                "grid": dataclasses.asdict(cfg.candidate_grid()), "seed": cfg.seed,
                "images": self.splits["calibration"][:score_calib.num_images].tolist(),
                "settings": dataclasses.asdict(self.cache.settings),
                "aware": sorted((n, self.cache.stats_hash(st)) for n, st in self.stats.items()) if self.stats
                else None})
            path = Path(cfg.cache_dir) / f"scores-{key}.json"
            cached = broadcast_object(load_options(path) if self.rank == 0 else None)  # one decision for all ranks
            if cached is not None and list(cached) == self.layers:
                self.log(f"candidate scores from {path}")
                return cached
        options = score_options(self.original, self.layers, cfg.candidate_grid(), score_calib,
                                score_calib.score(self.original), self.cache, io_shapes, cfg.seed, only=only,
                                stats=self.stats, progress=self.progress)
        if path is not None and self.rank == 0:
            save_options(path, options)
        return options

    def _search(self) -> tuple[Optional[Assignment], Optional[nn.Module], dict]:
        cfg = self.cfg
        self.log(f"searching {len(self.path)} assignments ({self.ratio_of(self.path[0]):.1f}x .. "
                 f"{self.ratio_of(self.path[-1]):.2f}x) for a held-out drop <= {cfg.max_drop} "
                 f"(confidence {cfg.confidence})")
        steps = round(cfg.probe_fraction * len(self._finetune_loader(0)))

        def probe(i: int) -> tuple[float, nn.Module]:
            model = self._build(self.path[i])
            if steps:
                self._finetune(model, seed=cfg.seed, max_steps=steps, epochs=1)  # the rounds' first batches
            return self.base_calib.accuracy - self.calib.score(model).accuracy, model

        def finish(model: nn.Module) -> Verification:
            if cfg.finetune_epochs:
                self._finetune(model, seed=cfg.seed, epochs=cfg.finetune_epochs)
            return self._verify(model)

        search = FrontierSearch(len(self.path), ratio=lambda i: self.ratio_of(self.path[i]), probe=probe,
                                finish=finish, max_drop=cfg.max_drop, rounds=cfg.search_rounds, log=self.log)
        best = search.run()
        info = {"search": search.summary()}
        if best is None:
            return None, None, info
        info["verification"] = best.verification.to_dict()
        return self.path[best.index], best.model, info

    def _single(self, chosen: Assignment, reached: Optional[bool] = None):
        model = self._build(chosen)
        if self.cfg.finetune_epochs:
            self._finetune(model, seed=self.cfg.seed, epochs=self.cfg.finetune_epochs)
        v = self._verify(model)
        self.log(f"{self.ratio_of(chosen):.2f}x: held-out drop {v.drop:+.2f} (+{v.margin:.2f} margin)")
        info = {"verification": v.to_dict()}
        if reached is not None:
            info["reached_target"] = reached
        if self.cfg.target_ratio is None and not v.passed:
            return None, None, info  # budget mode: the promise holds for every method
        return chosen, model, info

    def _ship(self, model: nn.Module, info: dict, fallback: bool) -> tuple[nn.Module, dict]:
        """The model as returned (fused ops, eval mode, optionally prepared for inference), verified as such.

        The search verified the plain-chain model (backend ``torch``); the returned one runs other kernels, so
        it is verified again on the same images. Its own verification is the one reported (it is the same
        model: the two agree to rounding, ``info["shipped"]`` says how closely)."""
        verified = model
        shipped = copy.deepcopy(model) if not fallback else model
        set_backend(shipped, "fused")
        shipped.eval()
        if self.cfg.prepare_inference and not fallback:
            from ..layers.inference import prepare_inference

            shipped = prepare_inference(shipped)
        if fallback or "verification" not in info:
            return shipped, info
        with torch.no_grad():
            x = self.holdout[0][0]
            a, b = verified.eval()(x).double(), shipped(x).double()
            rel = float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))
        v = self._verify(shipped)
        info = {**info, "verification": v.to_dict(),
                "shipped": {"max_relative_logit_difference": rel, "verified_drop_before_shipping":
                            info["verification"]["drop"], "same_drop": v.drop == info["verification"]["drop"]}}
        if self.cfg.target_ratio is None and not v.passed:  # the shipped kernels changed the verdict
            self.log(f"the shipped model's held-out drop ({v.drop:+.2f}) differs from the verified one "
                     f"({info['shipped']['verified_drop_before_shipping']:+.2f}) and misses the budget")
        return shipped, info

    def _report(self, chosen: Assignment, model: nn.Module, info: dict, fallback: bool
                ) -> tuple[nn.Module, Plan]:
        cfg = self.cfg
        verification = info.get("verification")
        within = bool(verification and verification["passed"]) and not fallback
        plan = self._plan(chosen)
        ratio = self.ratio_of(chosen)
        confidence = self._confidence_note()
        if fallback:
            verdict = (f"budget NOT met: no compressed model kept the held-out drop within {cfg.max_drop} points "
                       f"({confidence}); returning the original model (1.00x)")
        else:
            v = verification
            measured = (f"held-out drop {v['drop']:+.2f} points (+{v['margin']:.2f} margin, {confidence}) on "
                        f"{v['images']} images")
            if cfg.max_drop is None:
                verdict = (f"target ratio {cfg.target_ratio}x" if cfg.target_ratio else f"{cfg.method} rule") + \
                    f": {ratio:.2f}x fewer parameters, {measured}"
                if info.get("reached_target") is False:
                    verdict += " (target not reached: this is the most compressed assignment of the grid)"
            else:
                verdict = (f"{'within' if within else 'OVER'} budget: {ratio:.2f}x fewer parameters, {measured} "
                           f"vs max_drop {cfg.max_drop}")
        plan.results = {
            "verdict": verdict, "within_budget": within, "fallback_to_original": fallback,
            "confidence": {"stated": cfg.confidence, "tests": self.tests, "z": self.z},
            "calibration": {"images": self.calib.num_images, "base_accuracy": self.base_calib.accuracy,
                            "base_loss": self.base_calib.loss},
            "holdout": {"images": int(self.base_correct.numel()), "source": "val_data" if self.val else "train",
                        "base_accuracy": 100.0 * float(self.base_correct.double().mean())},
            "model_params_before": self.model_params, "model_param_ratio": ratio,
            "aware": cfg.aware, "reconstruct": cfg.reconstruct, "finetune_epochs": cfg.finetune_epochs,
            "teacher_kd": cfg.teacher_kd, "precision": self.precision.name, "teacher": self._teacher_summary(),
            "seed": cfg.seed, "wall_time_s": time.perf_counter() - self.t_start, **info,
        }
        self.log(verdict)
        if fallback or not within:
            if cfg.strict:
                raise BudgetNotMetError(verdict, plan)
            if self.rank == 0:
                warnings.warn(f"mtd.compress: {verdict}", RuntimeWarning, stacklevel=3)
        return model, plan

    def _teacher_summary(self) -> dict:
        t = self.teacher
        if not self.cfg.teacher_kd:
            return {"kind": "none"}
        if isinstance(t, TeacherBank):
            return {"kind": "bank", "views": self._views, "hits": t.hits, "misses": t.misses,
                    "file": str(t.path) if t.path else None}
        if isinstance(t, CachedTeacher):
            return {"kind": "batch cache", "hits": t.hits, "misses": t.misses}
        return {"kind": "online"}

    def _confidence_note(self) -> str:
        if self.tests == 1:
            return f"confidence {self.cfg.confidence}"
        return (f"confidence {self.cfg.confidence} over up to {self.tests} verified rounds, each at "
                f"{1 - (1 - self.cfg.confidence) / self.tests:.3f}")

    # -- helpers ------------------------------------------------------------------------------------------
    def ratio_of(self, a: Assignment) -> float:
        saved = sum(self.options[n][0].params - s.params for n, s in a.items())
        return self.model_params / max(self.model_params - saved, 1)

    def _build(self, a: Assignment) -> nn.Module:
        """A copy of the original with ``a``'s layers decomposed (torch backend, trainable), each reconstructed
        in network order (``cfg.reconstruct``), BatchNorm re-estimated."""
        from ..recovery.reconstruct import ReconstructionConfig, reconstruct
        from ..train.finetune import recalibrate_batchnorm

        model = copy.deepcopy(self.original)
        for name in self.layers:
            s = a[name]
            if s.method == "dense":
                continue
            module = get_module(self.original, name)
            replace_module(model, name, build_layer(module, s.method, self._factors(name, s), backend="torch"))
        if self.cfg.reconstruct and any(s.method != "dense" for s in a.values()):
            cfg = ReconstructionConfig(images=self.cfg.recovery_images, steps=self.cfg.reconstruct_steps)
            reconstruct(model, self.original, self.recovery_images, cfg, seed=self.cfg.seed)
            sync_module(model)  # the ranks fitted the same layers; rounding aside, rank 0's on every rank
        if any(s.method != "dense" for s in a.values()):
            recalibrate_batchnorm(model, self._finetune_loader(self.cfg.seed), precision=self.precision)
            average_batchnorm_stats(model)  # each rank estimated them on its shard
        return model

    def _factors(self, name: str, s: Scored):
        """The factors of layer ``name`` for ``s`` (from the cache, or decomposed). Under a process group they
        come from the first rank that has them cached, else from the rank that scored the candidate, so that
        every rank builds the same layer and nothing is decomposed twice."""
        module = get_module(self.original, name)
        args = (module.weight, s.method, s.candidate.ranks, self.cfg.seed,
                warm_chain(s.candidate, _candidate_list(self.options, name)))
        stats = self.stats[name] if self.stats else None
        if self.world == 1:
            return self.cache.factors(*args, stats=stats)
        key, found = self.cache.lookup(*args, stats=stats)
        have = torch.zeros(self.world)
        have[self.rank] = found is not None
        holders = [r for r, h in enumerate(all_reduce_sum(have).tolist()) if h]
        if self._owners is None:  # the split score_options used (the same candidate lists)
            self._owners = candidate_owners(self.original, {n: _candidate_list(self.options, n) for n in self.layers},
                                            self.world)
        src = holders[0] if holders else self._owners[(name, s.method)]
        if self.rank == src and found is None:
            found = self.cache.factors(*args, stats=stats)
        found = broadcast_object(found, src)
        self.cache.put(key, found)
        return found

    def _finetune_loader(self, seed: int):
        """This rank's shard of the fine-tuning images (the global batch split over the ranks)."""
        batch = max(1, min(self.cfg.finetune_batch_size, len(self.splits["finetune"])) // self.world)
        return self.data.loader(self.splits["finetune"], batch, train=True, device=self.device, seed=seed,
                                views=self._views or None, rank=self.rank, world_size=self.world)

    def _teacher(self) -> nn.Module:
        """What every fine-tune distils from: a bank of the original's outputs per (image, view) where the data
        has views (``cfg.finetune_views``), persistent in ``cache_dir``; otherwise, on a CPU, the original with
        its outputs remembered per exact input batch (``train/teacher_cache.py``: the same seeded batches recur
        across fine-tunes)."""
        cfg = self.cfg
        classes = self.num_classes
        # at most 1 GiB of fp16 outputs: fewer views for large data sets, none where one view does not fit
        self._views = min(cfg.finetune_views, (1 << 30) // max(1, 2 * classes * len(self.data)))
        if self._views:  # what the source makes of it: none (a Dataset's own transforms), 1 (no augmentation)
            self._views = getattr(self._finetune_loader(cfg.seed), "views", None) or 0
        if not cfg.teacher_kd:
            return self.original  # (never called)
        if not self._views:
            return CachedTeacher(self.original) if self.device.type == "cpu" else self.original
        path, key = None, ""
        if cfg.cache_dir:
            key = bank_key(self.original, self.data.fingerprint(), self._views, self.precision, VIEW_AUGMENTATION)
            path = Path(cfg.cache_dir) / f"teacher-bank-{key}.npz"
        return TeacherBank(self.original, len(self.data) * self._views, precision=self.precision, path=path,
                           key=key)

    def _finetune(self, model: nn.Module, *, seed: int, epochs: int, max_steps: Optional[int] = None) -> None:
        from ..train.finetune import cp_factor_lr_scales, finetune

        cfg = self.cfg
        # DDP: gradients averaged over the ranks' shards; scoring and the bank see the plain model
        trained = wrap_ddp(model, DistInfo(self.rank, self.world, self.device.index or 0, self.device))
        finetune(trained, self._finetune_loader(seed), epochs=epochs, lr=cfg.finetune_lr,
                 teacher=self.teacher if cfg.teacher_kd else None, max_grad_norm=cfg.max_grad_norm,
                 lr_scales=cp_factor_lr_scales(model, cfg.cp_lr_scale),
                 eval_fn=lambda m: self.calib.score(model).accuracy, max_steps=max_steps, seed=seed,
                 progress=self.progress and max_steps is None, log_fn=self.log, precision=self.precision)
        sync_module(model)  # BatchNorm buffers of the last steps differ between ranks: rank 0's everywhere
        if isinstance(self.teacher, TeacherBank):
            self.teacher.save()

    def _verify(self, model: nn.Module) -> Verification:
        return verify(model, self.holdout, self.base_correct, self.cfg.max_drop, self.z)

    def _plan(self, chosen: Assignment) -> Plan:
        cfg = self.cfg
        entries = []
        for name in self.layers:
            s, dense = chosen[name], self.options[name][0]
            module = get_module(self.model, name)
            entries.append(LayerPlan(
                name=name, kind="conv" if isinstance(module, nn.Conv2d) else "linear", method=s.method,
                ranks=list(s.candidate.ranks), params_before=dense.params, params_after=s.params,
                macs_before=dense.macs, macs_after=s.macs, rel_error=s.rel_error,
                sensitivity={"loss": s.loss, "accuracy": s.accuracy}, seed=cfg.seed,
                warm_start=list(warm_chain(s.candidate, _candidate_list(self.options, name)))))
        return Plan(model_name=getattr(self.model, "mtd_model_name", None),
                    model_kwargs=dict(getattr(self.model, "mtd_model_kwargs", {}) or {}), method=cfg.method,
                    layers=entries, budget={"max_drop": cfg.max_drop, "target_ratio": cfg.target_ratio,
                                            "confidence": cfg.confidence},
                    versions=current_versions(), decomposition=dataclasses.asdict(self.cache.settings),
                    config=cfg.to_dict())


# ------------------------------------------------------------------------------------------------------------
def _select_layers(model: nn.Module, names: Optional[tuple[str, ...]], filter_fn: Optional[FilterFn]) -> list[str]:
    """The layers to consider: the walker's (through ``filter_fn``), or the given names, each checked."""
    if names is None:
        layers = [name for name, _ in compressible_layers(model, filter_fn)]
        if not layers:
            raise UnsupportedLayerError(f"{type(model).__name__} has no compressible layer (ungrouped, zero-padded "
                                        "Conv2d, or Linear)" + (" passing filter_fn" if filter_fn
                                                                               else ""))
        return layers
    for name in names:
        try:
            module = get_module(model, name)
        except KeyError:
            raise ValueError(f"model has no layer named {name!r}") from None
        check_compressible(module, name=name)
        if filter_fn is not None and not filter_fn(module, name):
            raise ValueError(f"layer {name!r} is listed in layers but filter_fn rejects it")
    return list(names)


def _split(n: int, cfg: CompressConfig, has_val: bool) -> dict[str, np.ndarray]:
    """Seeded disjoint calibration / held-out / fine-tuning index sets of the training data.

    Calibration images guide the search and pick the best fine-tuning epoch, held-out images only verify,
    so neither is fine-tuned on. Small data sets: at most a fifth each."""
    if n < 10:
        raise ValueError(f"the training data has {n} images; compressing needs at least 10")
    if not has_val and cfg.holdout_size < 1:
        raise ValueError("holdout_size=0 needs val_data: the accuracy budget is verified on held-out images")
    calib = min(cfg.calib_size, n // 5)
    holdout = 0 if has_val else min(cfg.holdout_size, n // 5)
    order = np.random.default_rng(cfg.seed).permutation(n)
    return {"calibration": np.sort(order[:calib]), "holdout": np.sort(order[calib:calib + holdout]),
            "finetune": np.sort(order[calib + holdout:])}


def _check_inputs(model: nn.Module, data, val, calib: Calibration) -> int:
    """Reject bad data before any work: images the model cannot take, labels outside its classes, one class."""
    x, _ = calib.batches[0]
    try:
        with torch.no_grad():
            out = model(x[:2])
    except Exception as err:  # noqa: BLE001  (any failure here means the images do not fit the model)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"the model cannot take the images: input of shape {tuple(x.shape[1:])} failed with "
                         f"{type(err).__name__}: {first}") from None
    if out.ndim != 2:
        raise ValueError(f"the model must return logits of shape (N, classes); it returned {tuple(out.shape)}")
    classes = int(out.shape[1])
    for name, d in (("training", data), ("validation", val)):
        if d is None:
            continue
        labels = torch.as_tensor(d.labels)
        if labels.numel() == 0:
            raise ValueError(f"the {name} data is empty")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= classes:
            raise ValueError(f"{name} labels span {lo}..{hi} but the model has {classes} outputs (classes 0.."
                             f"{classes - 1})")
        if name == "training" and int(torch.unique(labels).numel()) < 2:
            raise ValueError(f"the training data holds a single class ({lo}); accuracy budgets need at least two")
    return classes


def _in_out(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Conv2d):
        return module.in_channels, module.out_channels
    return module.in_features, module.out_features


def _rule_candidates(method: str, target_ratio: Optional[float]) -> Callable[[str, nn.Module], list[Candidate]]:
    """Per-layer single candidate of a baseline rule (convs only; Linear layers stay dense)."""
    rule = RANK_RULES[method]
    decomposition = methods.get(rule.method)

    def pick(name: str, module: nn.Module) -> list[Candidate]:
        if not decomposition.applies_to(module):
            return []
        cand = Candidate(rule.method, rule.ranks(module.weight, target_ratio))
        if not decomposition.saves_parameters(tuple(module.weight.shape), cand.ranks):  # stay dense
            return []
        return [cand]

    return pick


def _candidate_list(options: dict[str, list[Scored]], name: str) -> list[Candidate]:
    return [s.candidate for s in options[name][1:]]
