"""The ``mtd`` command line: user errors give one line and exit code 2; report and a tiny compress run work."""
from __future__ import annotations

import io
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from mtd.cli import main
from mtd.models import build_model, save_checkpoint
from mtd.planner import LayerPlan, Plan

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A small CIFAR-style image-folder .tar.gz (class-coloured noise images)."""
    path = tmp_path_factory.mktemp("data") / "tiny.tar.gz"
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", 12), ("test", 4)):
            for label, name in enumerate(CLASSES):
                for i in range(n):
                    img = np.clip(25 * label + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                    buf = io.BytesIO()
                    Image.fromarray(img).save(buf, format="PNG")
                    info = tarfile.TarInfo(f"{split}/{name}/{i:04d}.png")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return path


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


def test_checkpoint_of_another_model(capsys, tiny_data, vgg11_checkpoint, tmp_path):
    rc, _, err = run_cli(capsys, "compress", "--data", str(tiny_data), "--checkpoint", str(vgg11_checkpoint),
                         "--model", "vgg16", "--cache-dir", str(tmp_path))
    assert_user_error(rc, err, "holds a vgg11 model")


def test_corrupt_checkpoint(capsys, tiny_data, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage" * 100)
    rc, _, err = run_cli(capsys, "eval", "--data", str(tiny_data), "--checkpoint", str(bad))
    assert_user_error(rc, err, "not a valid mtd checkpoint")


def test_unsupported_layer(capsys, tiny_data, vgg11_checkpoint, tmp_path):
    rc, _, err = run_cli(capsys, "compress", "--data", str(tiny_data), "--checkpoint", str(vgg11_checkpoint),
                         "--layers", "features.1", "--cache-dir", str(tmp_path), "--quiet")
    assert_user_error(rc, err, "'features.1' (BatchNorm2d) cannot be compressed")


def test_console_entry_point_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mtd.cli", "eval", "--data", str(tmp_path / "x.tar"),
                           "--checkpoint", str(tmp_path / "missing.pt")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "does not exist" in proc.stderr


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


def test_compress_and_eval_on_tiny_data(capsys, tiny_data, vgg11_checkpoint, tmp_path):
    out = tmp_path / "out"
    rc, stdout, _ = run_cli(capsys, "compress", "--data", str(tiny_data), "--checkpoint", str(vgg11_checkpoint),
                            "--layers", "features.0,features.4", "--finetune-epochs", "0", "--calib-size", "64",
                            "--grid", "small", "--out", str(out), "--cache-dir", str(tmp_path), "--quiet",
                            "--max-drop", "100")
    assert rc == 0, stdout
    assert (out / "plan.json").is_file() and (out / "compressed.pt").is_file() and (out / "report" / "report.md").is_file()
    plan = Plan.load(out / "plan.json")
    assert plan.model_name == "vgg11" and plan.results["test"]["accuracy"] >= 0
    rc, stdout, _ = run_cli(capsys, "eval", "--data", str(tiny_data), "--checkpoint", str(out / "compressed.pt"),
                            "--cache-dir", str(tmp_path), "--quiet")
    assert rc == 0 and "compressed (mtd)" in stdout
    assert f"test accuracy {plan.results['test']['accuracy']:.2f}%" in stdout
