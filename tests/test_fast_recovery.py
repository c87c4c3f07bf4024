"""Recovery at the speed of the compressed model: the precision switch, views that are pure functions of
(image, view), and the teacher bank that computes each view's teacher output once."""
from __future__ import annotations

import argparse
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from mtd.data import TensorDataLoader
from mtd.data.loader import KeyedBatch, view_augmentation
from mtd.planner import CompressConfig, compress
from mtd.train import finetune
from mtd.train.teacher_bank import TeacherBank
from mtd.utils.precision import Precision, native_bf16, resolve_precision


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4))


class Counting(nn.Module):
    """A teacher that counts the images it is run on."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.images = net, 0

    def forward(self, x):
        self.images += x.shape[0]
        return self.net(x)


def uint8_images(n: int, hw: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, hw, hw, 3), dtype=torch.uint8, generator=g), torch.randint(0, 4, (n,), generator=g)


# --- precision ---------------------------------------------------------------------------------------------
def test_precision_names_and_auto_follows_the_cpu(monkeypatch):
    assert resolve_precision("fp32", "cpu") == Precision(None, False, "cpu")
    assert resolve_precision("bf16", "cpu") == Precision(torch.bfloat16, True, "cpu")
    expected = "bf16" if native_bf16("cpu") else "fp32"
    assert resolve_precision("auto", "cpu").name == expected
    for flag, name in ((True, "bf16"), (False, "fp32")):  # an AVX512_BF16 host, and an AVX2-only one
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda flag=flag: flag)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        mode = resolve_precision("auto", "cpu")
        assert mode.name == name and mode.channels_last  # channels_last on CPUs in either precision
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", "cpu")


def test_config_and_cli_reject_bad_precision_and_views():
    with pytest.raises(ValueError, match="precision"):
        CompressConfig(precision="half")
    with pytest.raises(ValueError, match="finetune_views"):
        CompressConfig(finetune_views=-1)
    from mtd.commands.compress_cmd import add_parser, compress_options

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    parse = lambda *a: parser.parse_args(["compress", "--data", "x", *a])  # noqa: E731
    options = compress_options(parse("--precision", "fp32", "--finetune-views", "0"), quick=True)
    assert options["precision"] == "fp32" and options["finetune_views"] == 0
    assert compress_options(parse(), quick=True)["precision"] == "auto"
    with pytest.raises(SystemExit):
        parse("--precision", "fp16")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_finetune_in_either_precision_leaves_the_model_fp32_and_nchw(precision):
    x, y = uint8_images(64)
    model, teacher = small_net(0), small_net(1).eval()
    history = finetune(model, TensorDataLoader(x, y, 16, train=True, mean=(0.5,) * 3, std=(0.25,) * 3), epochs=1,
                       lr=0.01, teacher=teacher, progress=False, precision=precision)
    assert np.isfinite(history[-1]["train_loss"])
    weight = model[0].weight
    assert weight.dtype == torch.float32 and weight.is_contiguous()  # inputs alone go channels_last


# --- views ---------------------------------------------------------------------------------------------------
def _pixels_by_key(loader: TensorDataLoader, epochs: range) -> dict[int, torch.Tensor]:
    seen = {}
    for epoch in epochs:
        loader.set_epoch(epoch)
        for batch in loader:
            assert isinstance(batch, KeyedBatch) and len(batch) == 2
            for img, key in zip(batch[0], batch.keys.tolist()):
                seen[key] = img
    return seen


def test_the_same_view_has_the_same_pixels_in_any_batch_order_or_seed():
    x, y = uint8_images(40)
    ids = np.arange(40) * 3 + 7  # ids in a larger data set
    a = _pixels_by_key(TensorDataLoader(x, y, 7, train=True, seed=0, views=4, ids=ids, drop_last=False), range(4))
    b = _pixels_by_key(TensorDataLoader(x, y, 16, train=True, seed=5, views=4, ids=ids, drop_last=False),
                       range(4, 8))  # epochs 4..7 are views 0..3 again, in another order
    assert set(a) == set(b) and len(a) == 40 * 4
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert {k % 4 for k in a} == {0, 1, 2, 3} and {k // 4 for k in a} == set(ids.tolist())
    differing = sum(not torch.equal(a[i * 4], a[i * 4 + 1]) for i in ids.tolist())
    assert differing > 20  # views are real augmentations: most differ


def test_views_are_the_same_in_another_process():
    ids = np.array([0, 1, 5, 123456, 2 ** 39])
    here = [t.tolist() for t in view_augmentation(ids, 11)]
    code = ("import numpy as np; from mtd.data.loader import view_augmentation; "
            "print([t.tolist() for t in view_augmentation(np.array([0, 1, 5, 123456, 2 ** 39]), 11)])")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert str(here) == there.strip()
    crop_y, crop_x, _ = here
    assert all(0 <= v <= 8 for v in crop_y + crop_x)


def test_without_augmentation_there_is_one_view():
    x, y = uint8_images(10)
    loader = TensorDataLoader(x, y, 5, train=True, augment=False, views=16)
    assert loader.views == 1 and all(k < 10 for b in loader for k in b.keys.tolist())


# --- the teacher bank ----------------------------------------------------------------------------------------
def test_bank_returns_the_teachers_outputs_and_runs_it_once_per_view():
    teacher = Counting(small_net(1).eval())
    bank = TeacherBank(teacher, 100, precision="fp32")
    x = torch.randn(8, 3, 12, 12)
    keys = torch.arange(8) * 3
    with torch.no_grad():
        expected = teacher.net(x)
    out = bank(x, keys)
    torch.testing.assert_close(out, expected, rtol=2e-3, atol=2e-3)  # kept as fp16
    assert (bank.misses, bank.hits, teacher.images) == (8, 0, 8)
    again = bank(torch.cat([x[:4], torch.randn(2, 3, 12, 12)]), torch.cat([keys[:4], torch.tensor([1, 2])]))
    assert torch.equal(again[:4], out[:4]) and teacher.images == 10 and (bank.misses, bank.hits) == (10, 4)
    with pytest.raises(ValueError, match="keys must lie"):
        bank(x, keys + 90)
    with pytest.raises(ValueError, match="one key per image"):
        bank(x, keys[:3])
    with pytest.raises(RuntimeError, match="frozen"):
        bank.train()


def test_finetune_runs_the_teacher_once_per_view():
    x, y = uint8_images(32)
    teacher = Counting(small_net(1).eval())
    norm = dict(mean=(0.5,) * 3, std=(0.25,) * 3)
    finetune(small_net(0), TensorDataLoader(x, y, 8, train=True, views=2, **norm), epochs=5, lr=0.01,
             teacher=teacher, progress=False, precision="fp32")
    assert teacher.images == 32 * 2  # 5 epochs, 2 views: epochs 3-5 reuse views 0, 1, 0
    teacher.images = 0
    finetune(small_net(0), TensorDataLoader(x, y, 8, train=True, **norm), epochs=2, lr=0.01, teacher=teacher,
             progress=False, precision="fp32")
    assert teacher.images == 32 * 2  # no views: the teacher runs on every batch, as before


def test_bank_persists_and_rejects_other_or_corrupt_files(tmp_path):
    teacher = Counting(small_net(1).eval())
    path = tmp_path / "bank.npz"
    x, keys = torch.randn(6, 3, 12, 12), torch.tensor([0, 3, 4, 9, 10, 11])
    bank = TeacherBank(teacher, 12, precision="fp32", path=path, key="k1")
    out = bank(x, keys)
    assert bank.save() and path.is_file() and not bank.save()  # nothing new: not written again
    loaded = TeacherBank(teacher, 12, precision="fp32", path=path, key="k1")
    teacher.images = 0
    assert torch.equal(loaded(x, keys), out) and teacher.images == 0 and loaded.hits == 6

    def assert_recomputed(message: str, **kwargs):
        with pytest.warns(RuntimeWarning, match=message):
            fresh = TeacherBank(teacher, **{"num_keys": 12, "precision": "fp32", "path": path, "key": "k1", **kwargs})
        assert not fresh.filled.any()

    assert_recomputed("another teacher", key="k2")
    assert_recomputed("unexpected contents", num_keys=13)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    assert_recomputed("unusable")
    path.write_bytes(b"\0" * (12 * (2 * 100_000 + 1) + (2 << 20)))
    assert_recomputed("more than a bank")
    path.write_bytes(good)
    bad = TeacherBank(teacher, 12, precision="fp32", path=path, key="k1")
    bad.logits[3] = float("nan")
    bad._dirty = True
    bad.save()
    assert_recomputed("non-finite")
    with pytest.raises(ValueError, match="key"):
        TeacherBank(teacher, 12, path=path)


def test_compress_reuses_the_bank_across_calls(tmp_path):
    x, y = uint8_images(300, hw=12, seed=3)
    model = small_net(2).eval()
    norm = dict(mean=(0.5,) * 3, std=(0.25,) * 3)
    options = dict(max_drop=None, target_ratio=1.5, calib_size=32, holdout_size=40, finetune_epochs=2,
                   finetune_lr=0.001, reconstruct=False, grid="tiny", cache_dir=str(tmp_path), progress=False,
                   finetune_views=4, layers=["0"], **norm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the drop of a random net is not the point here
        _, first = compress(model, (x.numpy(), y.numpy()), **options)
        _, second = compress(model, (x.numpy(), y.numpy()), **options)
    t1, t2 = first.results["teacher"], second.results["teacher"]
    assert t1["kind"] == "bank" and t1["views"] == 1  # pairs of arrays are not augmented: one view
    assert t1["misses"] > 0 and t2["misses"] == 0 and t2["hits"] == t1["hits"] + t1["misses"]
    assert list(tmp_path.glob("teacher-bank-*.npz"))
    assert first.results["precision"] == resolve_precision("auto", "cpu").name


@pytest.mark.parametrize("method", ["cp", "tucker"])
def test_fused_ops_run_under_autocast_like_the_chain(method):
    from mtd.layers import CPConv2d, TuckerConv2d

    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 3, padding=1)
    layer = CPConv2d.from_conv(conv, rank=6) if method == "cp" else TuckerConv2d.from_conv(conv, ranks=(6, 5))
    x = torch.randn(2, 16, 9, 7).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = layer(x)  # factors are fp32, the input is cast by autocast: the op's autocast rule casts both
        layer.backend = "torch"
        chain = layer(x)
    assert fused.dtype == chain.dtype == torch.bfloat16
    torch.testing.assert_close(fused.float(), chain.float(), rtol=0.05, atol=0.05)


def test_a_bank_too_large_for_its_memory_runs_the_teacher_instead():
    teacher = Counting(small_net(1).eval())
    bank = TeacherBank(teacher, 100, precision="fp32", max_bytes=500)  # 100 keys x 4 outputs x 2 bytes = 800
    x, keys = torch.randn(4, 3, 12, 12), torch.arange(4)
    with pytest.warns(RuntimeWarning, match="exceed"):
        out = bank(x, keys)
    again = bank(x, keys)
    assert bank.passthrough and bank.logits is None and teacher.images == 8 and torch.equal(out, again)
    with pytest.raises(ValueError, match="num_keys"):
        TeacherBank(teacher, 1000, max_bytes=500)
