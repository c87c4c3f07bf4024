"""End-to-end smoke run of benchmarks/cifar_gpu.py --smoke on the tiny image-folder tar of conftest.py."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_smoke_mode_runs_end_to_end(tmp_path, tiny_cifar):
    data = tiny_cifar
    spec = importlib.util.spec_from_file_location("cifar_gpu", ROOT / "benchmarks" / "cifar_gpu.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "out"
    rc = script.main(["--smoke", "--data", str(data), "--out", str(out), "--models", "vgg11",
                      "--methods", "mtd,cp-vbmf,tucker-uniform", "--cache-dir", str(tmp_path / "cache"),
                      "--smoke-images", "300"])
    assert rc == 0
    results = json.loads((out / "cifar_smoke.json").read_text())["models"]["vgg11"]
    # the classes differ by colour: one epoch already beats chance (10%) by far
    assert results["baseline"]["accuracy"] > 30, results["baseline"]
    rows = {r["method"]: r for r in results["rows"]}
    assert set(rows) == {"mtd", "cp-vbmf", "tucker-uniform"}
    # the uniform baseline runs at the compression MTD reached (skipped when MTD kept all dense)
    uniform = rows.pop("tucker-uniform")
    if rows["mtd"]["layer_param_ratio"] > 1.0:
        assert uniform["layer_param_ratio"] >= 0.8 * rows["mtd"]["layer_param_ratio"]
    else:
        assert uniform["skipped"] == "no target ratio"
    for row in rows.values():
        assert row["param_ratio"] >= 1.0 and row["macs_ratio"] >= 1.0
        assert row["latency_ms"]["b1"] > 0 and row["dense_latency_ms"]["b1"] > 0
    assert rows["cp-vbmf"]["param_ratio"] > 1.0  # EVBMF ranks always compress a trained VGG
    md = (out / "cifar_smoke.md").read_text()
    assert "| mtd |" in md and "| cp-vbmf |" in md


def test_resumed_results_keeps_steps_only_for_the_same_experiment(tmp_path, monkeypatch):
    import argparse

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import _bench_util as bu

    path = tmp_path / "r.json"
    first = argparse.Namespace(epochs=2, extra=0)
    results = bu.resumed_results(path, first, additive=("extra",))
    results["steps"]["baseline"] = {"accuracy": 80.0}
    path.write_text(json.dumps(results))
    # an additive argument (it only adds steps) keeps what was done and records the new value
    resumed = bu.resumed_results(path, argparse.Namespace(epochs=2, extra=6), additive=("extra",))
    assert resumed["steps"] == {"baseline": {"accuracy": 80.0}} and resumed["args"]["extra"] == 6
    # any other argument changes the experiment: start over
    fresh = bu.resumed_results(path, argparse.Namespace(epochs=3, extra=0), additive=("extra",))
    assert fresh["steps"] == {} and fresh["args"]["epochs"] == 3
