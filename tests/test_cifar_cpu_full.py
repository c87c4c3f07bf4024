"""benchmarks/cifar_cpu_full.py (the thesis rows) end to end at toy size: its steps, the fine-tuning curve that
continues one model, the teacher bank shared with ``mtd.compress``, and a resumed run that skips finished steps."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from mtd.models import build_model, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("cifar_cpu_full", ROOT / "benchmarks" / "cifar_cpu_full.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_thesis_rows_script_runs_its_steps_and_continues_one_model(tmp_path, tiny_cifar, monkeypatch):
    monkeypatch.chdir(ROOT)
    torch.manual_seed(0)
    checkpoint = tmp_path / "vgg11.pt"
    save_checkpoint(checkpoint, build_model("vgg11", num_classes=10, width=0.125))
    cache, out = tmp_path / "cache", tmp_path / "out"
    argv = ["--checkpoint", str(checkpoint), "--data", str(tiny_cifar), "--out", str(out), "--stem", "toy",
            "--cache-dir", str(cache), "--finetune-epochs", "1", "--curve", "2,3", "--grid", "tiny",
            "--ratios", "6", "--search-rounds", "1", "--val", "40", "--score-images", "64"]
    script = _script()
    assert script.main(argv) == 0
    results = json.loads((out / "toy.json").read_text())
    steps = results["steps"]
    assert list(steps) == ["baseline", "mtd@6", "cp-uniform@6", "tucker-uniform@6", "control", "mtd@6-ft2",
                           "mtd@6-ft3", "mtd-budget"]
    assert [steps[n]["finetune_epochs"] for n in ("mtd@6", "mtd@6-ft2", "mtd@6-ft3")] == [1, 2, 3]
    assert steps["mtd@6-ft3"]["continued_epochs"] == 1 and steps["control"]["finetune_epochs"] == 1
    # a continued stage is the same compressed model, fine-tuned on: the same plan and parameters
    assert steps["mtd@6-ft3"]["params"] == steps["mtd@6"]["params"]
    assert steps["mtd@6-ft3"]["layers"] == steps["mtd@6"]["layers"]
    assert (cache / "models" / "toy" / "mtd@6-ft3.pt").is_file()
    # one teacher bank for the whole run: mtd.compress's file, reused by the control and the curve
    assert len(list(cache.glob("teacher-bank-*.npz"))) == 1
    md = (out / "toy.md").read_text()
    assert "**mtd@6**" in md and "against fine-tuning epochs: 1 epochs" in md and "The dense control gains" in md
    assert results["checkpoint_sha256"] in md

    # resumed: finished steps are kept (a new --curve total only adds a step), nothing is recomputed
    before = {n: s["seconds"] for n, s in steps.items()}
    assert script.main(argv[:-12] + ["--curve", "2,3,4"] + argv[-10:]) == 0
    again = json.loads((out / "toy.json").read_text())["steps"]
    assert {n: again[n]["seconds"] for n in before} == before and again["mtd@6-ft4"]["finetune_epochs"] == 4


def test_curve_must_increase_above_the_first_fine_tune():
    script = _script()
    with pytest.raises(SystemExit, match="must increase"):
        script._epochs_list("30,20", 10)
    with pytest.raises(SystemExit, match="above --finetune-epochs"):
        script._epochs_list("10,30", 10)
    assert script._epochs_list("", 10) == [] and script._epochs_list("30,60", 10) == [30, 60]
