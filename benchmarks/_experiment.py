"""The CIFAR-10 experiment runner of the benchmarks (``cifar_cpu.py``, ``cifar_cpu_full.py``, ``cifar_gpu.py``).

Its steps — train a baseline, fine-tune the dense control, compress (MTD or a baseline method) and score on
the TEST split — are what every CIFAR benchmark runs; :func:`run_experiment` chains them with latency
measurements for ``cifar_gpu.py``, while the CPU benchmarks run their own resumable sequence of the same steps.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from _bench_util import machine_description


@dataclass
class ExperimentConfig:
    model: str = "vgg11"
    width: float = 0.25
    train_epochs: int = 30
    train_lr: float = 0.1
    batch_size: int = 128
    methods: tuple = ("mtd", "cp-vbmf", "tucker-vbmf")
    max_drop: float = 1.0
    finetune_epochs: int = 3
    finetune_lr: float = 0.01
    calib_size: int = 1024
    holdout_size: int = 2000
    search_rounds: int = 2
    grid: str = "full"  # "full", "small" or "coarse" (see CandidateGrid)
    cp_n_iter_max: int = 100
    latency_batches: tuple = (1,)
    latency_device: str = "cpu"
    seed: int = 0
    time_budget_s: Optional[float] = None  # skip remaining methods when the budget would be exceeded
    # per-layer ratio of the *-uniform baselines; None = the ratio MTD reached in the same run, so the
    # single-method baselines are compared with MTD at equal compression
    uniform_ratio: Optional[float] = None
    extra: dict = field(default_factory=dict)


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_accuracy(model: nn.Module, test) -> float:
    """Top-1 accuracy (%) of ``model`` on the loader ``test``."""
    from mtd.train import evaluate

    return 100.0 * evaluate(model, test)["accuracy"]


def train_baseline(arrays, model_name: str, width: float, *, epochs: int, lr: float, batch_size: int, seed: int,
                   device: torch.device, precision: str = "auto", progress: bool = True) -> nn.Module:
    """A registry model trained from scratch on ``arrays``' training split (eval mode, contiguous weights)."""
    from mtd.data import TensorDataLoader
    from mtd.models import build_model
    from mtd.train import train

    model = build_model(model_name, num_classes=len(arrays.classes), width=width).to(device)
    loader = TensorDataLoader(arrays.train_x, arrays.train_y, batch_size, train=True, device=device, seed=seed)
    train(model, loader, epochs=epochs, lr=lr, seed=seed, progress=progress, precision=precision)
    return model.to(memory_format=torch.contiguous_format).eval()


def finetune_control(baseline: nn.Module, arrays, *, epochs: int, seed: int, device: Any = "cpu",
                     lr: float = 0.01) -> nn.Module:
    """The dense control: a copy of ``baseline`` through the compressed models' fine-tuning (distilled from
    itself, all training images, peak rate ``lr``), which separates what fine-tuning alone gains from what
    compression loses. Fine-tunes as ``mtd.compress`` does: its precision, 16 views with a teacher bank."""
    from mtd.data import TensorDataLoader
    from mtd.train.finetune import finetune

    model = copy.deepcopy(baseline)
    loader = TensorDataLoader(arrays.train_x, arrays.train_y, 128, train=True, device=device, seed=seed, views=16)
    finetune(model, loader, epochs=epochs, lr=lr, teacher=baseline, seed=seed)
    return model.eval()


def compress_and_test(baseline: nn.Module, arrays, test, *, device: torch.device, progress: bool = True,
                      config=None, val_data=None, **overrides) -> tuple[nn.Module, Any, float, float]:
    """``mtd.compress(baseline, arrays, config, val_data=val_data, **overrides)`` scored on ``test``:
    ``(compressed, plan, test accuracy %, seconds of the compress call)``."""
    from mtd.planner import compress

    t0 = time.perf_counter()
    compressed, plan = compress(baseline, arrays, config, val_data=val_data, device=device, progress=progress,
                                **overrides)
    seconds = time.perf_counter() - t0
    acc = test_accuracy(compressed, test)
    return compressed, plan, acc, seconds


def run_experiment(arrays, cfg: ExperimentConfig, device: torch.device, *, log: Callable[[str], None] = print,
                   progress: bool = True) -> dict[str, Any]:
    """Run the whole benchmark; returns the results dict (also holds the plans)."""
    from mtd.data import TensorDataLoader
    from mtd.planner import CandidateGrid

    t_start = time.perf_counter()
    channels_last = True
    results: dict[str, Any] = {"config": {k: v for k, v in vars(cfg).items()}, "machine": machine_description(device),
                               "rows": [], "plans": {}}
    test = TensorDataLoader(arrays.test_x, arrays.test_y, 500, train=False, device=device, channels_last=channels_last)
    t0 = time.perf_counter()
    model = train_baseline(arrays, cfg.model, cfg.width, epochs=cfg.train_epochs, lr=cfg.train_lr,
                           batch_size=cfg.batch_size, seed=cfg.seed, device=device, progress=progress)
    base_acc = test_accuracy(model, test)
    results["baseline"] = {"accuracy": base_acc, "train_seconds": time.perf_counter() - t0, "params": params(model)}
    log(f"baseline {cfg.model} w={cfg.width}: {base_acc:.2f}% after {cfg.train_epochs} epochs "
        f"({results['baseline']['train_seconds']:.0f} s)")
    dense_latency = _latencies(model, cfg, device)
    results["baseline"]["latency_ms"] = dense_latency
    grid = CandidateGrid.named(cfg.grid)
    per_method_s = None
    for method in cfg.methods:
        elapsed = time.perf_counter() - t_start
        if cfg.time_budget_s is not None and per_method_s is not None and elapsed + per_method_s > cfg.time_budget_s:
            log(f"skipping {method}: {elapsed:.0f} s used, ~{per_method_s:.0f} s needed, budget {cfg.time_budget_s:.0f} s")
            results["rows"].append({"method": method, "skipped": "time budget"})
            continue
        target_ratio = None
        if method.endswith("-uniform"):
            target_ratio = cfg.uniform_ratio or next(
                (r["layer_param_ratio"] for r in results["rows"] if r.get("method") == "mtd" and "accuracy" in r), None)
            if target_ratio is None or target_ratio <= 1.0:
                log(f"skipping {method}: it needs uniform_ratio or a compressing mtd row before it")
                results["rows"].append({"method": method, "skipped": "no target ratio"})
                continue
        budget = None if method.endswith("-vbmf") else cfg.max_drop  # EVBMF baselines: the rule, not a promise
        compressed, plan, acc, seconds = compress_and_test(
            model, arrays, test, device=device, progress=progress, method=method, max_drop=budget,
            target_ratio=target_ratio, calib_size=cfg.calib_size, holdout_size=cfg.holdout_size,
            finetune_epochs=cfg.finetune_epochs, finetune_lr=cfg.finetune_lr, seed=cfg.seed, grid=grid,
            search_rounds=cfg.search_rounds, cp_n_iter_max=cfg.cp_n_iter_max, finetune_batch_size=cfg.batch_size)
        per_method_s = max(per_method_s or 0.0, seconds)
        plan.results["test"] = {"base_accuracy": base_acc, "accuracy": acc, "drop": base_acc - acc}
        totals = plan.totals()
        row = {"method": method, "base_accuracy": base_acc, "accuracy": acc, "drop": base_acc - acc,
               "param_ratio": plan.results["model_param_ratio"], "layer_param_ratio": totals["param_ratio"],
               "macs_ratio": totals["macs_ratio"], "seconds": seconds,
               "latency_ms": _latencies(compressed, cfg, device), "dense_latency_ms": dense_latency,
               "methods": {l.name: f"{l.method}{l.ranks or ''}" for l in plan.layers}}
        results["rows"].append(row)
        results["plans"][method] = plan.to_dict()
        log(f"{method}: {acc:.2f}% (drop {base_acc - acc:+.2f}), params {row['param_ratio']:.2f}x, "
            f"MACs {row['macs_ratio']:.2f}x, {seconds:.0f} s")
    results["wall_seconds"] = time.perf_counter() - t_start
    return results


def _latencies(model: nn.Module, cfg: ExperimentConfig, device: torch.device) -> dict[str, float]:
    """{"b1": ms, "b256": ms, ...} on ``cfg.latency_device`` (``"same"`` = the experiment's device)."""
    from mtd.report.latency import forward_latency_ms

    dev = device if cfg.latency_device == "same" else torch.device(cfg.latency_device)
    m = copy.deepcopy(model).to(dev)
    out: dict[str, float] = {}
    for b in cfg.latency_batches:
        try:
            out[f"b{b}"] = forward_latency_ms(m, b, device=dev, channels_last=dev.type == "cuda",
                                              repeats=20 if b == 1 else 10)
        except RuntimeError as err:  # a one-shot benchmark run should still report everything else
            out[f"b{b}"] = float("nan")
            out[f"b{b}_error"] = str(err).splitlines()[0][:200]
    return out


def results_markdown(results: dict[str, Any], title: str) -> str:
    """A Markdown table of the results (one row per method)."""
    from mtd.report import format_table

    m = results["machine"]
    base = results["baseline"]
    lat_keys = [k for k in base.get("latency_ms", {}) if not k.endswith("_error")]
    header = ["method", "baseline acc (%)", "acc (%)", "drop", "param ratio", "MACs ratio"]
    header += [f"latency {k} dense/compressed (ms)" for k in lat_keys] + ["time (s)"]
    rows = []
    for r in results["rows"]:
        if r.get("skipped"):
            rows.append([r["method"], "skipped: " + r["skipped"]] + [""] * (len(header) - 2))
            continue
        rows.append([r["method"], r["base_accuracy"], r["accuracy"], r["drop"], r["param_ratio"], r["macs_ratio"]]
                    + [f"{r['dense_latency_ms'][k]:.2f} / {r['latency_ms'][k]:.2f}" for k in lat_keys]
                    + [r["seconds"]])
    cfg = results["config"]
    lines = [f"# {title}", "", f"Machine: {m.get('gpu', m['cpu'])} (host {m['host']}, torch {m['torch']}, "
             f"{m['torch_threads']} threads, device {m['device']}). Data: CIFAR-10 (JPEG q75 copy), test split.", "",
             f"Model {cfg['model']} width {cfg['width']}, baseline {cfg['train_epochs']} epochs; every method "
             f"fine-tuned {cfg['finetune_epochs']} epochs (KD from the baseline); max drop {cfg['max_drop']} "
             f"points; latency on {cfg['latency_device']} with the fused ops. Total {results['wall_seconds']:.0f} s.",
             "", format_table(header, rows, markdown=True), ""]
    for r in results["rows"]:
        if not r.get("skipped"):
            lines.append(f"- {r['method']}: " + ", ".join(f"{k}={v}" for k, v in r["methods"].items()))
    return "\n".join(lines) + "\n"
