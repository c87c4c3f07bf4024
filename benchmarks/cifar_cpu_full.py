#!/usr/bin/env python
"""Full-width VGG on the CPU: the thesis' row (VGG11 32x, VGG16 37x) from a trained baseline, beside CP-only and Tucker-only.

The checkpoint names its architecture; the thesis' ratio for it is the default of ``--ratios``.

Steps (each written to ``<out>/<stem>.{json,md,png}`` when it finishes; a restarted run skips finished steps;
the models that later steps continue from are kept in ``--cache-dir``):

1. baseline: the checkpoint (``--checkpoint``, e.g. ``../shared/models/vgg11-w1-e30-cifar10.pt``) on the test set;
2. ``mtd@R``: MTD at the first of ``--ratios`` (default: the thesis' ratio, 32 for VGG11, 37 for VGG16), through
   ``mtd.compress(target_ratio=R)`` with ``--finetune-epochs`` (E) distilled epochs;
3. cp-only and tucker-only at that model's whole-model ratio, fine-tuned the same E epochs: one uniform
   per-layer ratio, chosen so that the whole model matches MTD's; every conv but the first (kept dense, as
   CP/Tucker papers do), classifier dense;
4. control: the dense baseline through the same E epochs (fine-tuning alone can lift a baseline);
5. ``mtd@R-ftN`` for each N of ``--curve``: the MTD model fine-tuned on, to N epochs in all (each stage a new
   warm-up + cosine schedule from where the last one ended, over all training images, distilled from the same
   bank of teacher outputs): accuracy against epochs;
6. mtd-budget: ``mtd.compress`` with ``--max-drop`` on the ``coarse`` grid, ``--search-rounds`` rounds of E epochs
   each, the budget verified on ``--val`` test images;
7. the other ``--ratios`` (the frontier beyond the thesis, e.g. 48 and 64 for VGG16), each with its ``--curve``.

The test set is split once (seeded): ``--val`` images verify the budget inside ``mtd.compress`` (they choose the
model), the other images report it. Drops are measured on the report images, against the baseline and against
the better of the baseline and the control; accuracy on all 10,000 test images is given beside them.
Every fine-tune is distilled from the baseline in the library's precision (``auto``: bf16 where the CPU has it),
with the teacher's outputs computed once per (image, view) and shared by all steps (``--cache-dir``).

Smoke run:  python benchmarks/cifar_cpu_full.py --checkpoint CK.pt --subset 3000 --finetune-epochs 1 --curve 2 \
                --grid tiny --stem smoke
Thesis rows: python benchmarks/cifar_cpu_full.py --checkpoint ../shared/models/vgg11-w1-e30-cifar10.pt \
                 --stem cifar_cpu_full_vgg11   (a converged VGG16 with --stem cifar_cpu_full_vgg16 --ratios 37,48,64)
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_util as bu  # noqa: E402
import _experiment as ex  # noqa: E402


THESIS_RATIOS = {"vgg11": 32.0, "vgg16": 37.0}  # parameter compression at < 1 point (Liang & Lee 2020)
VIEWS = 16  # augmented views per training image (CompressConfig.finetune_views): the teacher runs once per view


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="trained baseline written by `mtd train`")
    p.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--stem", default=None, help="results file name (default cifar_cpu_full[_subsetN])")
    p.add_argument("--finetune-epochs", type=int, default=10,
                   help="E: fine-tuning epochs of every compressed model, the control and each search round")
    p.add_argument("--curve", default="30,60",
                   help="MTD models fine-tuned on to these total epochs (comma-separated, each > E; '' for none)")
    p.add_argument("--max-drop", type=float, default=1.0)
    p.add_argument("--confidence", type=float, default=0.8)
    p.add_argument("--val", type=int, default=5000, help="test images that verify the budget (the rest report)")
    p.add_argument("--grid", default="coarse", choices=("full", "small", "coarse", "tiny"))
    p.add_argument("--score-images", type=int, default=256, help="calibration images scoring each candidate")
    p.add_argument("--search-rounds", type=int, default=3)
    p.add_argument("--ratios", default=None, help="MTD target ratios: the first is compared with CP-only and "
                   "Tucker-only, the others come last (default: the thesis' ratio)")
    p.add_argument("--subset", type=int, default=None, help="use only this many training images (smoke runs)")
    p.add_argument("--cache-dir", default="runs/cifar_cpu_full_cache",
                   help="decompositions, candidate scores, the teacher bank and the models later steps continue")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from mtd.models import load_checkpoint, load_model

    curve = _epochs_list(args.curve, args.finetune_epochs)
    arrays = bu.cifar_arrays(args.data, args.subset, args.seed)
    stem = args.stem or (f"cifar_cpu_full_subset{args.subset}" if args.subset else "cifar_cpu_full")
    n_test = len(arrays.test_y)
    if not 0 < args.val < n_test:
        raise SystemExit(f"--val must be between 1 and {n_test - 1} (the rest of the test set reports)")
    order = np.random.default_rng(args.seed).permutation(n_test)
    val_idx, report_idx = np.sort(order[:args.val]), np.sort(order[args.val:])

    out = Path(args.out)
    json_path = out / f"{stem}.json"
    model_name = load_checkpoint(args.checkpoint).get("model_name")
    if args.ratios is None:
        if model_name not in THESIS_RATIOS:
            raise SystemExit(f"{args.checkpoint} holds {model_name!r}: the thesis has no ratio for it, pass --ratios")
        args.ratios = f"{THESIS_RATIOS[model_name]:g}"
    ratios = [float(x) for x in args.ratios.split(",") if x]
    results = bu.resumed_results(json_path, args, additive=("curve", "ratios"))
    results.setdefault("model", model_name)
    checksum = _sha256(args.checkpoint)
    if results.setdefault("checkpoint_sha256", checksum) != checksum:
        raise SystemExit(f"{args.checkpoint} is not the checkpoint {json_path} was started from")
    steps = results["steps"]
    t_run, prior_seconds = time.perf_counter(), results.get("wall_seconds", 0.0)  # a resumed run adds up

    def save() -> None:
        results["wall_seconds"] = prior_seconds + time.perf_counter() - t_run
        write_results(results, out, stem)

    baseline = load_model(args.checkpoint).eval()
    tests = _TestSets(arrays, report_idx)
    val_data = (arrays.test_x[val_idx], arrays.test_y[val_idx])
    recovery = _Recovery(baseline, arrays, args)
    keep = Path(args.cache_dir) / "models" / stem  # the models that later steps continue from

    def run(name: str, make) -> None:
        if name in steps:
            return
        t0 = time.perf_counter()
        steps[name] = make()
        steps[name]["seconds"] = time.perf_counter() - t0
        steps[name]["wall_seconds_at_end"] = prior_seconds + time.perf_counter() - t_run
        s = steps[name]
        print(f"{name}: {s.get('param_ratio', 1.0):.2f}x, report {s['report_accuracy']:.2f}%, "
              f"test {s['test_accuracy']:.2f}%, {s['seconds']:.0f} s", flush=True)
        save()

    def mtd_with_curve(r: float) -> str:
        name = f"mtd@{r:g}"
        run(name, lambda: _compress(baseline, arrays, val_data, tests, args, "mtd", target_ratio=r,
                                    keep=keep / f"{name}.pt"))
        prev = name
        for total in curve:
            stage = f"{name}-ft{total}"
            run(stage, lambda prev=prev, stage=stage, total=total: recovery.continue_step(
                steps[prev], keep / f"{prev}.pt", keep / f"{stage}.pt", total, tests))
            prev = stage
        return name

    run("baseline", lambda: {**tests.score(baseline), "params": ex.params(baseline), "param_ratio": 1.0})
    first = f"mtd@{ratios[0]:g}" if ratios else None
    if first:
        run(first, lambda: _compress(baseline, arrays, val_data, tests, args, "mtd", target_ratio=ratios[0],
                                     keep=keep / f"{first}.pt"))
        ratio, at = steps[first]["param_ratio"], f"{ratios[0]:g}"
        for method in ("cp-uniform", "tucker-uniform"):
            run(f"{method}@{at}", lambda m=method: _uniform_at(baseline, arrays, val_data, tests, args, m, ratio))
    run("control", lambda: recovery.control(tests))
    if first:
        mtd_with_curve(ratios[0])
    run("mtd-budget", lambda: _compress(baseline, arrays, val_data, tests, args, "mtd", max_drop=args.max_drop))
    for r in ratios[1:]:
        mtd_with_curve(r)
    save()
    print((out / f"{stem}.md").read_text())
    return 0


def _epochs_list(text: str, first: int) -> list[int]:
    """``--curve``: increasing totals, each above the first fine-tune's ``first`` epochs."""
    try:
        totals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--curve must be comma-separated epoch counts, got {text!r}") from None
    if any(t <= first for t in totals) or totals != sorted(set(totals)):
        raise SystemExit(f"--curve must increase and stay above --finetune-epochs {first}, got {text!r}")
    return totals


class _Recovery:
    """The benchmark's fine-tuning after ``mtd.compress``: the dense control and the continued MTD stages.

    Fine-tunes as ``mtd.compress`` does (its learning rate, CP factors at ``cp_lr_scale``, gradient clipping,
    precision, distilled from the baseline through a teacher bank of ``VIEWS`` views) but over all training
    images, and shares the bank file that ``mtd.compress`` keeps in ``--cache-dir`` (the same key: the same
    teacher, data, views and precision), so the teacher runs once per (image, view) for the whole run."""

    def __init__(self, baseline, arrays, args):
        from mtd.data import CIFAR10_MEAN, CIFAR10_STD
        from mtd.data.adapter import as_planning_data
        from mtd.data.loader import VIEW_AUGMENTATION
        from mtd.train.teacher_bank import TeacherBank, bank_key
        from mtd.utils.precision import resolve_precision

        self.baseline, self.args = baseline, args
        self.cfg = _config(args)
        self.precision = resolve_precision(self.cfg.precision, torch.device("cpu"))
        data = as_planning_data(arrays, mean=CIFAR10_MEAN, std=CIFAR10_STD)
        self.loader = data.loader(np.arange(len(data)), self.cfg.finetune_batch_size, train=True,
                                  device=torch.device("cpu"), seed=args.seed, views=VIEWS)
        key = bank_key(baseline, data.fingerprint(), VIEWS, self.precision, VIEW_AUGMENTATION)
        self.bank = TeacherBank(baseline, len(data) * VIEWS, precision=self.precision, key=key,
                                path=Path(args.cache_dir) / f"teacher-bank-{key}.npz")

    def finetune(self, model, epochs: int) -> float:
        """Fine-tune ``model`` in place for ``epochs``; returns seconds per epoch."""
        from mtd.train.finetune import cp_factor_lr_scales, finetune

        t0 = time.perf_counter()
        finetune(model, self.loader, epochs=epochs, lr=self.cfg.finetune_lr, teacher=self.bank,
                 max_grad_norm=self.cfg.max_grad_norm, lr_scales=cp_factor_lr_scales(model, self.cfg.cp_lr_scale),
                 seed=self.args.seed, precision=self.precision, progress=False, log_fn=print)
        self.bank.save()
        return (time.perf_counter() - t0) / epochs

    def control(self, tests) -> dict:
        """The dense baseline through the compressed models' first fine-tune (E epochs)."""
        model = copy.deepcopy(self.baseline)
        per_epoch = self.finetune(model, self.args.finetune_epochs)
        return {**tests.score(model), "params": ex.params(model), "param_ratio": 1.0,
                "finetune_epochs": self.args.finetune_epochs, "seconds_per_epoch": per_epoch}

    def continue_step(self, previous: dict, source: Path, dest: Path, total: int, tests) -> dict:
        """The model of step ``previous`` (kept at ``source``) fine-tuned on to ``total`` epochs in all."""
        import mtd
        from mtd.serialization import load_plan

        if not source.is_file():
            raise SystemExit(f"{source} (the model this step continues) is gone: remove the steps after the "
                             f"one that made it from the results file, or the results file, and run again")
        model = mtd.load(str(source), backend="torch")  # plain convolutions: what compress fine-tunes
        epochs = total - previous["finetune_epochs"]
        per_epoch = self.finetune(model, epochs)
        mtd.set_backend(model, "fused")
        mtd.save(model, dest, plan=load_plan(str(source)))
        row = {k: previous[k] for k in ("method", "target_ratio", "param_ratio", "params", "macs_ratio", "layers")}
        return {**row, **tests.score(model), "finetune_epochs": total, "continued_epochs": epochs,
                "seconds_per_epoch": per_epoch}


class _TestSets:
    """The report images (test images the budget never saw) and the whole test set."""

    def __init__(self, arrays, report_idx: np.ndarray):
        from mtd.data import TensorDataLoader

        self.report = TensorDataLoader(arrays.test_x[report_idx], arrays.test_y[report_idx], 500, train=False)
        self.test = TensorDataLoader(arrays.test_x, arrays.test_y, 500, train=False)

    def score(self, model) -> dict:
        from mtd.train import evaluate

        model.eval()
        return {"report_accuracy": 100.0 * evaluate(model, self.report)["accuracy"],
                "test_accuracy": 100.0 * evaluate(model, self.test)["accuracy"]}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _config(args, **fields):
    from mtd.data import CIFAR10_MEAN, CIFAR10_STD
    from mtd.planner import CompressConfig

    return CompressConfig(grid=args.grid, score_images=args.score_images, search_rounds=args.search_rounds,
                          confidence=args.confidence, finetune_epochs=args.finetune_epochs,
                          seed=args.seed, cache_dir=args.cache_dir, mean=CIFAR10_MEAN, std=CIFAR10_STD, **fields)


def _compress(baseline, arrays, val_data, tests, args, method, *, max_drop=None, target_ratio=None,
              layers=None, keep=None) -> dict:
    """One ``mtd.compress`` call scored on the test sets; ``keep``: where to save the model for later steps."""
    import mtd
    from mtd.planner import compress

    cfg = _config(args, method=method, max_drop=max_drop, target_ratio=target_ratio, layers=layers)
    compressed, plan = compress(baseline, arrays, cfg, val_data=val_data, device="cpu")
    if keep is not None:
        mtd.save(compressed, keep, plan=plan)
    r = plan.results
    row = {"method": method, "target_ratio": target_ratio, "finetune_epochs": cfg.finetune_epochs,
           "param_ratio": r["model_param_ratio"], "params": ex.params(compressed),
           "macs_ratio": plan.totals()["macs_ratio"], **tests.score(compressed),
           "verdict": r["verdict"], "verification": r.get("verification"),
           "fallback_to_original": r["fallback_to_original"], "compress_seconds": r["wall_time_s"],
           "layers": [{"name": l.name, "method": l.method, "ranks": l.ranks, "params_before": l.params_before,
                       "params_after": l.params_after, "single_layer_loss": l.sensitivity["loss"]}
                      for l in plan.layers]}
    if "search" in r:
        row["search"] = r["search"]
    return row


def _uniform_at(baseline, arrays, val_data, tests, args, method, whole_ratio) -> dict:
    """``method`` (cp-uniform / tucker-uniform) at the per-layer ratio whose whole-model ratio is ``whole_ratio``."""
    from mtd.layers import compressible_layers

    convs = [(n, m) for n, m in compressible_layers(baseline) if isinstance(m, torch.nn.Conv2d)][1:]
    total = ex.params(baseline)

    def whole(per_layer: float) -> float:
        saved = sum(m.weight.numel() - _uniform_params(m, method, per_layer) for _, m in convs)
        return total / (total - saved)

    lo, hi = 1.01, 4096.0  # whole() grows with the per-layer ratio; find the smallest that reaches whole_ratio
    if whole(hi) < whole_ratio:
        per_layer = hi
    else:
        for _ in range(60):
            mid = (lo * hi) ** 0.5
            lo, hi = (mid, hi) if whole(mid) < whole_ratio else (lo, mid)
        per_layer = hi
    row = _compress(baseline, arrays, val_data, tests, args, method, target_ratio=per_layer,
                    layers=tuple(n for n, _ in convs))
    row["per_layer_ratio"] = per_layer
    return row


def _uniform_params(conv, method: str, ratio: float) -> int:
    """Parameters of ``conv`` under the planner's uniform rank rule (dense where that would not save any)."""
    from mtd import methods
    from mtd.planner.baselines import RANK_RULES

    rule, shape = RANK_RULES[method], tuple(conv.weight.shape)
    return min(methods.get(rule.method).params(shape, rule.ranks(conv.weight, ratio)), conv.weight.numel())


# -- reporting ------------------------------------------------------------------------------------------------
def write_results(results: dict, out: Path, stem: str) -> None:
    bu.write_result_files(results, out, stem, _markdown, _plot)


def _references(steps: dict) -> tuple[float, float]:
    """Report accuracy of the baseline, and of the better of the baseline and the dense control."""
    base = steps["baseline"]["report_accuracy"]
    return base, max(base, steps.get("control", {}).get("report_accuracy", base))


def _markdown(results: dict, stem: str) -> str:
    a, m, steps = results["args"], results["machine"], results["steps"]
    n_report = 10000 - a["val"]
    lines = [f"# Full-width {_model_title(results)} on CIFAR-10, on the CPU", "",
             f"Machine: {m['cpu']} ({', '.join(m.get('cpu_features') or [m.get('avx', '')])}; host {m['host']}, "
             f"torch {m['torch']}, "
             f"{m['torch_threads']} threads). Baseline `{Path(a['checkpoint']).name}` (sha256 "
             f"`{results['checkpoint_sha256']}`). Every compressed model, the dense control and every search round "
             f"fine-tuned {a['finetune_epochs']} epochs, distilled from the baseline (`-ftN` rows: fine-tuned on to N "
             f"epochs in all); seed {a['seed']}; grid `{a['grid']}`; budget {a['max_drop']} point at confidence "
             f"{a['confidence']}, verified on {a['val']} test images; accuracy reported on the other {n_report} test "
             f"images (never seen by the search) and on all 10,000. Wall time "
             f"{results.get('wall_seconds', 0) / 60:.1f} min (the `at end` column: the run's wall time when the "
             f"step ended, resumed runs included).", ""]
    if "baseline" not in steps:
        return "\n".join(lines)
    base, ref = _references(steps)
    lines += ["| step | params | ratio | report acc (%) | drop vs baseline | drop vs best dense | test acc, all 10k (%) "
              "| verified drop (+margin) | fine-tuning epochs | s per epoch | time (min) | at end (min) |",
              "|---" * 12 + "|"]
    for name, s in steps.items():
        v = s.get("verification") or {}
        held = f"{v['drop']:+.2f} (+{v['margin']:.2f})" if v else ""
        per_epoch = f"{s['seconds_per_epoch']:.0f}" if "seconds_per_epoch" in s else ""
        lines.append(f"| {name} | {s['params']:,} | {s.get('param_ratio', 1.0):.2f}x | {s['report_accuracy']:.2f} | "
                     f"{base - s['report_accuracy']:+.2f} | {ref - s['report_accuracy']:+.2f} | "
                     f"{s['test_accuracy']:.2f} | {held} | {_epochs(name, s, a)} | {per_epoch} | "
                     f"{s['seconds'] / 60:.1f} | {s.get('wall_seconds_at_end', 0) / 60:.0f} |")
    lines += _control_lines(steps, a) + _curve_lines(steps, ref)
    for name, s in steps.items():
        if "layers" not in s or "continued_epochs" in s:  # a continued model's plan is its first stage's
            continue
        lines += ["", f"**{name}**: {s['verdict']}" + (f" (per-layer ratio {s['per_layer_ratio']:.1f}x)"
                                                     if "per_layer_ratio" in s else ""), ""]
        if name.startswith("mtd"):
            lines += ["| layer | method | ranks | params before | after | layer ratio | single-layer loss increase |",
                      "|---|---|---|---|---|---|---|"]
            for l in s["layers"]:
                lines.append(f"| {l['name']} | {l['method']} | {l['ranks']} | {l['params_before']:,} | "
                             f"{l['params_after']:,} | {l['params_before'] / max(l['params_after'], 1):.1f}x | "
                             f"{l['single_layer_loss']:+.3f} |")
        if "search" in s:
            lines += bu.search_lines(s["search"], "the validation images")
    lines += ["", f"![accuracy vs compression]({stem}.png)", ""]
    return "\n".join(lines)


def _control_lines(steps: dict, a: dict) -> list[str]:
    """Whether the first fine-tune's epochs suffice for the control (it gains < 0.3 points on a converged
    baseline), said with the numbers."""
    if "control" not in steps:
        return []
    gain = steps["control"]["report_accuracy"] - steps["baseline"]["report_accuracy"]
    verdict = (f"less than 0.3 points: {a['finetune_epochs']} epochs of control suffice" if gain < 0.3 else
               "0.3 points or more: the baseline is not converged, and drops are measured against the control")
    return ["", f"The dense control gains {gain:+.2f} points on the report images over {a['finetune_epochs']} "
            f"epochs, {verdict}."]


def _curve_lines(steps: dict, ref: float) -> list[str]:
    """Accuracy against fine-tuning epochs for each MTD ratio that was fine-tuned on."""
    lines = []
    for name, s in steps.items():
        stages = [(n, t) for n, t in steps.items() if n == name or n.startswith(f"{name}-ft")]
        if not name.startswith("mtd@") or "-ft" in name or len(stages) < 2:
            continue
        lines += ["", f"**{name}** ({s['param_ratio']:.2f}x) against fine-tuning epochs: " + "; ".join(
            f"{t['finetune_epochs']} epochs {t['report_accuracy']:.2f}% (drop {ref - t['report_accuracy']:+.2f})"
            for _, t in stages) + "."]
    return lines


def _model_title(results: dict) -> str:
    """``VGG11`` / ``VGG16`` from the checkpoint's model name (results of earlier runs: VGG11)."""
    return results.get("model", "vgg11").upper()


def _epochs(name: str, step: dict, args: dict) -> str:
    """Fine-tuning epochs of a step (steps of earlier runs do not record them: the run's setting)."""
    return "" if name == "baseline" else str(step.get("finetune_epochs", args["finetune_epochs"]))


def _plot(results: dict, path: Path) -> None:
    plt = bu.pyplot()
    steps = results["steps"]
    if "baseline" not in steps:
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    styles = {"mtd": ("r*", 14), "cp-uniform": ("bs", 8), "tucker-uniform": ("g^", 8)}
    for name, s in steps.items():
        if "method" in s:
            marker, size = styles[s["method"]] if "-ft" not in name else ("m*", 14)
            ax.plot([s["param_ratio"]], [s["report_accuracy"]], marker, markersize=size,
                    label=f"{name} ({s.get('finetune_epochs', '?')} ep)")
    base, ref = _references(steps)
    ax.axhline(base, color="gray", lw=1, label="dense baseline")
    ax.axhline(ref - results["args"]["max_drop"], color="gray", lw=1, ls=":", label="best dense - budget")
    if "control" in steps:
        ax.axhline(steps["control"]["report_accuracy"], color="k", lw=1, ls="-.", label="dense control")
    thesis = THESIS_RATIOS.get(results.get("model", "vgg11"))
    if thesis:  # the thesis' point: its ratio at its bound (< 1 point below the dense model)
        ax.plot([thesis], [ref - 1.0], "o", mfc="none", mec="orange", markersize=12, mew=2,
                label=f"thesis: {thesis:g}x at < 1 point")
    ax.set_xscale("log")
    ax.set_xlabel("parameter compression (x, log)")
    ax.set_ylabel("accuracy on the report images (%)")
    ax.set_title(f"CIFAR-10 {_model_title(results)} width 1 ({results['machine']['cpu'][:40]}, "
                 f"{results['machine'].get('avx', '')})", fontsize=9)
    ax.legend(fontsize=8)
    bu.save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
