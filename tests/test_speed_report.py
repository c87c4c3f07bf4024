"""The speed a user is shown (mtd.report.latency.compare_speed): the original, the compressed model prepared for
inference and the deployment runtimes on the same file, on this CPU; the models are left as they were."""
from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from torch import nn

from mtd.layers import CPConv2d
from mtd.report.latency import compare_speed, interleaved_times, runtime_sessions, speed_lines
from mtd.utils.machine import cpu_features, describe_cpu


def _models():
    torch.manual_seed(0)
    original = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    compressed = copy.deepcopy(original)
    compressed[3] = CPConv2d.from_conv(original[3], rank=4)
    return original, compressed


def test_compare_speed_measures_every_variant_and_changes_no_model():
    original, compressed = _models()
    compressed.train()
    before = {k: v.clone() for k, v in compressed.state_dict().items()}
    speed = compare_speed(original, compressed, torch.randn(1, 3, 12, 10), batches=(1, 3), rounds=2)
    assert [r["batch"] for r in speed["rows"]] == [1, 3]
    expected = {"original_ms", "mtd_ms"} | {f"{n}_ms" for n in ("onnxruntime", "openvino")
                                             if importlib.util.find_spec(n) is not None}
    assert all(set(r) - {"batch"} == expected and all(r[k] > 0 for k in expected) for r in speed["rows"])
    assert set(speed["runtimes"]) == {k[:-3] for k in expected} - {"original", "mtd"}
    assert compressed.training and all(torch.equal(before[k], v) for k, v in compressed.state_dict().items())
    title, table = speed_lines(speed)
    assert speed["cpu"] in title and "mtd (prepared)" in table and "x)" in table
    assert speed_lines(speed, markdown=True)[1].startswith("| batch |")


def test_interleaved_times_settles_before_each_callable():
    """With settle_s, each callable's timed calls of a round follow its own untimed call, right after the pause:
    the order of calls shows it (a, a, b, b warm-up; then per round: a untimed, a x calls, b untimed, b x calls)."""
    log = []
    fns = {"a": lambda: log.append("a"), "b": lambda: log.append("b")}
    times = interleaved_times(fns, rounds=3, calls=2, settle_s=0.001)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert log == ["a", "a", "b", "b"] + ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3
    log.clear()
    interleaved_times(fns, rounds=1, calls=2)  # no settling: no untimed call
    assert log == ["a", "a", "b", "b", "a", "a", "b", "b"]


def test_the_runtimes_run_the_compressed_model_itself(tmp_path):
    pytest.importorskip("onnxruntime")
    _, compressed = _models()
    compressed.eval()
    x = torch.randn(2, 3, 12, 10)
    with torch.no_grad():
        expected = compressed(x)
    sessions = runtime_sessions(compressed, x, str(tmp_path), threads=1)
    assert "onnxruntime" in sessions
    for name, run in sessions.items():
        torch.testing.assert_close(run(), expected, rtol=1e-4, atol=1e-4, msg=name)


def test_the_cpu_is_named_with_its_vector_extensions():
    from mtd.utils.machine import cpu_model

    features = cpu_features()
    assert describe_cpu() == (f"{cpu_model()} ({', '.join(features)})" if features else cpu_model())
    assert set(cpu_features()) <= {"AVX-512", "AVX2", "AVX512_BF16", "AMX"}
    assert not {"AVX-512", "AVX2"} <= set(cpu_features())  # the widest one only


def test_without_the_export_packages_the_table_goes_without_runtimes(monkeypatch, tmp_path):
    """A bare `pip install .` has neither onnx nor the runtimes: the speed table still comes, with mtd and the
    original only (CI's fresh-venv main job runs this way)."""
    import importlib.util as util

    real = util.find_spec
    monkeypatch.setattr(util, "find_spec", lambda name, *a: None if name in ("onnx", "onnxruntime", "openvino")
                        else real(name, *a))
    original, compressed = _models()
    assert runtime_sessions(compressed, torch.randn(1, 3, 8, 8), str(tmp_path), threads=1) == {}
    speed = compare_speed(original, compressed, torch.randn(1, 3, 8, 8), batches=(2,), rounds=1)
    assert set(speed["rows"][0]) == {"batch", "original_ms", "mtd_ms"}
