"""End-to-end smoke run of benchmarks/cifar_gpu.py --smoke on a tiny image-folder tar written here."""
from __future__ import annotations

import importlib.util
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_tiny_cifar_tar(path: Path, train_per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """A .tar.gz of ``train/<class>/N.png`` + ``test/<class>/N.png`` 32x32 images; colour depends on class."""
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", train_per_class), ("test", test_per_class)):
            for label, name in enumerate(CLASSES):
                for i in range(n):
                    base = np.array([25 * label, 255 - 25 * label, (70 * label) % 256], dtype=np.float64)
                    img = np.clip(base + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                    buf = io.BytesIO()
                    Image.fromarray(img).save(buf, format="PNG")
                    info = tarfile.TarInfo(f"{split}/{name}/{i:04d}.png")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return path


def test_gpu_benchmark_smoke_mode_runs_end_to_end(tmp_path):
    data = write_tiny_cifar_tar(tmp_path / "tiny.tar.gz", train_per_class=30, test_per_class=10)
    spec = importlib.util.spec_from_file_location("cifar_gpu", ROOT / "benchmarks" / "cifar_gpu.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "out"
    rc = script.main(["--smoke", "--data", str(data), "--out", str(out), "--models", "vgg11",
                      "--methods", "mtd,cp-vbmf,tucker-uniform", "--cache-dir", str(tmp_path / "cache"),
                      "--smoke-images", "300"])
    assert rc == 0
    results = json.loads((out / "cifar_smoke.json").read_text())["models"]["vgg11"]
    assert 0 <= results["baseline"]["accuracy"] <= 100
    rows = {r["method"]: r for r in results["rows"]}
    assert set(rows) == {"mtd", "cp-vbmf", "tucker-uniform"}
    # the uniform baseline runs at the compression MTD reached (skipped when MTD kept all dense)
    uniform = rows.pop("tucker-uniform")
    if rows["mtd"]["layer_param_ratio"] > 1.0:
        assert uniform["layer_param_ratio"] >= 0.8 * rows["mtd"]["layer_param_ratio"]
    else:
        assert uniform["skipped"] == "no target ratio"
    for row in rows.values():
        assert row["param_ratio"] >= 1.0 and row["flops_ratio"] >= 1.0
        assert row["latency_ms"]["b1"] > 0 and row["dense_latency_ms"]["b1"] > 0
    assert rows["cp-vbmf"]["param_ratio"] > 1.0  # EVBMF ranks always compress a trained VGG
    md = (out / "cifar_smoke.md").read_text()
    assert "| mtd |" in md and "| cp-vbmf |" in md
