"""End-to-end CPU benchmark: full-width CIFAR VGG16 compressed ~31x, mtd against dense and torch.compile.

Every conv but the first is replaced by CP3, by Tucker-2, or by a CP/Tucker mix (CP on even, Tucker
on odd conv indices), at the planner's uniform ranks for 1/32 of each layer's parameters (random
weights: speed does not depend on them). Each ``--plan-from FILE[:STEP]`` (a ``cifar_cpu_full*.json``
results file) adds the model ``plan-<model>``: that run's compressed VGG, rebuilt from the per-layer methods
and ranks of its STEP (default: its most compressed mtd step; random weights of the planned shapes), beside
its own dense VGG.  Channels_last, under torch.no_grad(), batch 1 and 64.
For each model, side by side in one process and interleaved (round-robin over the variants, so
load changes on a shared machine hit all of them alike):

  dense                 the uncompressed VGG16
  compile(dense)        torch.compile of it
  chain                 the compressed model as plain nn.Conv2d chains (backend="torch")
  compile(chain)        torch.compile of that
  mtd                   the compressed model on torch.ops.mtd (backend="fused")
  compile(mtd)          torch.compile of that
  mtd+prepare           mtd.prepare_inference(mtd model, rank_space=False): BatchNorm folded, ReLU in the
                        op epilogue, one fused op per layer
  compile(mtd+prepare)  torch.compile of that
  mtd+rank              mtd.prepare_inference(mtd model): the same, then regrouped into rank space (only
                        rank-R maps reach memory): the whole run as one torch.ops.mtd.rank_run call on factors
                        packed once, one rank_bridge call per layer, or the per-layer ops, whichever its first
                        call measured fastest
  compile(mtd+rank)     torch.compile of that
  onnxruntime           the file mtd.export_onnx writes for the compressed model (standard Conv chains,
                        BatchNorm folded; static batch), run by onnxruntime (all graph optimisations, the
                        same threads) -- what a user who exports would run
  openvino              the same file on OpenVINO's CPU plugin (f32 precision hint, latency hint, the same
                        threads)

The runtimes are optional (``pip install .[bench]``); without them their columns are left out.
The time of a variant is the median over rounds of the mean of a few calls, each round's calls after a 20 ms pause
and one untimed call (mtd.report.latency.interleaved_times' settle_s: no variant is billed for the threads the
previous one left spinning).  Writes
benchmarks/results/e2e_cpu.{json,md} (machine, torch, threads and the load average recorded).

    python benchmarks/e2e_cpu.py            # full run (~10 min on 2 cores, mostly torch.compile)
    python benchmarks/e2e_cpu.py --quick    # smoke run: CP only, batch 1, few rounds, no compile
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import statistics
import sys
import tempfile
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench_util as bu  # noqa: E402

import mtd  # noqa: E402
from mtd.layers import CPConv2d, TuckerConv2d, get_module, prepare_inference, replace_module  # noqa: E402
from mtd.planner.layer_factory import empty_layer  # noqa: E402
from mtd.planner.baselines import uniform_cp_rank, uniform_tucker_ranks  # noqa: E402
from mtd.report.latency import RUNTIMES, SETTLE_S, interleaved_times, runtime_sessions, runtime_versions  # noqa: E402

RATIO = 32  # each compressed conv keeps 1/RATIO of its parameters
KINDS = ("cp", "tucker", "mix")  # and "plan-<model>" for each --plan-from
VARIANTS = ("dense", "compile(dense)", "chain", "compile(chain)", "mtd", "compile(mtd)", "mtd+prepare",
            "compile(mtd+prepare)", "mtd+rank", "compile(mtd+rank)", "onnxruntime", "openvino")
MTD_VARIANTS = ("mtd", "compile(mtd)", "mtd+prepare", "compile(mtd+prepare)", "mtd+rank", "compile(mtd+rank)")


def compressed_layer(conv: nn.Conv2d, method: str, backend: str) -> nn.Module:
    """A randomly initialised CP3 / Tucker-2 layer with ``conv``'s geometry at 1/RATIO of its parameters."""
    t, s, kh, kw = conv.weight.shape
    geo = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None,
               backend=backend)
    if method == "cp":
        layer = CPConv2d(s, t, (kh, kw), uniform_cp_rank(t, s, kh, kw, RATIO), **geo)
    else:
        layer = TuckerConv2d(s, t, (kh, kw), uniform_tucker_ranks(t, s, kh, kw, RATIO), **geo)
    _variance_preserving(layer)
    return layer


def _variance_preserving(layer: nn.Module) -> None:
    """Factors with std 1/sqrt(fan_in), the last one with ReLU gain: nn.Conv2d's default init shrinks
    activations ~3x per factor, so after a few layers they would be denormal floats, which are slow on
    x86 and would distort every timing."""
    factors = [m for m in layer.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for i, f in enumerate(factors):
        fan_in = f.weight[0].numel()
        gain = 2.0 if i == len(factors) - 1 else 1.0
        nn.init.normal_(f.weight, std=(gain / fan_in) ** 0.5)


def compress(dense: nn.Module, kind: str, backend: str, plan: Optional[List[dict]] = None) -> nn.Module:
    """``dense`` with every conv but the first replaced (same random factors for every backend), or,
    for a ``plan-*`` kind, every layer of ``plan`` ({name, method, ranks}) as planned."""
    model = copy.deepcopy(dense)
    if kind.startswith("plan"):
        for layer in plan:
            if layer["method"] != "dense":
                torch.manual_seed(len(layer["name"]))
                new = empty_layer(get_module(model, layer["name"]), layer["method"], layer["ranks"], backend)
                _variance_preserving(new)
                replace_module(model, layer["name"], new)
        return model
    convs = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    for n, i in enumerate(convs[1:], start=1):
        method = kind if kind != "mix" else ("cp" if n % 2 == 0 else "tucker")
        torch.manual_seed(i)
        model.features[i] = compressed_layer(model.features[i], method, backend)
    return model


def conv_params(model: nn.Module) -> int:
    return sum(p.numel() for name, p in model.features.named_parameters() if p.dim() == 4)


def load_average() -> List[float]:
    return [round(v, 2) for v in os.getloadavg()]


def load_plan(path: str, step: Optional[str]) -> tuple:
    """The per-layer plan ({name, method, ranks}) of a cifar_cpu_full*.json step, and what it came from."""
    results = json.loads(open(path).read())
    steps = {k: v for k, v in results["steps"].items() if v.get("method") == "mtd" and "layers" in v}
    if not steps:
        raise SystemExit(f"{path} has no finished mtd step with a plan")
    step = step or max(steps, key=lambda k: steps[k]["param_ratio"])
    if step not in steps:
        raise SystemExit(f"{path} has no mtd step {step!r}; it has {sorted(steps)}")
    layers = [{k: layer[k] for k in ("name", "method", "ranks")} for layer in steps[step]["layers"]]
    info = {"file": os.path.basename(path), "step": step, "model": results.get("model", "vgg11"),
            "param_ratio": round(steps[step]["param_ratio"], 2)}
    return layers, info


def build_variants(kind: str, dense: nn.Module, compiled_dense, use_compile: bool,
                   plan: Optional[List[dict]] = None) -> Dict[str, Callable]:
    chain = compress(dense, kind, "torch", plan).eval().to(memory_format=torch.channels_last)
    fused = compress(dense, kind, "fused", plan).eval().to(memory_format=torch.channels_last)
    prepared = prepare_inference(fused, rank_space=False)
    rank = prepare_inference(fused)
    variants = {"dense": dense, "chain": chain, "mtd": fused, "mtd+prepare": prepared, "mtd+rank": rank}
    if use_compile:
        variants.update({"compile(dense)": compiled_dense, "compile(chain)": torch.compile(chain),
                         "compile(mtd)": torch.compile(fused), "compile(mtd+prepare)": torch.compile(prepared),
                         "compile(mtd+rank)": torch.compile(rank)})
    return variants


def runtime_variants(model: nn.Module, x: torch.Tensor, folder: str, threads: int) -> Dict[str, Callable]:
    """onnxruntime and OpenVINO (those installed) running ``model`` exported by ``mtd.export_onnx`` at ``x``'s
    shape (:func:`mtd.report.latency.runtime_sessions`); each callable ignores its argument."""
    return {name: (lambda _x, run=run: run()) for name, run in runtime_sessions(model, x, folder, threads).items()}


def measure(variants: Dict[str, Callable], x: torch.Tensor, rounds: int, calls: int) -> Dict[str, List[float]]:
    """Per variant, the ms per call of each round; the rounds interleave the variants."""
    return interleaved_times({name: functools.partial(fn, x) for name, fn in variants.items()}, rounds, calls,
                             settle_s=SETTLE_S)


def check_outputs(variants: Dict[str, Callable], x: torch.Tensor) -> Dict[str, float]:
    """Relative difference of each compressed variant to the plain chain (same factors)."""
    ref = variants["chain"](x)
    features = variants["chain"].features(x)
    if not features.abs().max() > 1e-6:
        raise RuntimeError("the random model's features vanished: the timings would not be representative")
    return {name: float((fn(x) - ref).norm() / ref.norm()) for name, fn in variants.items()
            if name not in ("dense", "compile(dense)", "chain")}


def summarise(rows: List[dict]) -> List[dict]:
    out = []
    for r in rows:
        med = r["median_ms"]
        best_mtd = min(med[v] for v in MTD_VARIANTS if v in med)
        entry = {"kind": r["kind"], "batch": r["batch"], "best_mtd_ms": round(best_mtd, 3),
                 "best_mtd": min((v for v in MTD_VARIANTS if v in med), key=lambda v: med[v]),
                 "vs_dense": round(med["dense"] / best_mtd, 2), "vs_chain": round(med["chain"] / best_mtd, 2)}
        if "compile(chain)" in med:
            entry["vs_compile_chain"] = round(med["compile(chain)"] / best_mtd, 2)
            entry["vs_compile_dense"] = round(med["compile(dense)"] / best_mtd, 2)
        runtimes = [v for v in RUNTIMES if v in med]
        if runtimes:  # against the faster deployment runtime
            fastest = min(runtimes, key=lambda v: med[v])
            entry.update(best_runtime=fastest, vs_best_runtime=round(med[fastest] / best_mtd, 2))
            # round by round (the two timed within a second of each other): this VM's speed drifts between rounds
            pairs = list(zip(r["times_ms"][entry["best_mtd"]], r["times_ms"][fastest]))
            entry.update(rounds_mtd_faster=sum(m < o for m, o in pairs), rounds=len(pairs),
                         per_round_ratio_median=round(statistics.median(o / m for m, o in pairs), 2))
        out.append(entry)
    return out


def write_markdown(path: str, meta: dict, rows: List[dict], summary: List[dict]) -> None:
    names = [v for v in VARIANTS if v in rows[0]["median_ms"]]
    plans = {r["kind"]: r["plan"] for r in rows if "plan" in r}
    lines = [f"# VGG16 (CIFAR, width 1) compressed ~{meta['param_ratio']}x on CPU", "",
             *[f"Model `{k}`: {p['model'].upper()} width 1 as step `{p['step']}` of `{p['file']}` planned it "
               f"({p['param_ratio']}x fewer parameters in all), beside its own dense model.\n" for k, p in plans.items()],
             f"Machine: {meta['machine']['cpu']} ({meta['machine'].get('avx', '?')}), {meta['machine']['threads']} threads, torch "
             f"{meta['machine']['torch']}" + "".join(f", {k} {v}" for k, v in meta.get("runtimes", {}).items()) +
             f"; load average before/after: {meta['load_before']} / {meta['load_after']}. "
             f"Median over {meta['rounds']} interleaved rounds of {meta['calls']} calls, each after a "
             f"{meta.get('settle_ms', 0):g} ms pause and one untimed call (ms per batch).", "",
             "| model | batch | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['batch']} | " + " | ".join(f"{r['median_ms'][n]:.2f}" for n in names) + " |")
    lines += ["", "Best mtd variant against the baselines (x = times faster):", "",
              "| model | batch | best mtd | vs the faster runtime | rounds mtd faster (per-round ratio, median) "
              "| vs compile(chain) | vs dense | vs compile(dense) | vs chain |", "|---|---|---|---|---|---|---|---|---|"]
    def ratio(s: dict, key: str) -> str:
        return f"{s[key]:.2f}" if key in s else "—"  # not measured (--no-compile, no runtimes)

    for s in summary:
        runtime = f"{s['vs_best_runtime']:.2f} ({s['best_runtime']})" if "best_runtime" in s else "—"
        rounds = (f"{s['rounds_mtd_faster']} of {s['rounds']} ({s['per_round_ratio_median']:.2f})"
                  if "rounds" in s else "—")
        lines.append(f"| {s['kind']} | {s['batch']} | {s['best_mtd']} {s['best_mtd_ms']:.2f} ms | {runtime} | {rounds} | "
                     f"{ratio(s, 'vs_compile_chain')} | {s['vs_dense']:.2f} | {ratio(s, 'vs_compile_dense')} | "
                     f"{s['vs_chain']:.2f} |")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: CP only, batch 1, 2 rounds, no torch.compile")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--plan-from", nargs="+", default=[], metavar="FILE[:STEP]",
                    help="cifar_cpu_full*.json results files: each adds the model 'plan-<model>' (its STEP; default "
                         "the most compressed mtd step)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--no-runtimes", action="store_true", help="skip onnxruntime and OpenVINO")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "e2e_cpu"),
                    help="output prefix; writes <out>.json and <out>.md")
    args = ap.parse_args()
    if args.quick:
        args.kinds, args.batches, args.rounds, args.no_compile = ["cp"], [1], 2, True
    if not mtd.kernels.extension_available():
        sys.exit(f"mtd_kernels._C is not built ({mtd.kernels.extension_error()}); nothing fused to measure")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # All models share VGG.forward's code object: each compiled model is one more Dynamo entry for
    # it, and past the default limit (8) Dynamo would silently run the later ones eagerly.
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.accumulated_recompile_limit = 256
    load_before = load_average()
    print(f"machine: {bu.machine_info()}  load average: {load_before}", flush=True)
    torch.manual_seed(0)
    dense = mtd.models.build_model("vgg16", width=1).eval().to(memory_format=torch.channels_last)
    compiled_dense = None if args.no_compile else torch.compile(dense)
    ratio = round(conv_params(dense) / conv_params(compress(dense, "cp", "torch")), 1)
    plans = {}  # kind -> (layers, info)
    for spec in args.plan_from:
        path, _, step = spec.partition(":")
        layers, info = load_plan(path, step or None)
        plans[f"plan-{info['model']}"] = (layers, info)
        print(f"plan: {info}", flush=True)
    args.kinds = [*args.kinds, *plans]
    rows: List[dict] = []
    with torch.no_grad():
        for kind in args.kinds:
            plan, plan_info = plans.get(kind, (None, None))
            if plan is not None:  # the planned model beside its own dense architecture
                torch.manual_seed(0)
                dense = mtd.models.build_model(plan_info["model"], width=1).eval().to(
                    memory_format=torch.channels_last)
                compiled_dense = None if args.no_compile else torch.compile(dense)
            built = build_variants(kind, dense, compiled_dense, not args.no_compile, plan)
            kind_ratio = round(conv_params(dense) / conv_params(built["chain"]), 1)
            for batch in args.batches:
                x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
                variants = dict(built)
                if not args.no_runtimes:
                    with tempfile.TemporaryDirectory() as folder:  # the runtimes have read the file
                        variants.update(runtime_variants(built["mtd"], x, folder, torch.get_num_threads()))
                variants = {name: variants[name] for name in VARIANTS if name in variants}
                calls = 5 if batch == 1 else 1
                rel = check_outputs(variants, x)
                times = measure(variants, x, args.rounds, calls)
                med = {name: statistics.median(ts) for name, ts in times.items()}
                rows.append({"kind": kind, "batch": batch, "conv_param_ratio": kind_ratio,
                             **({"plan": plan_info} if plan is not None else {}),
                             "median_ms": {k: round(v, 3) for k, v in med.items()},
                             "times_ms": {k: [round(t, 3) for t in v] for k, v in times.items()},
                             "rel_diff_vs_chain": {k: float(f"{v:.2e}") for k, v in rel.items()}})
                print(f"{kind:<11} b{batch:<3} " + "  ".join(f"{n} {med[n]:.2f}" for n in variants), flush=True)
                write_results(args.out, args, ratio, load_before, rows)
    for entry in summarise(rows):
        print(entry)
    print(f"wrote {args.out}.json and {args.out}.md")


def write_results(out: str, args, ratio: float, load_before: List[float], rows: List[dict]) -> None:
    """(Re)write both result files; called after every measured model, so a cut-short run leaves them."""
    summary = summarise(rows)
    meta = {"machine": bu.machine_info(), "load_before": load_before, "load_after": load_average(),
            "param_ratio": ratio, "rounds": args.rounds, "calls": "5 (batch 1) / 1 (batch 64)",
            "settle_ms": SETTLE_S * 1e3,
            "mtd_cpu_path": os.environ.get("MTD_CPU_PATH", "auto"), "quick": args.quick, "runtimes": runtime_versions()}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".json.tmp"
    with open(tmp, "w") as f:
        json.dump({**meta, "rows": rows, "summary": summary}, f, indent=1)
    os.replace(tmp, out + ".json")
    write_markdown(out + ".md", meta, rows, summary)


if __name__ == "__main__":
    main()
