"""``mtd.compress``: plan, build, fine-tune and verify a mixed-decomposition compression of a CNN."""
from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Optional

from torch import nn

from ..utils import pick_device, seed_everything
from .apply import UnsupportedLayerError
from .baselines import (uniform_cp_rank, uniform_tucker_ranks, vbmf_cp_rank, vbmf_tucker_ranks)
from .candidates import Candidate, CandidateGrid, conv_shape, is_compressible, iter_compressible_layers
from .data_adapter import as_planning_data, make_splits
from .factor_cache import DecompositionSettings, FactorCache
from .finetune import finetune_model
from .layer_factory import build_layer, set_backend
from .options import record_io_shapes, score_options, warm_chain
from .plan import LayerPlan, Plan, current_versions
from .select import Assignment, Scored, assignment_path, search_budget, search_ratio
from .sensitivity import Calibration, score_loader
from .surgery import set_submodule
from .thesis_rule import thesis_assignment

PLANNER_METHODS = ("mtd", "thesis", "cp-vbmf", "tucker-vbmf", "cp-uniform", "tucker-uniform")
DEFAULT_PLANNING_SLACK = 5.0  # pre-fine-tuning calibration drop allowed = slack * max_drop


def compress(model: nn.Module, train_data: Any, *, max_drop: float = 1.0, target_ratio: Optional[float] = None,
             method: str = "mtd", calib_size: int = 1024, holdout_size: int = 2000, finetune_epochs: int = 1,
             finetune_lr: float = 0.01, teacher_kd: bool = True, device: Any = None, seed: int = 0,
             progress: bool = True, grid: Optional[CandidateGrid] = None, batch_size: int = 256,
             max_rounds: int = 3, planning_drop: Optional[float] = None, layer_tolerance: Optional[float] = None,
             cache_dir: Optional[str] = None, cp_n_iter_max: int = 100,
             layers: Optional[list[str]] = None, finetune_batch_size: int = 128,
             score_images: int = 512) -> tuple[nn.Module, Plan]:
    """Compress ``model`` by per-layer CP / CP4 / Tucker-2 / SVD decomposition.

    Args:
        model: the trained network (not modified; a compressed copy is returned).
        train_data: ``mtd.data.CIFAR10Arrays`` or ``(images, labels)``; only its TRAINING images are used,
            split (seeded) into calibration, held-out verification and fine-tuning sets.
        max_drop: accuracy budget in points, verified on the held-out split after fine-tuning.
        target_ratio: instead of an accuracy budget, reach this whole-model parameter ratio (required
            for the ``*-uniform`` methods).
        method: ``mtd`` (sensitivity-driven selection), ``thesis`` (the thesis' per-layer rule),
            ``cp-vbmf``/``tucker-vbmf`` (EVBMF ranks) or ``cp-uniform``/``tucker-uniform``.
        calib_size / holdout_size: calibration images (budget checks of whole assignments) / held-out
            images (verification after fine-tuning).
        score_images: how many of the calibration images score each single-layer candidate.
        finetune_epochs, finetune_lr, finetune_batch_size, teacher_kd: fine-tuning after each selection
            round (knowledge distillation from the original model when ``teacher_kd``).
        batch_size: batch size of the calibration / verification passes.
        planning_drop: calibration drop allowed *before* fine-tuning (default ``5 * max_drop`` when
            fine-tuning, else ``max_drop``); halved on every back-off round.
        layer_tolerance: thesis mode's per-layer drop tolerance (default ``max_drop``).
        max_rounds: selection + fine-tune + verify rounds at most (back-off in between).
        layers: names of the layers to consider (default: every compressible layer).
    Returns:
        ``(compressed_model, plan)``; the model uses the fused ``mtd_kernels`` ops.
    """
    t_start = time.perf_counter()
    _validate(method, max_drop, target_ratio, calib_size, finetune_epochs, max_rounds)
    seed_everything(seed)
    device = pick_device(device)
    data = as_planning_data(train_data)
    calib_size = min(calib_size, len(data))  # small data sets: calibrate on everything
    holdout_size = max(0, min(holdout_size, len(data) - calib_size))
    splits = make_splits(len(data), calib_size, holdout_size, seed)
    original = copy.deepcopy(model).to(device).eval()
    layers = _select_layers(original, layers)
    if not layers:
        raise UnsupportedLayerError(f"{type(model).__name__} has no compressible layer (ungrouped Conv2d with a "
                                    "kernel larger than 1x1, or Linear)")
    calib = Calibration(data.batches(splits.calibration, batch_size, device))
    base = calib.score(original)
    io_shapes = record_io_shapes(original, layers, calib.batches[0][0][:2])
    settings = DecompositionSettings(cp_n_iter_max=cp_n_iter_max)
    cache = FactorCache(cache_dir, settings)
    grid = grid or CandidateGrid()

    # per-candidate scoring runs the network once per candidate: use at most ``score_images`` of the
    # calibration images there; whole assignments are checked on all of them
    n_batches = max(1, -(-min(score_images, calib.num_images) // batch_size))
    score_calib = Calibration(calib.batches[:n_batches])
    options = _score(method, original, layers, grid, score_calib, score_calib.score(original), cache, io_shapes,
                     seed, target_ratio, progress)
    model_params = sum(p.numel() for p in original.parameters())

    def model_ratio(a: Assignment) -> float:
        saved = sum(options[n][0].params - s.params for n, s in a.items())
        return model_params / max(model_params - saved, 1)

    fine_tune = finetune_epochs > 0
    budget = {"max_drop": max_drop, "target_ratio": target_ratio}
    if planning_drop is None:
        planning_drop = max_drop * (DEFAULT_PLANNING_SLACK if fine_tune else 1.0)
    tolerance = max_drop if layer_tolerance is None else layer_tolerance
    path = assignment_path(options, sum(o[0].params for o in options.values())) if method == "mtd" else []
    holdout = data.loader(splits.holdout, batch_size, train=False, device=device) if holdout_size else None
    base_holdout = score_loader(original, holdout) if holdout else None

    history, min_index, chosen, compressed = [], 0, None, None
    for round_idx in range(max_rounds):
        info: dict[str, Any] = {"round": round_idx}
        if method == "mtd" and target_ratio is not None:
            idx, chosen = search_ratio(path, model_ratio, target_ratio)
            info["reached_target"] = idx is not None
        elif method == "mtd":
            def meets(a: Assignment) -> bool:
                return base.accuracy - calib.score(_assemble(original, a, cache, seed, layers, options)).accuracy \
                    <= planning_drop
            idx, chosen = search_budget(path[min_index:], meets)
            min_index += idx
            info["planning_drop"] = planning_drop
        elif method == "thesis":
            shapes = {n: _in_out(original.get_submodule(n)) for n in layers}
            chosen = thesis_assignment(options, shapes, tolerance)
            info["layer_tolerance"] = tolerance
        else:
            chosen = {n: o[-1] for n, o in options.items()}  # the rule's single candidate (or dense)
        compressed = _assemble(original, chosen, cache, seed, layers, options)
        info["calibration_drop"] = base.accuracy - calib.score(compressed).accuracy
        info["model_param_ratio"] = model_ratio(chosen)
        if fine_tune:
            ft_batch = max(1, min(finetune_batch_size, len(splits.finetune)))
            finetune_model(compressed, data.loader(splits.finetune, ft_batch, train=True, device=device,
                                                   seed=seed + round_idx),
                           epochs=finetune_epochs, lr=finetune_lr, teacher=original if teacher_kd else None,
                           device=device, progress=progress)
        if holdout:
            info["holdout_accuracy"] = score_loader(compressed, holdout).accuracy
            info["holdout_drop"] = base_holdout.accuracy - info["holdout_accuracy"]
        history.append(info)
        over = holdout is not None and info["holdout_drop"] > max_drop + 1e-9
        if not over or target_ratio is not None or method not in ("mtd", "thesis"):
            break
        # back off: relax the budget so the most sensitive layers (highest loss per saved parameter) return
        planning_drop /= 2
        tolerance /= 2
        if method == "mtd":
            min_index += 1
            if min_index >= len(path):
                break

    set_backend(compressed, "fused")
    compressed.eval()
    last = history[-1]  # the budgets the returned model was selected with
    plan = _make_plan(model, method, layers, chosen, options, seed, settings, budget,
                      last.get("layer_tolerance"), last.get("planning_drop"))
    plan.results = {
        "calibration": {"images": calib.num_images, "base_accuracy": base.accuracy, "base_loss": base.loss},
        "holdout": {"images": holdout_size, "base_accuracy": base_holdout.accuracy if base_holdout else None},
        "rounds": history, "within_budget": (not history or "holdout_drop" not in history[-1]
                                             or history[-1]["holdout_drop"] <= max_drop + 1e-9),
        "model_params_before": model_params,
        "model_param_ratio": model_ratio(chosen),
        "finetune_epochs": finetune_epochs, "teacher_kd": teacher_kd, "seed": seed,
        "wall_time_s": time.perf_counter() - t_start,
    }
    return compressed, plan


# ------------------------------------------------------------------------------------------------------------
def _validate(method, max_drop, target_ratio, calib_size, finetune_epochs, max_rounds) -> None:
    if method not in PLANNER_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(PLANNER_METHODS)}")
    if target_ratio is not None and not target_ratio > 1:
        raise ValueError(f"target_ratio must be > 1 (e.g. 8 for 8x fewer parameters), got {target_ratio!r}")
    if method.endswith("-uniform") and target_ratio is None:
        raise ValueError(f"method {method!r} needs target_ratio (the per-layer compression ratio)")
    if max_drop is None or max_drop < 0:
        raise ValueError(f"max_drop must be >= 0 accuracy points, got {max_drop!r}")
    if not isinstance(calib_size, int) or calib_size < 1:
        raise ValueError(f"calib_size must be a positive int, got {calib_size!r}")
    if not isinstance(finetune_epochs, int) or finetune_epochs < 0:
        raise ValueError(f"finetune_epochs must be an int >= 0, got {finetune_epochs!r}")
    if not isinstance(max_rounds, int) or max_rounds < 1:
        raise ValueError(f"max_rounds must be an int >= 1, got {max_rounds!r}")


def _select_layers(model: nn.Module, names: Optional[list[str]]) -> list[str]:
    """All compressible layers, or the given names after checking each one is supported."""
    if names is None:
        return [name for name, _ in iter_compressible_layers(model)]
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"model has no layer named {name!r}") from None
        if not is_compressible(module):
            raise UnsupportedLayerError(
                f"layer {name!r} ({type(module).__name__}) cannot be compressed: mtd supports ungrouped "
                "Conv2d with a kernel larger than 1x1 and Linear layers")
    return list(dict.fromkeys(names))


def _in_out(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Conv2d):
        return module.in_channels, module.out_channels
    return module.in_features, module.out_features


def _rule_candidates(method: str, target_ratio: Optional[float]):
    """Per-layer single candidate of a baseline rule (convs only; Linear layers stay dense)."""
    from ..decompose import max_cp_rank

    def pick(name: str, module: nn.Module) -> list[Candidate]:
        if not isinstance(module, nn.Conv2d):
            return []
        T, S, kh, kw = conv_shape(module)
        if method == "cp-vbmf":
            cand = Candidate("cp", (vbmf_cp_rank(module.weight),))
        elif method == "tucker-vbmf":
            cand = Candidate("tucker", vbmf_tucker_ranks(module.weight))
        elif method == "cp-uniform":
            cand = Candidate("cp", (uniform_cp_rank(T, S, kh, kw, target_ratio),))
        else:
            cand = Candidate("tucker", uniform_tucker_ranks(T, S, kh, kw, target_ratio))
        if cand.method == "cp":
            if cand.ranks[0] >= max_cp_rank(module):  # would not save parameters: stay dense
                return []
        elif S * cand.ranks[0] + cand.ranks[0] * cand.ranks[1] * kh * kw + cand.ranks[1] * T >= T * S * kh * kw:
            return []
        return [cand]

    return pick


def _score(method, original, layers, grid, calib, base, cache, io_shapes, seed, target_ratio, progress):
    if method in ("mtd", "thesis"):
        return score_options(original, layers, grid, calib, base, cache, io_shapes, seed, progress=progress)
    return score_options(original, layers, grid, calib, base, cache, io_shapes, seed,
                         only=_rule_candidates(method, target_ratio), progress=progress)


def _candidate_list(options: dict[str, list[Scored]], name: str) -> list[Candidate]:
    return [s.candidate for s in options[name][1:]]


def _assemble(original: nn.Module, assignment: Assignment, cache: FactorCache, seed: int, layers: list[str],
              options: dict[str, list[Scored]]) -> nn.Module:
    """A copy of ``original`` with the assignment's layers decomposed (torch backend, for training)."""
    model = copy.deepcopy(original)
    for name in layers:
        s = assignment[name]
        if s.method == "dense":
            continue
        module = original.get_submodule(name)
        factors = cache.factors(module.weight, s.method, s.candidate.ranks, seed,
                                warm_chain(s.candidate, _candidate_list(options, name)))
        set_submodule(model, name, build_layer(module, s.method, factors, backend="torch"))
    return model


def _make_plan(model, method, layers, chosen, options, seed, settings, budget, tolerance, planning_drop) -> Plan:
    entries = []
    for name in layers:
        s, dense = chosen[name], options[name][0]
        module = model.get_submodule(name)
        entries.append(LayerPlan(
            name=name, kind="conv" if isinstance(module, nn.Conv2d) else "linear", method=s.method,
            ranks=list(s.candidate.ranks), params_before=dense.params, params_after=s.params,
            flops_before=dense.flops, flops_after=s.flops, rel_error=s.rel_error,
            sensitivity={"loss": s.loss, "accuracy": s.accuracy}, seed=seed,
            warm_start=list(warm_chain(s.candidate, _candidate_list(options, name)))))
    budget = dict(budget, planning_drop=planning_drop if method == "mtd" else None,
                  layer_tolerance=tolerance if method == "thesis" else None)
    return Plan(model_name=getattr(model, "mtd_model_name", None),
                model_kwargs=dict(getattr(model, "mtd_model_kwargs", {}) or {}), method=method, layers=entries,
                budget=budget, versions=current_versions(), decomposition=dataclasses.asdict(settings))
