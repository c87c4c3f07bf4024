"""Forward-pass latency: of one model (:func:`forward_latency_ms`), and of a compressed model against its original
and the deployment runtimes on this CPU (:func:`compare_speed`, what ``mtd compress`` and ``mtd eval`` report)."""
from __future__ import annotations

import copy
import importlib.util
import os
import statistics
import tempfile
import time
import warnings
from typing import Any, Callable, Sequence

import torch
from torch import nn


@torch.no_grad()
def forward_latency_ms(model: nn.Module, batch_size: int, image_hw: tuple = (32, 32), *, channels: int = 3,
                       device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                       channels_last: bool = False, warmup: int = 3, repeats: int = 20) -> float:
    """Median milliseconds of ``model(x)`` for a random batch ``(batch_size, channels, *image_hw)``."""
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.randn(batch_size, channels, *image_hw, device=device, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    times = []
    with ctx:
        for i in range(warmup + repeats):
            sync()
            t0 = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


RUNTIMES = ("onnxruntime", "openvino")  # the deployment runtimes a CPU user could run mtd.export_onnx's file on
SETTLE_S = 0.02  # interleaved_times' pause before each model's calls when runtimes are compared


def runtime_sessions(model: nn.Module, x: torch.Tensor, folder: str, threads: int) -> dict[str, Callable[[], Any]]:
    """Callables running ``model`` (a CPU model) on onnxruntime and OpenVINO, those installed, as a user who
    exports would: the file ``mtd.export_onnx`` writes at ``x``'s shape (static batch), fp32, ``threads`` threads,
    each on a contiguous NCHW copy of ``x`` made once. Each returns the output as a tensor."""
    from ..export import export_onnx

    installed = [name for name in RUNTIMES if importlib.util.find_spec(name) is not None]
    if not installed or importlib.util.find_spec("onnx") is None:  # torch's exporter needs the onnx package
        return {}
    path = os.path.join(folder, f"model-b{x.shape[0]}.onnx")
    try:
        export_onnx(model, path, x.contiguous(), dynamic_batch=False)
    except Exception as err:  # noqa: BLE001  (a model the exporter cannot write: the table goes without runtimes)
        warnings.warn(f"no onnxruntime / OpenVINO timings: the ONNX export failed ({type(err).__name__}: "
                      f"{str(err).splitlines()[0][:200]})", RuntimeWarning, stacklevel=2)
        return {}
    array = x.detach().contiguous().numpy()
    out: dict[str, Callable[[], Any]] = {}
    try:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        out["onnxruntime"] = lambda: torch.from_numpy(session.run(None, {"input": array})[0])
    except ImportError:
        pass
    try:
        import openvino as ov

        compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                          "INFERENCE_PRECISION_HINT": "f32",
                                                          "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        out["openvino"] = lambda: torch.from_numpy(request.infer({0: array})[0].copy())
    except ImportError:
        pass
    return out


def runtime_versions() -> dict[str, str]:
    """The installed deployment runtimes and their versions."""
    versions = {}
    for name in RUNTIMES:
        try:
            versions[name] = str(__import__(name).__version__)
        except ImportError:
            pass
    return versions


def interleaved_ms(fns: dict[str, Callable[[], Any]], rounds: int, calls: int, settle_s: float = 0.0
                   ) -> dict[str, float]:
    """Median over ``rounds`` of the mean ms of ``calls`` calls (:func:`interleaved_times`)."""
    return {name: statistics.median(ts) for name, ts in interleaved_times(fns, rounds, calls, settle_s).items()}


def interleaved_times(fns: dict[str, Callable[[], Any]], rounds: int, calls: int, settle_s: float = 0.0
                      ) -> dict[str, list[float]]:
    """Per callable, the mean ms of ``calls`` calls in each of ``rounds`` rounds, each round running every
    callable in turn (load changes hit all alike), after two warm-up calls each (oneDNN primitives, mtd's
    per-shape path choice).

    ``settle_s`` > 0: before each callable's calls of a round, a pause of that long and one untimed call. Runtimes
    keep their worker threads spinning for a while after a call (onnxruntime's intra-op pool, OpenVINO's, an
    OpenMP team); on a machine with as many cores as threads, those would still hold the cores during the next
    callable's calls and bill it for them. With the pause each callable is timed in its own steady state, as a
    user running only that one sees it; it matters most for sub-millisecond calls."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            if settle_s > 0:
                time.sleep(settle_s)
                fn()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - t0) * 1e3 / calls)
    return times


@torch.no_grad()
def compare_speed(original: nn.Module, compressed: nn.Module, example: torch.Tensor, *,
                  batches: Sequence[int] = (1, 64), rounds: int = 5, runtimes: bool = True) -> dict[str, Any]:
    """Latency on this machine's CPU of ``original`` (eager) and ``compressed`` prepared for inference
    (:func:`mtd.prepare_inference`; channels_last), and of ``compressed`` on onnxruntime / OpenVINO where
    installed (``runtimes``), for random batches shaped like ``example`` (C, H, W or 1, C, H, W).

    Returns ``{"cpu", "threads", "runtimes" (versions), "rows": [{"batch", "<name>_ms"...}]}``; the models are
    copied, not changed. Speed does not depend on the weights."""
    from ..layers.inference import prepare_inference
    from ..utils.machine import describe_cpu

    shape = tuple(example.shape[-3:])
    threads = torch.get_num_threads()
    dense = copy.deepcopy(original).cpu().eval().to(memory_format=torch.channels_last)
    plain = copy.deepcopy(compressed).cpu().eval()
    fast = prepare_inference(plain).to(memory_format=torch.channels_last)
    rows = []
    for batch in batches:
        x = torch.randn(batch, *shape).contiguous(memory_format=torch.channels_last)
        fns: dict[str, Callable[[], Any]] = {"original": lambda x=x: dense(x), "mtd": lambda x=x: fast(x)}
        with tempfile.TemporaryDirectory() as folder:  # the runtimes have read the file when it goes
            if runtimes:
                fns.update(runtime_sessions(plain, x, folder, threads))
        medians = interleaved_ms(fns, rounds, calls=5 if batch == 1 else 1, settle_s=SETTLE_S)
        rows.append({"batch": batch, **{f"{name}_ms": round(ms, 3) for name, ms in medians.items()}})
    timed = {k: v for k, v in runtime_versions().items() if any(f"{k}_ms" in r for r in rows)}
    return {"cpu": describe_cpu(), "threads": threads, "runtimes": timed, "rounds": rounds, "rows": rows}


def speed_lines(speed: dict[str, Any], markdown: bool = False) -> list[str]:
    """A table of :func:`compare_speed`'s result: ms per batch, and the compressed model's speed-up."""
    from .table import format_table

    names = [k[:-3] for k in speed["rows"][0] if k.endswith("_ms")]
    rows = []
    for r in speed["rows"]:
        mtd = r["mtd_ms"]
        rows.append([r["batch"], *(f"{r[f'{n}_ms']:.2f}" + ("" if n == "mtd" else f" ({r[f'{n}_ms'] / mtd:.2f}x)")
                                   for n in names)])
    header = ("batch", *(("mtd (prepared)" if n == "mtd" else n) for n in names))
    threads = f"{speed['threads']} thread" + ("s" if speed["threads"] != 1 else "")
    title = (f"latency on {speed['cpu']}, {threads}, ms per batch (median of {speed['rounds']} "
             f"rounds; in brackets: how many times the compressed model is faster)")
    return [title, format_table(header, rows, markdown=markdown)]
