"""The ``mtd`` command line: user errors give one line and exit code 2; report and a tiny compress run work."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import mtd
from mtd.cli import main
from mtd.data import load_cifar10
from mtd.models import build_model, save_checkpoint
from mtd.planner import LayerPlan, Plan


@pytest.fixture(scope="module")
def vgg11_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "vgg11.pt"
    save_checkpoint(path, build_model("vgg11", width=0.125))
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_user_error(rc: int, err: str, fragment: str) -> None:
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mtd: error: ") and fragment in lines[0], err


def test_missing_data_file(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "compress", "--data", str(tmp_path / "nope.tar.gz"), "--cache-dir", str(tmp_path))
    assert_user_error(rc, err, "does not exist")


def test_corrupt_data_file(capsys, tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b this is not a gzip archive" * 10)
    rc, _, err = run_cli(capsys, "compress", "--data", str(bad), "--cache-dir", str(tmp_path))
    assert_user_error(rc, err, "cannot read data")


def test_checkpoint_of_another_model(capsys, tiny_cifar, vgg11_checkpoint, tmp_path):
    rc, _, err = run_cli(capsys, "compress", "--data", str(tiny_cifar), "--checkpoint", str(vgg11_checkpoint),
                         "--model", "vgg16", "--cache-dir", str(tmp_path))
    assert_user_error(rc, err, "holds a vgg11 model")


def test_corrupt_checkpoint(capsys, tiny_cifar, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage" * 100)
    rc, _, err = run_cli(capsys, "eval", "--data", str(tiny_cifar), "--checkpoint", str(bad))
    assert_user_error(rc, err, "not a valid mtd checkpoint")


def test_unsupported_layer(capsys, tiny_cifar, vgg11_checkpoint, tmp_path):
    rc, _, err = run_cli(capsys, "compress", "--data", str(tiny_cifar), "--checkpoint", str(vgg11_checkpoint),
                         "--layers", "features.1", "--cache-dir", str(tmp_path), "--quiet")
    assert_user_error(rc, err, "'features.1' (BatchNorm2d) cannot be")  # compressed / decomposed


def test_console_entry_point_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mtd.cli", "eval", "--data", str(tmp_path / "x.tar"),
                           "--checkpoint", str(tmp_path / "missing.pt")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "does not exist" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "mtd.cli", "eval", "--data", str(tmp_path / "x.tar"),
                           "--checkpoint", str(tmp_path / "missing.pt")], capture_output=True, text=True,
                          env={**os.environ, "MTD_TRACEBACK": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    # python -m mtd is the same command (what torchrun -m mtd runs)
    proc = subprocess.run([sys.executable, "-m", "mtd", "eval", "--data", str(tmp_path / "x.tar"),
                           "--checkpoint", str(tmp_path / "missing.pt")], capture_output=True, text=True)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_report_writes_markdown_and_plots(capsys, tmp_path):
    plan = Plan(model_name="vgg11", model_kwargs={"width": 0.25}, method="mtd",
                layers=[LayerPlan("features.0", "conv", "tucker", [3, 8], 432, 150, 442368, 150000, 0.2),
                        LayerPlan("features.4", "conv", "cp", [12], 4608, 900, 1179648, 230400, 0.3),
                        LayerPlan("classifier", "linear", "dense", [], 330, 330, 320, 320)],
                results={"model_param_ratio": 4.0, "rounds": [{"holdout_accuracy": 80.0}],
                         "test": {"base_accuracy": 81.0, "accuracy": 80.5}})
    plan.save(tmp_path / "plan.json")
    rc, out, _ = run_cli(capsys, "report", str(tmp_path / "plan.json"), "--out", str(tmp_path / "rep"))
    assert rc == 0
    assert "features.4" in out and "TOTAL" in out
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| mtd | 81 | 80.5 |" in md and "accuracy_vs_ratio.png" in md
    assert (tmp_path / "rep" / "accuracy_vs_ratio.png").stat().st_size > 1000
    assert (tmp_path / "rep" / "layers_0_mtd.png").stat().st_size > 1000
    rc, _, err = run_cli(capsys, "report", str(tmp_path / "missing.json"))
    assert_user_error(rc, err, "does not exist")


def test_compress_and_eval_on_tiny_cifar(capsys, tiny_cifar, vgg11_checkpoint, tmp_path):
    out = tmp_path / "out"
    rc, stdout, _ = run_cli(capsys, "compress", "--data", str(tiny_cifar), "--checkpoint", str(vgg11_checkpoint),
                            "--layers", "features.0,features.4", "--finetune-epochs", "0", "--calib-size", "64",
                            "--grid", "small", "--out", str(out), "--cache-dir", str(tmp_path), "--quiet",
                            "--max-drop", "99")
    assert rc == 0, stdout
    assert (out / "plan.json").is_file() and (out / "compressed.pt").is_file() and (out / "report" / "report.md").is_file()
    plan = Plan.load(out / "plan.json")
    assert plan.model_name == "vgg11" and [lp.name for lp in plan.layers] == ["features.0", "features.4"]
    # the reported accuracies are the test-set accuracies of the baseline and of the saved compressed model
    from mtd.commands.common import data_loaders
    from mtd.train import evaluate

    _, test = data_loaders(load_cifar10(tiny_cifar, cache_dir=tmp_path, progress=False), 500, torch.device("cpu"))
    baseline = mtd.models.load_model(vgg11_checkpoint)
    compressed = mtd.load(out / "compressed.pt")
    assert plan.results["test"]["base_accuracy"] == pytest.approx(100 * evaluate(baseline, test)["accuracy"])
    assert plan.results["test"]["accuracy"] == pytest.approx(100 * evaluate(compressed, test)["accuracy"])
    assert sum(p.numel() for p in compressed.parameters()) < sum(p.numel() for p in baseline.parameters())
    # compressed.pt2: the model prepared for inference (BatchNorm folded, ReLU fused), same outputs
    x = next(iter(test))[0][:3]
    program = torch.export.load(out / "compressed.pt2")
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert any("mtd." in t for t in targets) and not any("batch_norm" in t for t in targets), targets
    with torch.no_grad():
        expected = compressed.eval()(x)
        torch.testing.assert_close(program.module()(x), expected, rtol=1e-4, atol=1e-4)
        prepared = mtd.load(out / "compressed.pt", prepare_inference=True)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in prepared.features[:8])
        torch.testing.assert_close(prepared(x), expected, rtol=1e-4, atol=1e-4)
    rc, stdout, _ = run_cli(capsys, "eval", "--data", str(tiny_cifar), "--checkpoint", str(out / "compressed.pt"),
                            "--cache-dir", str(tmp_path), "--quiet")
    assert rc == 0 and "compressed (mtd)" in stdout
    assert f"test accuracy {plan.results['test']['accuracy']:.2f}%" in stdout
    assert "latency on" in stdout and "mtd (prepared)" in stdout  # against its original architecture
    # the speed the user got, on this CPU: printed, in plan.json and in the report
    speed = plan.results["speed"]
    assert [r["batch"] for r in speed["rows"]] == [1, 64] and speed["cpu"] and speed["threads"] >= 1
    assert all(r["original_ms"] > 0 and r["mtd_ms"] > 0 for r in speed["rows"])
    assert "## Speed" in (out / "report" / "report.md").read_text()


USER_MODEL = """
import torch
from torch import nn


def build():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
"""


@pytest.fixture
def user_model(tmp_path, monkeypatch):
    """``user_net:build`` importable, and a plain state_dict checkpoint of it."""
    (tmp_path / "user_net.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("user_net")
    torch.save(module.build().state_dict(), tmp_path / "weights.pt")
    yield "user_net:build", tmp_path / "weights.pt"
    sys.modules.pop("user_net", None)


def test_compress_eval_export_a_model_from_module_function(capsys, tiny_cifar, user_model, tmp_path):
    onnx = pytest.importorskip("onnx")
    spec, weights = user_model
    out = tmp_path / "out"
    norm = ["--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]
    rc, stdout, err = run_cli(capsys, "compress", "--data", str(tiny_cifar), "--model", spec, "--checkpoint",
                              str(weights), "--layers", "3", "--finetune-epochs", "0", "--calib-size", "64",
                              "--grid", "tiny", "--out", str(out), "--cache-dir", str(tmp_path), "--quiet",
                              "--max-drop", "99", "--no-speed", *norm)
    assert rc == 0, err
    plan = Plan.load(out / "plan.json")
    assert plan.model_name is None and plan.layers[0].name == "3" and "speed" not in plan.results
    rc, stdout, err = run_cli(capsys, "eval", "--data", str(tiny_cifar), "--checkpoint", str(out / "compressed.pt"),
                              "--model", spec, "--cache-dir", str(tmp_path), "--quiet", *norm)
    assert rc == 0, err
    assert f"test accuracy {plan.results['test']['accuracy']:.2f}%" in stdout
    assert "latency on" in stdout  # against the builder's uncompressed architecture
    rc, _, err = run_cli(capsys, "eval", "--data", str(tiny_cifar), "--checkpoint", str(out / "compressed.pt"),
                         "--cache-dir", str(tmp_path))
    assert_user_error(rc, err, "outside the mtd registry")
    rc, stdout, err = run_cli(capsys, "export", "--checkpoint", str(out / "compressed.pt"), "--model", spec,
                              "--out", str(tmp_path / "m.onnx"))
    assert rc == 0, err
    assert "Conv" in {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    rc, _, err = run_cli(capsys, "export", "--checkpoint", str(out / "compressed.pt"), "--model", spec,
                         "--out", str(tmp_path / "m.pt2"), "--input-shape", "2,3,32,32")
    assert rc == 0, err
    program = torch.export.load(tmp_path / "m.pt2")
    assert any("mtd." in str(n.target) for n in program.graph.nodes)
    assert not any("batch_norm" in str(n.target) for n in program.graph.nodes)  # prepared for inference
    rc, stdout, err = run_cli(capsys, "export", "--checkpoint", str(out / "compressed.pt"), "--model", spec,
                              "--out", str(tmp_path / "raw.pt2"), "--no-prepare")
    assert rc == 0 and "as trained" in stdout, err
    assert any("batch_norm" in str(n.target) for n in torch.export.load(tmp_path / "raw.pt2").graph.nodes)


def test_user_model_errors(capsys, tiny_cifar, user_model, tmp_path):
    spec, weights = user_model
    rc, _, err = run_cli(capsys, "compress", "--data", str(tiny_cifar), "--model", spec)
    assert_user_error(rc, err, "needs --checkpoint")
    rc, _, err = run_cli(capsys, "compress", "--data", str(tiny_cifar), "--model", "no_such_module:build",
                         "--checkpoint", str(weights))
    assert_user_error(rc, err, "cannot import")
    torch.save({"0.weight": torch.zeros(1)}, tmp_path / "other.pt")
    rc, _, err = run_cli(capsys, "compress", "--data", str(tiny_cifar), "--model", spec, "--checkpoint",
                         str(tmp_path / "other.pt"))
    assert_user_error(rc, err, "does not match the model")
    rc, _, err = run_cli(capsys, "export", "--checkpoint", str(weights), "--model", spec, "--out",
                         str(tmp_path / "x.onnx"), "--input-shape", "3,32,32")
    assert_user_error(rc, err, "--input-shape")


def test_bad_options_fail_before_any_training(capsys, tiny_cifar, tmp_path):
    from mtd import planner

    if not hasattr(planner, "CompressConfig"):
        pytest.skip("needs the CompressConfig API of mtd.compress")
    rc, _, err = run_cli(capsys, "compress", "--data", str(tiny_cifar), "--max-drop", "-1", "--out",
                         str(tmp_path / "out"))
    assert_user_error(rc, err, "max_drop")
    assert not (tmp_path / "out" / "baseline.pt").exists()
    for option, field in (("--search-rounds", "search_rounds"), ("--calib-size", "calib_size")):
        rc, _, err = run_cli(capsys, "compress", "--data", str(tiny_cifar), option, "0", "--out",
                             str(tmp_path / "out"))
        assert_user_error(rc, err, field)  # 0 is refused, not taken as "the default"
    assert not (tmp_path / "out" / "baseline.pt").exists()


def test_quick_job_verifies_on_images_its_baseline_never_trained_on(capsys, tiny_cifar, tmp_path):
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capsys, "compress", "--data", str(tiny_cifar), "--smoke", "--quiet", "--out", str(out),
                              "--cache-dir", str(tmp_path))
    assert rc == 0, err
    holdout = Plan.load(out / "plan.json").results["holdout"]
    assert holdout["source"] == "val_data" and holdout["images"] == 100
    assert "verifying the budget on 100 training images" in stdout
    rc, _, err = run_cli(capsys, "compress", "--data", str(tiny_cifar), "--val-images", "50")
    assert_user_error(rc, err, "--val-images needs --checkpoint")


def test_val_images_verify_on_test_images_and_report_on_the_rest(capsys, tiny_cifar, vgg11_checkpoint, tmp_path):
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capsys, "compress", "--data", str(tiny_cifar), "--checkpoint", str(vgg11_checkpoint),
                              "--layers", "features.4", "--finetune-epochs", "0", "--grid", "tiny", "--max-drop", "99",
                              "--val-images", "40", "--quiet", "--out", str(out), "--cache-dir", str(tmp_path))
    assert rc == 0, err
    plan = Plan.load(out / "plan.json")
    assert plan.results["holdout"] == {**plan.results["holdout"], "source": "val_data", "images": 40}
    assert "reported on the other 60" in stdout  # tiny_cifar: 100 test images
    rc, _, err = run_cli(capsys, "compress", "--data", str(tiny_cifar), "--checkpoint", str(vgg11_checkpoint),
                         "--val-images", "100", "--quiet", "--out", str(out), "--cache-dir", str(tmp_path))
    assert_user_error(rc, err, "cannot hold out 100 of the 100 test images")


def test_the_same_seed_trains_the_same_quick_baseline(tiny_cifar, tmp_path):
    from mtd.commands.train_cmd import train_baseline

    arrays = load_cifar10(tiny_cifar, cache_dir=str(tmp_path / "cache"))
    states = []
    for run in range(2):
        torch.manual_seed(run)  # whatever the global RNG holds before: the baseline depends on the seed only
        model, _, _ = train_baseline(arrays, "vgg11", 0.125, 1, 0.05, 64, torch.device("cpu"), 0, False,
                                     str(tmp_path / f"b{run}.pt"))
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_quick_job_fine_tunes_its_short_trained_baseline_at_its_own_rate():
    import argparse

    from mtd.commands.compress_cmd import QUICK_FINETUNE_LR, add_parser, compress_options
    from mtd.planner import CompressConfig

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    parse = lambda *a: parser.parse_args(["compress", "--data", "x", *a])  # noqa: E731
    assert compress_options(parse(), quick=True)["finetune_lr"] == QUICK_FINETUNE_LR
    assert compress_options(parse(), quick=False)["finetune_lr"] == CompressConfig.finetune_lr  # a checkpoint
    assert compress_options(parse("--finetune-lr", "0.02"), quick=True)["finetune_lr"] == 0.02
    assert QUICK_FINETUNE_LR != CompressConfig.finetune_lr
    assert compress_options(parse(), quick=True)["confidence"] == CompressConfig.confidence
    assert compress_options(parse("--confidence", "0.95"), quick=True)["confidence"] == 0.95


def test_confidence_out_of_range_fails_before_any_training(capsys, tiny_cifar, tmp_path):
    rc, _, err = run_cli(capsys, "compress", "--data", str(tiny_cifar), "--confidence", "1.5", "--out",
                         str(tmp_path / "out"))
    assert_user_error(rc, err, "confidence")
    assert not (tmp_path / "out" / "baseline.pt").exists()


def test_mtd_train_resumes_an_interrupted_run_to_the_same_weights(capsys, tiny_cifar, tmp_path, monkeypatch):
    import mtd.train.loop as loop

    common = ["train", "--data", str(tiny_cifar), "--model", "vgg11", "--width", "0.125", "--epochs", "2",
              "--lr", "0.05", "--batch-size", "64", "--quiet", "--cache-dir", str(tmp_path / "cache")]
    rc, _, err = run_cli(capsys, *common, "--out", str(tmp_path / "whole.pt"))
    assert rc == 0, err
    assert (tmp_path / "whole.pt.state").is_file()  # the default state file, kept after the run

    real, calls = loop._train_one_epoch, []

    def dies_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the session ends during the second epoch
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "_train_one_epoch", dies_in_epoch_2)
    state = tmp_path / "run.state"
    rc, _, err = run_cli(capsys, *common, "--out", str(tmp_path / "cut.pt"), "--state", str(state))
    assert rc == 130 and "interrupted" in err
    assert state.is_file() and not (tmp_path / "cut.pt").exists()
    monkeypatch.setattr(loop, "_train_one_epoch", real)
    rc, out, err = run_cli(capsys, *common, "--out", str(tmp_path / "cut.pt"), "--state", str(state), "--resume")
    assert rc == 0, err
    assert "resumed from" in out and "after epoch 1/2" in out
    whole, cut = (torch.load(tmp_path / f, weights_only=True)["state_dict"] for f in ("whole.pt", "cut.pt"))
    assert all(torch.equal(whole[k], cut[k]) for k in whole)

    # another run's state (other epochs) is refused with a clear error, not silently restarted
    rc, _, err = run_cli(capsys, *common[:8], "3", *common[9:], "--out", str(tmp_path / "x.pt"), "--state",
                         str(state), "--resume")
    assert_user_error(rc, err, "cannot resume")
    # a corrupt state file, or one that holds weights only, is refused with a clear error
    (tmp_path / "corrupt.state").write_bytes(b"not a checkpoint")
    rc, _, err = run_cli(capsys, *common, "--out", str(tmp_path / "y.pt"), "--state", str(tmp_path / "corrupt.state"),
                         "--resume")
    assert rc == 2 and err.startswith("mtd: error: ") and len(err.strip().splitlines()) == 1, err
    rc, _, err = run_cli(capsys, *common, "--out", str(tmp_path / "y.pt"), "--state", str(tmp_path / "whole.pt"),
                         "--resume")
    assert_user_error(rc, err, "holds weights only")
