#!/usr/bin/env python
"""What a fine-tuning step and a forward-only pass cost, by precision and layout, and through
``mtd.train.finetune``'s defaults (bf16 + channels_last where the CPU has native bf16, the teacher bank).

Models: full-width CIFAR VGG16 / VGG11 from the shared checkpoints, and their compressed students at the plans
``mtd@37-ft8`` (39x) of ``cifar_cpu_full_vgg16.json`` and ``mtd@32`` (38x) of ``cifar_cpu_full_vgg11.json`` as #21
planned them (kept in ``results/finetune_speed_plans.json``),
decomposed layers on the ``torch`` backend as ``mtd.compress`` fine-tunes them, with random factors (timing
only). Batch 128, SGD (Nesterov, weight decay) step included, median of ``--steps`` steps after two warm-up
steps; variants of one model are timed one after another in one process.

Rows:
- the matrix: student / teacher / dense training step, student forward-only, in fp32 or bf16 autocast, NCHW or
  channels_last inputs (weights stay NCHW: ``mtd.utils.precision``), training steps on channels_last also with
  BatchNorm -> ReLU [-> pool] fused (``mtd.train.fused_activations``, opt-in with ``MTD_FUSED_TRAINING=1``);
- ``finetune``: ms per step of ``mtd.train.finetune`` distilling from the dense teacher over uint8 images
  through ``TensorDataLoader`` (augmentation and normalisation included), as it ran before this change (fp32,
  NCHW, online teacher) and as it runs now (``precision="auto"``, ``views=16``: the first fine-tune computes
  each view's teacher output once, a repeated fine-tune over the same views reuses them; repeated fine-tunes
  alternately with ``MTD_FUSED_TRAINING=1`` and ``=0``, 4 of each, medians: what the fused BatchNorm-ReLU saves;
  the other "now" rows run with it on);
- ``data``: ms per batch of the loader alone.

``--accuracy`` instead measures what the fast path costs in accuracy, paired: per seed the README main job's
quick baseline (VGG11 width 1/4, 3 epochs; 10,000 training images kept out of it) is compressed once to
``--ratio`` without fine-tuning, and copies of that one model are fine-tuned as the main job does (3 epochs, lr
0.06, distilled from the baseline) in each variant: fp32 with the teacher run on every batch (as before), bf16
likewise, bf16 with 16 views and the teacher bank, and that with BatchNorm-ReLU fused (the default where bf16 is
native when measured; the other variants run with ``MTD_FUSED_TRAINING=0``). Test accuracy (fp32, 10,000 images) of each;
rows are added to the same results file, step by step (a rerun skips finished rows).

    python benchmarks/finetune_speed.py [--steps 4] [--rounds 10] [--models vgg16,vgg11]
    python benchmarks/finetune_speed.py --accuracy [--seeds 0,1] [--ratio 8]
    python benchmarks/finetune_speed.py --render      # the .md again, with the quick_job*.json main-job rows
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_util as bu  # noqa: E402

# the students' plans (results/finetune_speed_plans.json: the #21 plans, kept apart from the results files that
# later runs replace) and the dense checkpoints they are built on
PLANS_FILE = Path(__file__).resolve().parent / "results" / "finetune_speed_plans.json"
CHECKPOINTS = {"vgg16": "vgg16-w1-cifar10.pt", "vgg11": "vgg11-w1-e30-cifar10.pt"}
# (precision, channels_last, fused): fused = BatchNorm -> ReLU [-> pool] as one op (mtd.train.fused_activations),
# which mtd.train runs on the CPU; it changes training steps only (a forward-only pass is in eval mode)
VARIANTS = (("fp32", False, False), ("fp32", True, False), ("fp32", True, True), ("bf16", False, False),
            ("bf16", True, False), ("bf16", True, True))
VARIANT_NAMES = ("fp32, NCHW", "fp32, channels_last", "fp32, channels_last, fused BN-ReLU", "bf16, NCHW",
                 "bf16 + channels_last", "bf16 + channels_last, fused BN-ReLU")
BATCH = 128


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vgg16,vgg11")
    p.add_argument("--checkpoints", default="../shared/models")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds of the fused / unfused comparison")
    p.add_argument("--finetune-batches", type=int, default=6, help="batches per timed fine-tune")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--accuracy", action="store_true", help="the paired accuracy comparison instead of timing")
    p.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--ratio", type=float, default=8.0)
    p.add_argument("--work", default="runs/finetune_accuracy", help="quick baselines, one per seed")
    p.add_argument("--render", action="store_true", help="only rewrite the .md from the .json (and quick_job*.json)")
    args = p.parse_args(argv)
    path = Path(args.out) / "finetune_speed.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    if args.render:
        write(previous, Path(args.out))
        print((Path(args.out) / "finetune_speed.md").read_text())
        return 0
    if args.accuracy:
        previous.setdefault("accuracy", {"machine": {**bu.machine_info(), "native_bf16": native()}, "rows": []})
        accuracy(args, previous, Path(args.out))
        print((Path(args.out) / "finetune_speed.md").read_text())
        return 0
    results = {"machine": {**bu.machine_info(), "native_bf16": native()}, "batch": BATCH, "rows": []}
    if "accuracy" in previous:
        results["accuracy"] = previous["accuracy"]
    for name in args.models.split(","):
        dense, student, ratio = build(name, args.checkpoints)
        results["rows"].append({"kind": "macs", "model": name, "ratio": macs_ratio(dense, student)})
        results["rows"] += matrix(name, dense, student, ratio, args.steps, args.rounds)
        results["rows"] += finetune_rows(name, dense, student, args.finetune_batches)
        write(results, Path(args.out))
    results["rows"] += data_rows(args.steps)
    write(results, Path(args.out))
    print((Path(args.out) / "finetune_speed.md").read_text())
    return 0


def native() -> bool:
    from mtd.utils.precision import native_bf16

    return native_bf16("cpu")


def build(name: str, checkpoints: str):
    """(dense model, student with the plan's layers at random factors, its parameter ratio)."""
    from mtd.layers import get_module, replace_module
    from mtd.models import load_model
    from mtd.planner.layer_factory import empty_layer

    plan, checkpoint = json.loads(PLANS_FILE.read_text())[name], CHECKPOINTS[name]
    dense = load_model(str(Path(checkpoints) / checkpoint))
    student = load_model(str(Path(checkpoints) / checkpoint))
    torch.manual_seed(0)
    for layer in plan["layers"]:
        if layer["method"] != "dense":
            new = empty_layer(get_module(student, layer["name"]), layer["method"], layer["ranks"])
            for w in new.parameters():
                if w.dim() > 1:
                    torch.nn.init.kaiming_normal_(w)
            replace_module(student, layer["name"], new)
    return dense, student, float(plan["param_ratio"])


@torch.no_grad()
def macs_ratio(dense, student) -> float:
    """Forward FLOPs (convolutions and the linear head, ``torch.utils.flop_counter``) of ``dense`` over
    ``student``'s, for one image."""
    from torch.utils.flop_counter import FlopCounterMode

    def flops(model) -> int:
        model.eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.randn(1, 3, 32, 32))
        return counter.get_total_flops()

    return flops(dense) / flops(student)


def median_ms(fn, steps: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def matrix(name: str, dense, student, ratio: float, steps: int, rounds: int) -> list[dict]:
    """ms per step of each row in each variant: the median of ``steps`` steps; a training step on channels_last
    with and without the fused BatchNorm-ReLU instead in ``rounds`` interleaved rounds of two steps each (the
    median round), since the two differ by less than this host's drift between one run and the next."""
    from mtd.report.latency import interleaved_times
    from mtd.train.fused_activations import fused_bn_relu
    from mtd.utils.precision import Precision

    x = torch.randn(BATCH, 3, 32, 32)
    y = torch.randint(0, 10, (BATCH,))
    rows = []
    for what, model, mode in ((f"{name} {ratio:.0f}x student, training step", student, "train"),
                              (f"{name} dense teacher, forward", dense, "forward"),
                              (f"{name} dense, training step", dense, "train"),
                              (f"{name} {ratio:.0f}x student, forward only (eval)", student, "forward")):
        if name == "vgg11" and what.startswith("vgg11 dense, training"):
            continue  # the reference step is VGG16's
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)
        for precision, channels_last, fused in VARIANTS:
            if fused:
                continue  # measured beside its unfused variant
            prec = Precision(torch.bfloat16 if precision == "bf16" else None, channels_last, "cpu")
            xx = prec.inputs(x)

            def train_step():
                model.train()
                with prec.autocast():
                    loss = torch.nn.functional.cross_entropy(model(xx).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            def fused_step():
                with fused_bn_relu(model):
                    train_step()

            @torch.no_grad()
            def forward():
                model.eval()
                with prec.autocast():
                    model(xx)

            if mode == "train" and channels_last:
                times = interleaved_times({"plain": train_step, "fused": fused_step}, rounds, 2)
                measured = {False: statistics.median(times["plain"]), True: statistics.median(times["fused"])}
            else:
                measured = {False: median_ms(train_step if mode == "train" else forward, steps)}
            for is_fused, ms in measured.items():
                rows.append({"kind": "matrix", "row": what, "precision": precision, "channels_last": channels_last,
                             "fused": is_fused, "ms": ms})
                print(f"{what:50s} {precision} {'channels_last' if channels_last else 'NCHW':13s} "
                      f"{'fused' if is_fused else '':5s} {ms:8.1f} ms", flush=True)
    return rows


def finetune_rows(name: str, dense, student, batches: int) -> list[dict]:
    """ms per step of ``mtd.train.finetune`` over uint8 images: before (fp32, NCHW, online teacher) and now."""
    from mtd.data import TensorDataLoader
    from mtd.train import finetune
    from mtd.train.teacher_bank import TeacherBank

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (BATCH * batches, 32, 32, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (BATCH * batches,), generator=g)

    def run(precision: str, views, teacher, fused: bool = True) -> float:
        loader = TensorDataLoader(images, labels, BATCH, train=True, views=views)
        with mock.patch.dict(os.environ, {"MTD_FUSED_TRAINING": "1" if fused else "0"}):
            history = finetune(student, loader, epochs=1, lr=1e-3, teacher=teacher, progress=False,
                               precision=precision)
        return 1e3 * history[-1]["seconds"] / len(loader)

    rows = []
    run("fp32", None, dense)  # warm-up of both paths (first-call allocations, oneDNN primitives)
    run("auto", 16, TeacherBank(dense, len(labels) * 16))
    before = run("fp32", None, dense, fused=False)
    bank = TeacherBank(dense, len(labels) * 16)  # the bank mtd.compress keeps across its fine-tunes
    first = run("auto", 16, bank)
    # fused / unfused alternately (their difference is within this host's drift between single runs)
    pairs = [(run("auto", 16, bank), run("auto", 16, bank, fused=False)) for _ in range(4)]
    repeated, unfused = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    student_only = run("auto", 16, None)
    for what, ms in (("before: fp32, NCHW, online teacher", before), ("now: first fine-tune", first),
                     ("now: repeated fine-tune (bank hits)", repeated),
                     ("now: repeated, BN-ReLU not fused (MTD_FUSED_TRAINING=0)", unfused),
                     ("now: no teacher", student_only)):
        rows.append({"kind": "finetune", "row": f"{name} student, distilled fine-tuning step", "variant": what,
                     "ms": ms, "bank_hits": bank.hits, "bank_misses": bank.misses})
        print(f"{name} finetune {what:40s} {ms:8.1f} ms", flush=True)
    return rows


def data_rows(steps: int) -> list[dict]:
    """The loader alone: gather, crop + flip, normalise a batch of 128 CIFAR-sized uint8 images."""
    from mtd.data import TensorDataLoader

    images = torch.randint(0, 256, (50_000, 32, 32, 3), dtype=torch.uint8)
    labels = torch.randint(0, 10, (50_000,))
    rows = []
    for views in (None, 16):
        loader = TensorDataLoader(images, labels, BATCH, train=True, views=views)
        it = iter(loader)
        ms = median_ms(lambda: next(it), steps * 5)
        rows.append({"kind": "data", "row": "loader, one batch", "variant": f"views={views}", "ms": ms})
        print(f"data views={views}: {ms:.2f} ms a batch", flush=True)
    return rows


ACCURACY_EPOCHS = 3  # the main job's epochs a round when these rows were measured
# variant -> (precision, views, BatchNorm-ReLU fused)
FT_VARIANTS = {"fp32, online teacher (before)": ("fp32", None, False), "bf16, online teacher": ("bf16", None, False),
               "bf16, 16 views + teacher bank": ("bf16", 16, False),
               "bf16, 16 views + teacher bank, fused BN-ReLU (now)": ("bf16", 16, True)}


def accuracy(args, results: dict, out: Path) -> None:
    """Paired test accuracies of the fine-tuning variants (``FT_VARIANTS``) from one compressed model per seed."""
    import copy

    import _experiment as ex
    from mtd.commands.compress_cmd import QUICK_CALIB_IMAGES, QUICK_FINETUNE_LR, QUICK_VAL_IMAGES
    from mtd.commands.train_cmd import DEFAULT_MODEL, DEFAULT_WIDTH, train_baseline
    from mtd.data import TensorDataLoader
    from mtd.models import load_model
    from mtd.planner import compress
    from mtd.planner.layer_factory import set_backend
    from mtd.train.finetune import cp_factor_lr_scales, finetune

    rows = results["accuracy"]["rows"]
    done = {(r["seed"], r["variant"]) for r in rows}
    arrays = bu.cifar_arrays(args.data, None, 0)
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        if all((seed, v) in done for v in FT_VARIANTS):
            continue
        train, val = arrays.split_validation(QUICK_VAL_IMAGES, seed)
        ckpt = Path(args.work) / f"baseline-seed{seed}.pt"
        if ckpt.is_file():
            baseline = load_model(str(ckpt)).eval()
        else:
            baseline, _, _ = train_baseline(train, DEFAULT_MODEL, DEFAULT_WIDTH, 3, 0.1, 128, torch.device("cpu"),
                                            seed, False, str(ckpt))
            baseline.eval()
        test = TensorDataLoader(arrays.test_x, arrays.test_y, 500, train=False)
        base_acc = ex.test_accuracy(baseline, test)
        # one compressed model per seed (no fine-tuning): every variant starts from the same weights
        model, plan = compress(baseline, train, val_data=val, target_ratio=args.ratio, max_drop=None, grid="small",
                               calib_size=QUICK_CALIB_IMAGES, finetune_epochs=0, seed=seed, progress=False)
        set_backend(model, "torch")
        for variant, (precision, views, fused) in FT_VARIANTS.items():
            if (seed, variant) in done:
                continue
            student = copy.deepcopy(model)
            loader = TensorDataLoader(train.train_x, train.train_y, 128, train=True, seed=seed, views=views)
            t0 = time.perf_counter()
            with mock.patch.dict(os.environ, {"MTD_FUSED_TRAINING": "1" if fused else "0"}):
                finetune(student, loader, epochs=ACCURACY_EPOCHS, lr=QUICK_FINETUNE_LR, teacher=baseline,
                         lr_scales=cp_factor_lr_scales(student, 0.5), seed=seed, progress=False,
                         precision=precision)
            seconds = time.perf_counter() - t0
            acc = ex.test_accuracy(student, test)
            rows.append({"seed": seed, "variant": variant, "ratio": plan.results["model_param_ratio"],
                         "baseline_accuracy": base_acc, "test_accuracy": acc, "finetune_seconds": seconds,
                         "epochs": ACCURACY_EPOCHS})
            print(f"seed {seed} {variant:32s} {plan.results['model_param_ratio']:.2f}x  test {acc:.2f}% "
                  f"(baseline {base_acc:.2f}%)  {seconds:.0f} s", flush=True)
            write(results, out)


def write(results: dict, out: Path) -> None:
    from mtd.utils import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "finetune_speed.json", "w") as f:
        json.dump(results, f, indent=1)
    main_jobs = "".join(main_job_lines(json.loads(p.read_text()), p.name)
                        for p in sorted(out.glob("quick_job*.json")))
    with atomic_write(out / "finetune_speed.md", "w") as f:
        f.write(markdown(results) + main_jobs)


def main_job_lines(quick: dict, name: str) -> str:
    """What the speed bought: the README main job's rows (``benchmarks/quick_job.py``, its own results files)."""
    m, extra = quick["machine"], " ".join(quick["args"]["extra"])
    lines = ["", f"## The README's main job with the fast path ({m['cpu']}, {m['avx']}; from `{name}`, "
             f"`python benchmarks/quick_job.py --seeds 0,1,2{' -- ' + extra if extra else ''}`)", "",
             "| seed | result | held-out drop (+margin) | test drop | epochs a round | rounds | wall time |",
             "|---|---|---|---|---|---|---|"]
    for step in quick["steps"].values():
        v = step.get("verification") or {}
        result = f"{step['ratio']:.2f}x within budget" if step["within_budget"] else "budget not met (1.00x)"
        held = f"{v['drop']:+.2f} (+{v['margin']:.2f})" if v else "-"
        lines.append(f"| {step['seed']} | {result} | {held} | {step['test']['drop']:+.2f} | {step['finetune_epochs']} "
                     f"| {len(step['rounds'])} | {step['wall_seconds'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def markdown(results: dict) -> str:
    if "machine" not in results:  # accuracy rows only so far
        results = {**results, "machine": results["accuracy"]["machine"], "batch": BATCH, "rows": []}
    m = results["machine"]
    lines = [f"# Fine-tuning speed ({m['cpu']}, {m['avx']}, native bf16: {m['native_bf16']}, {m['threads']} "
             f"threads, torch {m['torch']}; batch {results['batch']}; `python benchmarks/finetune_speed.py`)", "",
             "| ms per step | " + " | ".join(VARIANT_NAMES) + " |", "|---|" + "---|" * len(VARIANTS)]
    matrix_rows: dict[str, dict] = {}
    for r in results.get("rows", []):
        if r["kind"] == "matrix":
            key = (r["precision"], r["channels_last"], r.get("fused", False))
            matrix_rows.setdefault(r["row"], {})[key] = r["ms"]
    for row, cells in matrix_rows.items():
        lines.append(f"| {row} | " + " | ".join(f"{cells[v]:.0f}" if v in cells else "" for v in VARIANTS) + " |")
    if any(v[2] for cells in matrix_rows.values() for v in cells):
        lines += ["", "Each fused column and the one to its left: medians of interleaved rounds (two steps each, "
                  "one round of each in turn); the other cells: medians of single steps."]
    best = VARIANTS[-1]
    for r in results.get("rows", []):
        if r["kind"] != "macs":
            continue
        student = next((c.get(best) for row, c in matrix_rows.items()
                        if row.startswith(f"{r['model']} ") and "student, training" in row), None)
        dense = matrix_rows.get(f"{r['model']} dense, training step", {}).get(best)
        if student and dense:
            lines.append(f"{r['model']}: {r['ratio']:.1f}x fewer MACs than the dense model; its "
                         f"{VARIANT_NAMES[-1]} training step is {student / (dense / r['ratio']):.2f}x its "
                         f"MAC-proportional share of the dense step in that variant ({student:.0f} ms against "
                         f"{dense:.0f} / {r['ratio']:.1f} ms).")
    dense_step = matrix_rows.get("vgg16 dense, training step", {}).get(("fp32", False, False))
    ft = [r for r in results["rows"] if r["kind"] == "finetune"]
    if ft:
        lines += ["", "`mtd.train.finetune` (augmentation, normalisation, distillation, SGD step; the \"now\" rows with "
                  "the fused BatchNorm-ReLU, `MTD_FUSED_TRAINING=1`, except the one marked not fused, which is the "
                  "default):", "",
                  "| model | variant | ms per step | x the fp32 NCHW dense VGG16 training step | s per epoch of 50,000 |",
                  "|---|---|---|---|---|"]
        for r in ft:
            share = f"{r['ms'] / dense_step:.3f}" if dense_step else ""
            lines.append(f"| {r['row'].split()[0]} | {r['variant']} | {r['ms']:.0f} | {share} | "
                         f"{r['ms'] * 50_000 / results['batch'] / 1e3:.0f} |")
    data = [r for r in results.get("rows", []) if r["kind"] == "data"]
    if data:
        lines += ["", "Data path alone: " + ", ".join(f"{r['variant']} {r['ms']:.2f} ms a batch" for r in data)]
    acc = results.get("accuracy", {}).get("rows", [])
    if acc:
        m = results["accuracy"]["machine"]
        lines += ["", f"## Accuracy of the fast path (paired; {m['cpu']}, native bf16: {m['native_bf16']}; "
                  "`python benchmarks/finetune_speed.py --accuracy`)", "",
                  "Test accuracy (%, fp32, 10,000 images) after the same fine-tuning of the same compressed model:",
                  "", "| seed | ratio | baseline | " + " | ".join(FT_VARIANTS) + " |",
                  "|---|---|---|" + "---|" * len(FT_VARIANTS)]
        for seed in sorted({r["seed"] for r in acc}):
            cells = {r["variant"]: r for r in acc if r["seed"] == seed}
            first = next(iter(cells.values()))
            lines.append(f"| {seed} | {first['ratio']:.2f}x | {first['baseline_accuracy']:.2f} | " + " | ".join(
                f"{cells[v]['test_accuracy']:.2f} ({cells[v]['finetune_seconds']:.0f} s)" if v in cells else ""
                for v in FT_VARIANTS) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
