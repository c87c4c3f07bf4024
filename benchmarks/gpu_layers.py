"""GPU benchmark: fused CP3 / Tucker-2 kernels vs dense cuDNN and the unfused chain, CIFAR VGG16.

For every 3x3 conv of CIFAR VGG16 (32x32 input), at 1/8 of the dense parameters (and, with
``--plan``, at the ranks of a plan JSON), batch 1 / 32 / 256, fp16 and bf16, it times
  dense     F.conv2d with the dense weight (cuDNN, channels_last)
  eager     the unfused chain of three F.conv2d calls (+ bias + ReLU) in eager PyTorch
  compiled  the same chain under torch.compile(mode="max-autotune") (a second pass, budget allowing)
  triton    torch.ops.mtd.<op> with the Triton backend
  cuda      torch.ops.mtd.<op> with the hand-written CUDA backend (when the extension has it)
Each kernel is first checked against an fp32 chain (max abs and relative error in the row).
Median times come from ``triton.testing.do_bench``; GB/s counts input + output + weights once;
``frac_copy_bw`` divides that by a device-to-device copy measured in the same run; TFLOP/s uses each
variant's own FLOP count. Then end-to-end VGG16 latency (batch 1, CUDA graphs) and throughput
(batch 256) for dense vs compressed (each conv replaced by the fused op with random factors), and the
model of ``e2e_cpu.py`` (1/32, BatchNorm folded) with one fused op per layer beside the same model
regrouped into rank space (``torch.ops.mtd.rank_bridge``, Triton).

Writes ``gpu_layers.csv`` (appended row by row, so a timeout keeps what was measured),
``gpu_layers.json`` (rows + metadata + summary) under ``--out``. ``--dry-run`` prints the shapes and
ranks without touching a GPU.

    python benchmarks/gpu_layers.py --quick --out /tmp/bench --time-budget 120
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from mtd.planner.baselines import uniform_cp_rank, uniform_tucker_ranks
from mtd.utils import atomic_write

VGG16_CFG: Sequence = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
BATCHES = (1, 32, 256)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
METHODS = ("cp", "tucker")
OP_OF = {"cp": "cp_conv2d", "tucker": "tucker_conv2d"}
FUSED_BACKENDS = ("triton", "cuda")
COMPRESSION = 8  # compressed layers keep 1/COMPRESSION of the dense weight's parameters
QUICK_LAYERS = (1, 4, 7, 10, 12)  # one conv per resolution
REL_TOL = 5e-2  # fp16/bf16 outputs vs the fp32 chain, relative to max |reference|


# ---------------------------------------------------------------- shapes and ranks (no GPU needed)
@dataclass(frozen=True)
class ConvShape:
    index: int  # position among the convs (0-based)
    c_in: int
    c_out: int
    hw: int  # input height = width
    k: int = 3
    padding: int = 1


@dataclass(frozen=True)
class Case:
    """One compressed layer: which conv, which method, which ranks, and where they came from."""

    conv: ConvShape
    method: str  # "cp" or "tucker"
    ranks: Tuple[int, ...]  # cp: (R,), tucker: (R1, R2)
    source: str  # "1/8" or the plan file name

    def params(self) -> int:
        s, t, k = self.conv.c_in, self.conv.c_out, self.conv.k
        if self.method == "cp":
            (r,) = self.ranks
            return r * (s + k * k + t)
        r1, r2 = self.ranks
        return r1 * s + r1 * r2 * k * k + r2 * t

    def key(self) -> tuple:
        """Layers with the same key have identical work: they are measured once."""
        c = self.conv
        return (self.method, self.ranks, c.c_in, c.c_out, c.hw, c.k, c.padding)


def vgg16_convs(cfg: Sequence = VGG16_CFG, hw: int = 32) -> List[ConvShape]:
    convs, c_in = [], 3
    for item in cfg:
        if item == "M":
            hw //= 2
        else:
            convs.append(ConvShape(len(convs), c_in, int(item), hw))
            c_in = int(item)
    return convs


def cp_rank(conv: ConvShape, compression: int = COMPRESSION) -> int:
    """The planner's uniform CP rule: the largest R keeping dense / compression parameters."""
    return uniform_cp_rank(conv.c_out, conv.c_in, conv.k, conv.k, compression)


def tucker_ranks(conv: ConvShape, compression: int = COMPRESSION) -> Tuple[int, int]:
    """The planner's uniform Tucker-2 rule: (R1, R2) = a * (S, T) keeping dense / compression parameters."""
    return uniform_tucker_ranks(conv.c_out, conv.c_in, conv.k, conv.k, compression)


def plan_cases(path: Path, convs: List[ConvShape]) -> List[Case]:
    """Cases from a plan JSON as ``mtd.planner.Plan.save`` writes it: ``{"layers": [{"name", "kind",
    "method", "ranks"}, ...]}``. The k-th ``kind == "conv"`` entry is the k-th conv (an explicit
    ``"index"`` wins); only ``cp`` and ``tucker`` layers become cases (dense / cp4 / svd are skipped)."""
    data = json.loads(path.read_text())
    entries = data.get("layers", []) if isinstance(data, dict) else data
    conv_entries = [e for e in entries if isinstance(e, dict) and e.get("kind", "conv") == "conv"]
    cases = []
    for position, e in enumerate(conv_entries):
        method = {"cp3": "cp", "tucker2": "tucker"}.get(str(e.get("method", "")).lower(), str(e.get("method")))
        idx = e.get("index", position)
        if method not in METHODS or not isinstance(idx, int) or not 0 <= idx < len(convs):
            continue
        ranks = e.get("ranks", e.get("rank"))
        ranks = tuple(int(r) for r in (ranks if isinstance(ranks, (list, tuple)) else [ranks]))
        if method == "tucker" and len(ranks) == 1:
            ranks = ranks * 2
        if len(ranks) != (1 if method == "cp" else 2) or min(ranks) < 1:
            continue
        cases.append(Case(convs[idx], method, ranks, path.name))
    return cases


def build_cases(layers: Optional[Sequence[int]], plan: Optional[Path]) -> List[Case]:
    convs = vgg16_convs()
    chosen = [c for c in convs if layers is None or c.index in layers]
    cases = [Case(c, "cp", (cp_rank(c),), f"1/{COMPRESSION}") for c in chosen]
    cases += [Case(c, "tucker", tucker_ranks(c), f"1/{COMPRESSION}") for c in chosen]
    if plan is not None:
        if plan.exists():
            cases += [c for c in plan_cases(plan, convs) if layers is None or c.conv.index in layers]
        else:
            print(f"note: plan {plan} not found; benchmarking the 1/{COMPRESSION} ranks only")
    return cases


def flops(case: Case, batch: int, dense: bool = False) -> int:
    c = case.conv
    hw = c.hw * c.hw  # stride 1, padding 1: output size == input size
    if dense:
        return 2 * batch * hw * c.c_in * c.c_out * c.k ** 2
    if case.method == "cp":
        (r,) = case.ranks
        return 2 * batch * hw * (c.c_in * r + r * c.k ** 2 + r * c.c_out)
    r1, r2 = case.ranks
    return 2 * batch * hw * (c.c_in * r1 + r1 * r2 * c.k ** 2 + r2 * c.c_out)


def moved_bytes(case: Case, batch: int, elem: int, dense: bool = False) -> int:
    c = case.conv
    act = batch * c.hw * c.hw * (c.c_in + c.c_out)
    weights = c.c_in * c.c_out * c.k ** 2 if dense else case.params()
    return elem * (act + weights + c.c_out)


def print_dry_run(cases: List[Case], batches: Sequence[int], dtypes: Sequence[str]) -> None:
    print(f"{'layer':>5} {'S':>4} {'T':>4} {'HW':>3} {'method':>6} {'ranks':>10} {'params':>9} "
          f"{'ratio':>6} {'source':>8}")
    for case in cases:
        c = case.conv
        dense = c.c_in * c.c_out * c.k ** 2
        print(f"{c.index:>5} {c.c_in:>4} {c.c_out:>4} {c.hw:>3} {case.method:>6} {str(case.ranks):>10} "
              f"{case.params():>9} {dense / case.params():>6.2f} {case.source:>8}")
    unique = len({case.key() for case in cases})
    print(f"{len(cases)} cases ({unique} distinct), batches {list(batches)}, dtypes {list(dtypes)}: "
          f"{unique * len(batches) * len(dtypes)} measurements x (dense, eager, compiled, triton, cuda)")


# ---------------------------------------------------------------- GPU side
def make_factors(case: Case, dtype: torch.dtype, device, seed: int) -> dict:
    """Random factors scaled so activations stay O(1) through the chain."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    c, k = case.conv, case.conv.k

    def rnd(*shape, fan_in):
        return (torch.randn(*shape, generator=g) / math.sqrt(fan_in)).to(device=device, dtype=dtype)

    out = {"bias": rnd(c.c_out, fan_in=1) * 0.1}
    if case.method == "cp":
        (r,) = case.ranks
        out["weights"] = [rnd(r, c.c_in, 1, 1, fan_in=c.c_in), rnd(r, 1, k, k, fan_in=k * k),
                          rnd(c.c_out, r, 1, 1, fan_in=r)]
    else:
        r1, r2 = case.ranks
        out["weights"] = [rnd(r1, c.c_in, 1, 1, fan_in=c.c_in), rnd(r2, r1, k, k, fan_in=r1 * k * k),
                          rnd(c.c_out, r2, 1, 1, fan_in=r2)]
    return out


def chain(method: str, x, weights, bias, padding: int, relu: bool = True):
    """The unfused chain, exactly as eager PyTorch runs it."""
    w_first, w_mid, w_last = weights
    y = F.conv2d(x, w_first)
    y = F.conv2d(y, w_mid, padding=padding, groups=w_mid.shape[0] if method == "cp" else 1)
    y = F.conv2d(y, w_last, bias)
    return F.relu(y) if relu else y


def fused_call(method: str, x, weights, bias, padding: int, relu: bool = True):
    op = getattr(torch.ops.mtd, OP_OF[method])
    return op(x, *weights, bias, [1, 1], [padding, padding], [1, 1], relu)


def fused_available(backend: str, method: str) -> bool:
    from mtd_kernels import dispatch

    dispatch.set_cuda_backend(backend)
    try:
        return dispatch.cuda_kernel(OP_OF[method]) is not None
    finally:
        dispatch.set_cuda_backend(None)


def bench_ms(fn: Callable) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=10, rep=40, return_mode="median"))


def copy_bandwidth_gbs(device) -> float:
    """Device-to-device copy bandwidth (bytes read + written) of a 1 GiB buffer."""
    n = (1 << 30) // 4
    src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    del src, dst
    return 2 * n * 4 / (ms * 1e-3) / 1e9


def max_errors(out: torch.Tensor, ref32: torch.Tensor) -> Tuple[float, float]:
    err = (out.float() - ref32).abs().max().item()
    return err, err / max(ref32.abs().max().item(), 1e-6)


@dataclass
class Row:
    layer: int
    c_in: int
    c_out: int
    hw: int
    method: str
    ranks: str
    source: str
    batch: int
    dtype: str
    variant: str
    ms: float = float("nan")
    gbs: float = float("nan")
    frac_copy_bw: float = float("nan")
    tflops: float = float("nan")
    max_abs_err: float = float("nan")
    rel_err: float = float("nan")
    ok: bool = True
    note: str = ""


class Results:
    """Rows, the CSV rewritten (atomically) after each so a killed run keeps what it measured, whole."""

    def __init__(self, out_dir: Path, meta: dict):
        self.out_dir, self.meta, self.rows = out_dir, meta, []
        out_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = out_dir / "gpu_layers.csv"
        self.fields = list(Row.__dataclass_fields__) + ["device"]
        self._write_csv()
        self.e2e: List[dict] = []

    def add(self, row: Row) -> None:
        self.rows.append(row)
        self._write_csv()

    def _write_csv(self) -> None:
        with atomic_write(self.csv_path, "w") as f:
            writer = csv.DictWriter(f, self.fields)
            writer.writeheader()
            writer.writerows({**asdict(r), "device": self.meta["device"]} for r in self.rows)

    def write_json(self, summary: dict) -> Path:
        path = self.out_dir / "gpu_layers.json"
        with atomic_write(path, "w") as f:
            json.dump({"meta": self.meta, "summary": summary, "e2e": self.e2e,
                       "rows": [asdict(r) for r in self.rows]}, f, indent=1, default=str)
        return path


@dataclass
class Budget:
    seconds: float
    start: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def over(self) -> bool:
        return self.left() <= 0


def measure_case(case: Case, batch: int, dname: str, res: Results, copy_gbs: float, seed: int,
                 backends: Dict[str, bool]) -> dict:
    """Times dense / eager / triton / cuda for one case; returns the tensors the compiled pass needs."""
    from mtd_kernels import dispatch

    dtype, dev = DTYPES[dname], torch.device("cuda")
    c = case.conv
    elem = torch.tensor([], dtype=dtype).element_size()
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(batch, c.c_in, c.hw, c.hw, generator=g).to(dev, dtype).contiguous(
        memory_format=torch.channels_last)
    fac = make_factors(case, dtype, dev, seed + 1)
    weights, bias = fac["weights"], fac["bias"]
    ref32 = chain(case.method, x.float(), [w.float() for w in weights], bias.float(), c.padding)
    dense_w = (torch.randn(c.c_out, c.c_in, c.k, c.k, generator=g) / math.sqrt(c.c_in * c.k ** 2)).to(
        dev, dtype).contiguous(memory_format=torch.channels_last)

    base = dict(layer=c.index, c_in=c.c_in, c_out=c.c_out, hw=c.hw, method=case.method,
                ranks="x".join(map(str, case.ranks)), source=case.source, batch=batch, dtype=dname)
    variants: Dict[str, Optional[Callable]] = {
        "dense": lambda: F.relu(F.conv2d(x, dense_w, bias, padding=c.padding)),
        "eager": lambda: chain(case.method, x, weights, bias, c.padding),
    }
    for b in FUSED_BACKENDS:  # the backend is set around the whole timing (no per-call overhead)
        variants[b] = ((lambda: fused_call(case.method, x, weights, bias, c.padding))
                       if backends[f"{b}:{case.method}"] else None)
    for name, fn in variants.items():
        row = Row(**base, variant=name)
        if fn is None:
            row.ok, row.note = False, "backend not available"
            res.add(row)
            continue
        try:
            dispatch.set_cuda_backend(name if name in FUSED_BACKENDS else None)
            out = fn()
            if name != "dense":  # dense computes another function: no reference to compare with
                row.max_abs_err, row.rel_err = max_errors(out, ref32)
                row.ok = bool(row.rel_err <= REL_TOL) and out.shape == ref32.shape
                if not row.ok:
                    row.note = f"WRONG: rel err {row.rel_err:.3g} > {REL_TOL}"
            fill_speed(row, bench_ms(fn), case, batch, elem, copy_gbs, dense=name == "dense")
        except Exception as exc:  # keep going: one broken kernel must not hide the others
            row.ok, row.note = False, f"{type(exc).__name__}: {str(exc)[:200]}"
        finally:
            dispatch.set_cuda_backend(None)
        res.add(row)
    return {"x": x, "weights": weights, "bias": bias, "ref32": ref32, "base": base, "elem": elem}


def fill_speed(row: Row, ms: float, case: Case, batch: int, elem: int, copy_gbs: float, dense: bool) -> None:
    row.ms = ms
    row.gbs = moved_bytes(case, batch, elem, dense) / (ms * 1e-3) / 1e9
    row.frac_copy_bw = row.gbs / copy_gbs
    row.tflops = flops(case, batch, dense) / (ms * 1e-3) / 1e12


def measure_compiled(case: Case, batch: int, dname: str, data: dict, res: Results, copy_gbs: float,
                     mode: str, cache: dict) -> None:
    """The chain under torch.compile; one compiled function per shape (cached across layers)."""
    c = case.conv
    key = (case.key(), batch, dname)
    if key not in cache:
        method, pad = case.method, c.padding
        cache[key] = torch.compile(lambda x, w, b: chain(method, x, w, b, pad), mode=mode, dynamic=False,
                                   fullgraph=True)
    fn = cache[key]
    x, weights, bias = data["x"], data["weights"], data["bias"]
    row = Row(**data["base"], variant="compiled", note=f"torch.compile({mode})")
    try:
        out = fn(x, weights, bias)
        row.max_abs_err, row.rel_err = max_errors(out, data["ref32"])
        row.ok = bool(row.rel_err <= REL_TOL)
        fill_speed(row, bench_ms(lambda: fn(x, weights, bias)), case, batch, data["elem"], copy_gbs, False)
    except Exception as exc:
        row.ok, row.note = False, f"{type(exc).__name__}: {str(exc)[:200]}"
    res.add(row)


# ---------------------------------------------------------------- end to end
class FusedConv(torch.nn.Module):
    """A conv replaced by the fused op with random factors (bias and ReLU fused)."""

    def __init__(self, case: Case, dtype, device, seed: int):
        super().__init__()
        fac = make_factors(case, dtype, device, seed)
        self.method, self.padding = case.method, case.conv.padding
        self.w_first, self.w_mid, self.w_last = (torch.nn.Parameter(w, requires_grad=False) for w in fac["weights"])
        self.bias = torch.nn.Parameter(fac["bias"], requires_grad=False)

    def forward(self, x):
        weights = (self.w_first, self.w_mid, self.w_last)
        return fused_call(self.method, x, weights, self.bias, self.padding, relu=True)


def vgg16(method: Optional[str], dtype, device) -> torch.nn.Module:
    """CIFAR VGG16 (no batch norm: it folds into the conv at inference), dense or compressed."""
    layers: List[torch.nn.Module] = []
    for conv in vgg16_convs():
        if method is None:
            layers += [torch.nn.Conv2d(conv.c_in, conv.c_out, conv.k, padding=conv.padding), torch.nn.ReLU()]
        else:
            ranks = (cp_rank(conv),) if method == "cp" else tucker_ranks(conv)
            layers.append(FusedConv(Case(conv, method, ranks, "e2e"), dtype, device, seed=conv.index))
        if conv.index in (1, 3, 6, 9, 12):  # a max-pool follows these convs in the cfg
            layers.append(torch.nn.MaxPool2d(2))
    layers += [torch.nn.Flatten(), torch.nn.Linear(512, 10)]
    model = torch.nn.Sequential(*layers).to(device=device, dtype=dtype).eval()
    # channels_last for cuDNN's dense convs; the factors stay contiguous (what the fused kernels read)
    return model.to(memory_format=torch.channels_last) if method is None else model


def mtd_vgg16(method: str, rank_space: bool, dtype, device) -> torch.nn.Module:
    """``benchmarks/e2e_cpu.py``'s VGG16 (mtd layers at 1/32 of each conv's parameters, random factors, batch
    norm folded by ``mtd.prepare_inference``): one fused op per layer, or regrouped into rank space
    (``torch.ops.mtd.rank_bridge`` across layers, so only rank-R maps reach memory)."""
    import e2e_cpu  # beside this file: the same model as the CPU end-to-end benchmark

    import mtd

    torch.manual_seed(0)
    model = e2e_cpu.compress(mtd.models.build_model("vgg16", width=1).eval(), method, "fused")
    model = model.eval().to(device=device, dtype=dtype)
    return mtd.prepare_inference(model, rank_space=rank_space)


def graph_latency_ms(model, x) -> float:
    """Batch latency with the whole forward captured in one CUDA graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(3):
            model(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        model(x)
    return bench_ms(graph.replay)


def run_e2e(res: Results, dname: str, backends: Dict[str, bool], budget: Budget) -> None:
    from mtd_kernels import dispatch

    dtype, dev = DTYPES[dname], torch.device("cuda")
    configs = [("dense", None, None, lambda: vgg16(None, dtype, dev))]
    for method in METHODS:
        for b in FUSED_BACKENDS:
            if backends[f"{b}:{method}"]:
                configs.append((f"{method}-{b}", method, b, lambda m=method: vgg16(m, dtype, dev)))
        if backends[f"triton:{method}"]:  # rank space beside one fused op per layer, on the same mtd model
            for rank_space in (False, True):
                label = f"{method}-1/32-{'rank' if rank_space else 'per-layer'}"
                configs.append((label, method, "triton",
                                lambda m=method, r=rank_space: mtd_vgg16(m, r, dtype, dev)))
    for label, method, backend, build in configs:
        if budget.over():
            print("time budget reached: skipping the rest of the end-to-end runs")
            return
        entry = {"model": label, "dtype": dname}
        try:
            dispatch.set_cuda_backend(backend)
            model = build()
            # a rank-space run keeps its per-layer ops beside its bridges: count the weights once
            n_params = sum(p.numel() for name, p in model.named_parameters() if ".bridges." not in name)
            x1 = torch.randn(1, 3, 32, 32, device=dev, dtype=dtype).contiguous(memory_format=torch.channels_last)
            xb = torch.randn(256, 3, 32, 32, device=dev, dtype=dtype).contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                entry["latency_b1_graph_ms"] = graph_latency_ms(model, x1)
                ms256 = bench_ms(lambda: model(xb))
            entry.update(params=n_params, ms_b256=ms256, images_per_s_b256=256 / (ms256 * 1e-3))
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        finally:
            dispatch.set_cuda_backend(None)
        res.e2e.append(entry)
        print("e2e", json.dumps(entry))


# ---------------------------------------------------------------- summary
def geomean(values: List[float]) -> float:
    vals = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, vals)) / len(vals)) if vals else float("nan")


def summarize(rows: List[Row]) -> dict:
    """Geomean over layers of best(eager, compiled) / best(triton, cuda), and of dense / fused."""
    times: Dict[tuple, Dict[str, float]] = {}
    for r in rows:
        if r.ok and math.isfinite(r.ms):
            times.setdefault((r.layer, r.method, r.ranks, r.batch, r.dtype), {})[r.variant] = r.ms
    out: dict = {}
    for (layer, method, ranks, batch, dtype), t in sorted(times.items()):
        fused = min((t[b] for b in FUSED_BACKENDS if b in t), default=float("nan"))
        unfused = min((t[v] for v in ("eager", "compiled") if v in t), default=float("nan"))
        key = f"{method}_{dtype}_b{batch}"
        out.setdefault(key, {"fused_vs_chain": [], "fused_vs_dense": []})
        out[key]["fused_vs_chain"].append(unfused / fused)
        out[key]["fused_vs_dense"].append(t.get("dense", float("nan")) / fused)
    return {k: {m: geomean(v) for m, v in d.items()} | {"layers": len(d["fused_vs_chain"])}
            for k, d in out.items()}


def print_table(rows: List[Row]) -> None:
    print(f"\n{'layer':>5} {'method':>6} {'ranks':>8} {'batch':>5} {'dtype':>4} {'variant':>8} {'ms':>9} "
          f"{'GB/s':>8} {'%copy':>6} {'TFLOP/s':>8} {'rel_err':>8}  note")
    for r in rows:
        print(f"{r.layer:>5} {r.method:>6} {r.ranks:>8} {r.batch:>5} {r.dtype:>4} {r.variant:>8} {r.ms:>9.4f} "
              f"{r.gbs:>8.1f} {100 * r.frac_copy_bw:>6.1f} {r.tflops:>8.2f} {r.rel_err:>8.2g}  {r.note}")


# ---------------------------------------------------------------- main
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"layers {list(QUICK_LAYERS)} only and batch 32 only (e2e still runs)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu"), help="output folder")
    p.add_argument("--time-budget", type=float, default=200.0,
                   help="seconds; stops starting new measurements after this and writes what it has")
    p.add_argument("--plan", type=Path, default=None, help="also benchmark the cp / tucker ranks of this plan JSON (mtd.planner Plan.save format)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd chain")
    p.add_argument("--compile-mode", default="max-autotune", help="torch.compile mode for the chain")
    p.add_argument("--compile-batches", type=int, nargs="*", default=[1, 256],
                   help="batches for which the compiled chain is timed (it compiles once per shape)")
    p.add_argument("--compile-reserve", type=float, default=45.0,
                   help="start another torch.compile only with this many seconds of budget left")
    p.add_argument("--batches", type=int, nargs="*", default=None, help=f"default {list(BATCHES)}")
    p.add_argument("--dtypes", nargs="*", choices=sorted(DTYPES), default=None, help="default fp16 bf16")
    p.add_argument("--layers", type=int, nargs="*", default=None, help="conv indices (0-12); default all")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end VGG16 runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="print shapes and ranks, touch no GPU, exit")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    layers = args.layers if args.layers is not None else (list(QUICK_LAYERS) if args.quick else None)
    batches = args.batches or ([32] if args.quick else list(BATCHES))
    dtypes = args.dtypes or list(DTYPES)
    cases = build_cases(layers, args.plan)
    if args.dry_run:
        print_dry_run(cases, batches, dtypes)
        return 0
    if not torch.cuda.is_available():
        print("gpu_layers.py: no CUDA device is available (torch.cuda.is_available() is False); this "
              "benchmark needs a GPU. Use --dry-run to list the shapes and ranks.", file=sys.stderr)
        return 2
    try:
        import triton
    except ImportError:
        print("gpu_layers.py: triton is required (triton.testing.do_bench)", file=sys.stderr)
        return 2
    import mtd_kernels

    budget = Budget(args.time_budget)
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False  # the fp32 reference chain must be real fp32
    torch.backends.cuda.matmul.allow_tf32 = False
    backends = {f"{b}:{m}": fused_available(b, m) for b in FUSED_BACKENDS for m in METHODS}
    meta = {
        "device": torch.cuda.get_device_name(dev), "capability": list(torch.cuda.get_device_capability(dev)),
        "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
        "python": platform.python_version(), "cuda_extension": mtd_kernels.cuda_extension_available(),
        "backends": backends, "compression": COMPRESSION, "argv": sys.argv[1:],
    }
    meta["copy_gbs"] = copy_bw = copy_bandwidth_gbs(dev)
    print(json.dumps(meta))
    res = Results(args.out, meta)

    # pass 1: every case without torch.compile (fast); identical layers are measured once
    measured: Dict[tuple, List[Row]] = {}
    kept: Dict[tuple, dict] = {}
    stopped = False
    for dname in dtypes:
        for batch in batches:
            for case in cases:
                if budget.over():
                    stopped = True
                    break
                key = (case.key(), batch, dname)
                if key in measured:  # same work as an earlier layer: copy its rows under this layer
                    for r in measured[key]:
                        res.add(Row(**{**asdict(r), "layer": case.conv.index, "note": r.note or "same shape as "
                                       f"layer {r.layer}"}))
                    continue
                n0 = len(res.rows)
                data = measure_case(case, batch, dname, res, copy_bw, args.seed, backends)
                measured[key] = res.rows[n0:]
                if not args.no_compile and batch in args.compile_batches:
                    kept[key] = {"case": case, **data}
                else:
                    del data
            torch.cuda.empty_cache()
    res.write_json({"partial": True})

    # end to end (fp16): more important than the compiled chain, so it goes first
    if not args.no_e2e and not budget.over():
        run_e2e(res, "fp16" if "fp16" in dtypes else dtypes[0], backends, budget)

    # pass 2: the compiled chain, as far as the budget allows (batch 1 and 256 first)
    cache: dict = {}
    for key, data in sorted(kept.items(), key=lambda kv: (kv[0][1] not in (1, 256), kv[0][2])):
        if budget.left() < args.compile_reserve:  # a max-autotune compile must not overrun the budget
            stopped = True
            break
        measure_compiled(data["case"], key[1], key[2], data, res, copy_bw, args.compile_mode, cache)
    if not args.no_compile and kept and len(cache) < len(kept):
        print(f"compiled chain timed for {len(cache)} of {len(kept)} shapes (time budget)")

    summary = summarize(res.rows)
    summary["stopped_by_time_budget"] = stopped
    print_table(res.rows)
    print("\ngeomean speedups (fused = best of triton/cuda; chain = best of eager/compiled):")
    for k, v in summary.items():
        if isinstance(v, dict):
            print(f"  {k:>18}: fused vs chain {v['fused_vs_chain']:.2f}x, fused vs dense {v['fused_vs_dense']:.2f}x"
                  f" ({v['layers']} layers)")
    for e in res.e2e:
        print("  e2e", e)
    path = res.write_json(summary)
    print(f"wrote {res.csv_path} and {path}")
    # wrong or crashing fused kernels fail the run; a failing torch.compile is only reported
    bad = [r for r in res.rows if not r.ok and r.note != "backend not available" and r.variant != "compiled"]
    if bad:
        print(f"{len(bad)} rows FAILED (wrong result or error), e.g. {asdict(bad[0])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
