"""Hostile files: every file mtd reads either loads or fails with a clear error — it never runs code,
never exhausts memory, and is never silently used when corrupt or foreign."""
import gzip
import io
import json
import os
import pickle
import struct
import tarfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import mtd
import mtd.utils.atomic as atomic_module
from mtd.commands.common import CLIError, load_baseline
from mtd.commands.report_cmd import write_report
from mtd.data import CIFAR10_CLASSES, CIFAR10Arrays, ReadLimits, load_cifar10
from mtd.data.cache import load_cached, save_cached
from mtd.decompose import CPFactors, SVDFactors, TuckerFactors
from mtd.models.checkpoint import PLAN_KEY, load_checkpoint, save_checkpoint
from mtd.planner import FactorCache, LayerPlan, Plan
from mtd.planner.candidates import Candidate
from mtd.planner.options import load_options, save_options
from mtd.planner.select import Scored
from mtd.report import plot_accuracy_vs_ratio, plot_layer_methods, summary_row
from test_data import make_tar, random_images, write_official


class RunsCommand:
    """Pickles to ``os.system(command)``: what a crafted batch would make ``pickle.loads`` run."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _replace_batch(folder, name, obj, protocol):
    with open(folder / name, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


# ----------------------------------------------------------------------------- official CIFAR-10 batches
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("nested", [False, True])
def test_crafted_cifar_archive_never_runs_its_command(tmp_path, protocol, nested):
    marker = tmp_path / "pwned"
    folder, *_ = write_official(tmp_path / "src")
    payload = RunsCommand(f"touch {marker}")
    # The command either is the whole batch or hides as a value inside an otherwise plain batch.
    obj = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": payload} if nested else payload
    _replace_batch(folder, "data_batch_1", obj, protocol)
    archive = make_tar(folder, tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    for source in (archive, folder):
        with pytest.raises(ValueError, match=r"data_batch_1.*refused global (posix|os)\.system"):
            load_cifar10(source, cache_dir=tmp_path / "cache", progress=False)
    assert not marker.exists()
    # The same file is a working exploit for plain pickle: the test would catch a return to pickle.loads.
    pickle.loads((folder / "data_batch_1").read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("bad", [
    np.zeros((1, 3072), np.int64),  # another dtype
    np.array([[None] * 3072], dtype=object),  # an object array: its items would be unpickled objects
])
def test_batches_with_other_arrays_are_refused(tmp_path, bad):
    folder, *_ = write_official(tmp_path)
    _replace_batch(folder, "test_batch", {b"data": bad, b"labels": [0]}, 2)
    with pytest.raises(ValueError, match="test_batch.*(dtype|refused)"):
        load_cifar10(folder, use_cache=False, progress=False)


@pytest.mark.parametrize("batch, message", [
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 2 ** 40]}, "labels must be a list"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "1 labels for 2 images"),
    ({b"data": [1, 2, 3], b"labels": []}, "must be a uint8"),
    ([1, 2], "is not a dict"),
])
def test_batches_of_the_wrong_shape_are_refused(tmp_path, batch, message):
    folder, *_ = write_official(tmp_path)
    _replace_batch(folder, "data_batch_2", batch, 4)
    with pytest.raises(ValueError, match=message):
        load_cifar10(folder, use_cache=False, progress=False)


def _py2_pickle(obj) -> bytes:
    """``obj`` pickled as Python 2 with numpy 1.x wrote the official release (protocol 2, str as
    SHORT_BINSTRING/BINSTRING, ``numpy.core.multiarray._reconstruct`` and ``numpy.dtype('u1', 0, 1)``)."""
    P = pickle

    def string(b: bytes) -> bytes:
        return P.SHORT_BINSTRING + bytes([len(b)]) + b if len(b) < 256 else P.BINSTRING + struct.pack("<i", len(b)) + b

    def integer(n: int) -> bytes:
        return P.BININT + struct.pack("<i", n)

    def emit(o) -> bytes:
        if isinstance(o, bytes):
            return string(o)
        if isinstance(o, int):
            return integer(o)
        if isinstance(o, list):
            return P.EMPTY_LIST + (P.MARK + b"".join(map(emit, o)) + P.APPENDS if o else b"")
        if isinstance(o, dict):
            return P.EMPTY_DICT + P.MARK + b"".join(emit(k) + emit(v) for k, v in o.items()) + P.SETITEMS
        assert isinstance(o, np.ndarray) and o.dtype == np.uint8 and o.ndim == 2
        dtype = (P.GLOBAL + b"numpy\ndtype\n" + string(b"u1") + integer(0) + integer(1) + P.TUPLE3 + P.REDUCE
                 + P.MARK + integer(3) + string(b"|") + P.NONE * 3 + integer(-1) + integer(-1) + integer(0)
                 + P.TUPLE + P.BUILD)
        return (P.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n" + P.GLOBAL + b"numpy\nndarray\n"
                + P.MARK + integer(0) + P.TUPLE + string(b"b") + P.TUPLE3 + P.REDUCE
                + P.MARK + integer(1) + P.MARK + integer(o.shape[0]) + integer(o.shape[1]) + P.TUPLE
                + dtype + P.NEWFALSE + string(o.tobytes()) + P.TUPLE + P.BUILD)

    return P.PROTO + b"\x02" + emit(obj) + P.STOP


def test_python2_pickles_of_the_official_release_still_load(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    images = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images[name] = random_images(2)
        rows = images[name].transpose(0, 3, 1, 2).reshape(2, 3072)  # row-major CHW
        (folder / name).write_bytes(_py2_pickle({b"batch_label": name.encode(), b"data": rows,
                                                 b"labels": [1, 7], b"filenames": [b"a.png", b"b.png"]}))
    (folder / "batches.meta").write_bytes(_py2_pickle({b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                                                       b"num_vis": 3072}))
    data = load_cifar10(make_tar(folder, tmp_path / "c.tar.gz", "cifar-10-batches-py"), use_cache=False,
                        progress=False)
    np.testing.assert_array_equal(data.test_x, images["test_batch"])
    np.testing.assert_array_equal(data.train_x[:2], images["data_batch_1"])
    assert data.train_y.tolist() == [1, 7] * 5 and data.classes == CIFAR10_CLASSES


def test_truncated_official_archive_is_a_clear_error(tmp_path):
    folder, *_ = write_official(tmp_path, per_batch=50)
    archive = make_tar(folder, tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable .tar"):
        load_cifar10(archive, use_cache=False, progress=False)


# ----------------------------------------------------------------------------- image-folder tarballs and folders
def _tar_with(path, members, mode="w:gz"):
    """A tarball of ``{name: bytes}`` (``bytes`` of ``None``: a header that only *declares* a size)."""
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _png(size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(buffer, format="png")
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header (IHDR, with a valid CRC) claims ``width`` x ``height`` pixels."""
    data = _png((1, 1))
    ihdr = b"IHDR" + struct.pack(">II", width, height) + data[24:29]  # depth, colour type, ... kept
    return data[:8] + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]


def _tree_members(per_split=1):
    return {f"{split}/a/{i}.png": _png() for split in ("train", "test") for i in range(per_split)}


def test_archive_with_too_many_members_is_refused(tmp_path):
    archive = _tar_with(tmp_path / "many.tar.gz", _tree_members(per_split=30))
    with pytest.raises(ValueError, match="more than 50 files"):
        load_cifar10(archive, use_cache=False, progress=False, limits=ReadLimits(max_members=50))
    within = load_cifar10(archive, use_cache=False, progress=False, limits=ReadLimits(max_members=60))
    assert within.train_x.shape[0] == 30


def test_folder_with_too_many_files_or_bytes_is_refused(tmp_path):
    for name, data in _tree_members(per_split=30).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match="more than 50 files"):
        load_cifar10(tmp_path, use_cache=False, progress=False, limits=ReadLimits(max_members=50))
    with pytest.raises(ValueError, match="more than 1,000 bytes unpacked"):
        load_cifar10(tmp_path, use_cache=False, progress=False, limits=ReadLimits(max_bytes=1000))


def test_a_huge_member_is_refused_before_it_is_read(tmp_path):
    """A header declaring 64 GiB (with default limits): refused from the header, long before any read."""
    header = tarfile.TarInfo("train/a/huge.png")
    header.size = 64 << 30
    archive = tmp_path / "huge.tar.gz"
    with gzip.open(archive, "wb") as f:
        f.write(header.tobuf() + b"\0" * 4096)
    with pytest.raises(ValueError, match=r"more than 1,073,741,824 bytes unpacked \(reached at 'train/a/huge.png'"):
        load_cifar10(archive, use_cache=False, progress=False)


def test_the_unpacked_stream_is_capped(tmp_path):
    """Bytes no member accounts for (here a 60 kB pax header: a long name) still count against the cap."""
    archive = _tar_with(tmp_path / "pax.tar", {"train/a/" + "x" * 60_000 + ".png": b"", **_tree_members()},
                        mode="w")
    with pytest.raises(ValueError, match="unpacks to more than 15,240 bytes"):
        load_cifar10(archive, use_cache=False, progress=False, limits=ReadLimits(max_members=10, max_bytes=5000))


@pytest.mark.parametrize("name", ["../train/a/0.png", "train/../../etc/a.png", "/train/a/0.png"])
def test_members_outside_the_archive_are_refused(tmp_path, name):
    archive = _tar_with(tmp_path / "evil.tar.gz", {**_tree_members(), name: _png()})
    with pytest.raises(ValueError, match="points outside the archive"):
        load_cifar10(archive, use_cache=False, progress=False)


@pytest.mark.parametrize("side, message", [
    (9000, r"image '.*bomb\.png' is 9000x9000 pixels; expected 32x32"),  # from the header: 243 MB never decoded
    (30000, r"cannot decode image '.*bomb\.png'.*decompression bomb"),  # PIL's own limit, before our check
])
def test_an_image_claiming_a_huge_size_is_never_decoded(tmp_path, side, message):
    archive = _tar_with(tmp_path / "bomb.tar.gz", {**_tree_members(), "train/a/bomb.png": _png_claiming(side, side)})
    with pytest.raises(ValueError, match=message):
        load_cifar10(archive, use_cache=False, progress=False)


def test_read_limits_are_validated():
    with pytest.raises(ValueError, match="max_members must be a positive int"):
        ReadLimits(max_members=0)
    assert ReadLimits().max_decoded_bytes > 60_000 * 32 * 32 * 3  # CIFAR-10 decoded fits the default


# ----------------------------------------------------------------------------- the decoded-data cache
def test_foreign_or_hostile_data_cache_is_rebuilt(tmp_path):
    folder, train_x, *_ = write_official(tmp_path / "src")
    cache = tmp_path / "cache"
    load_cifar10(folder, cache_dir=cache, progress=False)
    (cache_file,) = cache.glob("cifar-*.npz")
    key = cache_file.stem.removeprefix("cifar-")
    other = cache_file.with_name("cifar-000000000000000000000000.npz")
    other.write_bytes(cache_file.read_bytes())  # a valid cache, but written for another key
    with pytest.warns(UserWarning, match="written for key"):
        assert load_cached(other) is None
    np.savez(cache_file, key=np.array(key), train_x=np.array([RunsCommand("true")], dtype=object))
    with pytest.warns(UserWarning, match="ignoring corrupt data cache"):
        again = load_cifar10(folder, cache_dir=cache, progress=False)  # decoded again and rewritten
    np.testing.assert_array_equal(again.train_x, train_x)
    np.testing.assert_array_equal(load_cached(cache_file).train_x, train_x)
    np.savez(cache_file, key=np.array(key), train_x=np.zeros(2 << 20, np.uint8))  # 2 MiB: over 1 image + 1 MiB
    with pytest.warns(UserWarning, match="bytes unpacked, more than"):
        assert load_cached(cache_file, ReadLimits(max_members=1)) is None


# ----------------------------------------------------------------------------- the factor and score caches
def test_damaged_or_foreign_factor_cache_entries_are_recomputed(tmp_path):
    weight = torch.randn(8, 6, 3, 3)
    cases = (("cp", [4]), ("tucker", [3, 2]))
    fresh = {method: FactorCache(tmp_path).factors(weight, method, ranks) for method, ranks in cases}  # on disk
    (cp_entry,), (tucker_entry,) = tmp_path.glob("*-cp-*.pt"), tmp_path.glob("*-tucker-*.pt")
    torch.save({"first": torch.zeros(4, 6, 1, 1), "depthwise": torch.zeros(4, 1, 3, 3),  # rank 4 vs last's 5
                "last": torch.zeros(8, 5, 1, 1), "rel_error": 0.0}, cp_entry)
    tucker_entry.write_bytes(pickle.dumps(RunsCommand(f"touch {tmp_path / 'pwned'}")))
    cache = FactorCache(tmp_path)
    for method, ranks in cases:
        torch.testing.assert_close(cache.factors(weight, method, ranks).first, fresh[method].first, rtol=0, atol=0)
    assert cache.misses == 2 and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("factors, message", [
    (lambda: CPFactors(torch.zeros(4, 6, 1, 1), torch.zeros(4, 1, 3, 3), torch.zeros(8, 5, 1, 1), 0.0), "R=4"),
    (lambda: TuckerFactors(torch.zeros(3, 6, 1, 1), torch.zeros(2, 3, 3), torch.zeros(8, 2, 1, 1), 0.0),
     r"core must be a floating-point tensor of shape \(R2 R1 kh kw\)"),
    (lambda: SVDFactors(torch.zeros(2, 5), torch.zeros(3, 2, dtype=torch.long), 0.0), "floating-point"),
    (lambda: SVDFactors(torch.zeros(2, 5), torch.zeros(3, 2), "0.1"), "rel_error must be a number"),
])
def test_factor_types_refuse_inconsistent_shapes(factors, message):
    with pytest.raises(ValueError, match=message):
        factors()


def _scores():
    return {"conv": [Scored(Candidate("dense"), 100, 1000), Scored(Candidate("cp", (4,)), 20, 200, 0.1, 0.5, 1.0)]}


def test_score_cache_round_trips_and_refuses_foreign_files(tmp_path):
    path = tmp_path / "scores-abc.json"
    save_options(path, _scores())
    assert load_options(path) == _scores()
    assert load_options(tmp_path / "scores-missing.json") is None  # absent: silently None
    other = tmp_path / "scores-def.json"
    other.write_text(path.read_text())  # written for another key
    data = json.loads(path.read_text())
    data["layers"]["conv"][1]["params"] = "20"
    bad_type = tmp_path / "scores-abc.json"
    for file, text, message in [(other, None, "written for 'scores-def'"),
                                (bad_type, json.dumps(data), "params='20' is not a int"),
                                (tmp_path / "scores-x.json", "[1, 2]", "not an mtd-scores file"),
                                (tmp_path / "scores-y.json", "{not json", "JSONDecodeError")]:
        if text is not None:
            file.write_text(text)
        with pytest.warns(UserWarning, match=message):
            assert load_options(file) is None


# ----------------------------------------------------------------------------- plans, checkpoints, mtd.save files
def _plan_dict():
    return Plan(model_name="vgg11", model_kwargs={}, method="mtd",
                layers=[LayerPlan("features.0", "conv", "cp", [4], 100, 20)]).to_dict()


@pytest.mark.parametrize("damage, message", [
    (lambda d: d["layers"].append(3), "layer 1 is a int"),
    (lambda d: d["layers"][0].pop("method"), "has no 'method'"),
    (lambda d: d["layers"][0].update(ranks=["4"]), r"ranks=\['4'\], expected list of ints"),
    (lambda d: d["layers"][0].update(params_after=2.5), "params_after=2.5, expected int"),
    (lambda d: d["layers"][0].update(params_after=True), "params_after=True"),
    (lambda d: d["layers"][0].update(sensitivity=[1]), "sensitivity=\\[1\\], expected dict or NoneType"),
    (lambda d: d.update(model_kwargs=None), "model_kwargs=None, expected dict"),
    (lambda d: d.update(layers={"a": 1}), "a 'layers' list"),
    (lambda d: d.update(format_version="1"), "format version '1'"),
])
def test_damaged_plans_are_clear_errors(tmp_path, damage, message):
    data = _plan_dict()
    assert Plan.from_dict(data).layers[0].ranks == [4]
    damage(data)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        Plan.load(path)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "mtd-checkpoint", "state_dict": {}, "x": RunsCommand(f"touch {marker}")}, path)
    with pytest.raises(ValueError, match="not a valid mtd checkpoint"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="not a valid mtd checkpoint"):
        mtd.load(path, model=nn.Linear(2, 2))
    with pytest.raises(CLIError, match="cannot be read"):
        load_baseline(str(path), "mtd.models:tiny_resnet", None)
    assert not marker.exists()


def test_a_saved_model_with_a_damaged_plan_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    data = _plan_dict()
    data["layers"][0]["ranks"] = "4"
    save_checkpoint(path, nn.Linear(2, 2), extra={PLAN_KEY: json.dumps(data)})
    with pytest.raises(ValueError, match="holds a damaged compression plan"):
        mtd.load(path, model=nn.Linear(2, 2))


# ----------------------------------------------------------------------------- atomic writes
def _writers(tmp_path):
    plan = Plan.from_dict(_plan_dict())
    plan.results = {"test": {"accuracy": 80.0, "base_accuracy": 81.0}, "model_param_ratio": 2.0}
    arrays = CIFAR10Arrays(np.zeros((1, 32, 32, 3), np.uint8), np.zeros(1, np.int64),
                           np.zeros((1, 32, 32, 3), np.uint8), np.zeros(1, np.int64), ("a",))
    return {
        "plan.json": lambda p: plan.save(p),
        "checkpoint.pt": lambda p: save_checkpoint(p, nn.Linear(2, 2)),
        "saved.pt": lambda p: mtd.save(nn.Linear(2, 2), p, plan=plan),
        "scores-k.json": lambda p: save_options(p, _scores()),
        "cifar-k.npz": lambda p: save_cached(p, arrays),
        "ratio.png": lambda p: plot_accuracy_vs_ratio([summary_row(plan)], p),
        "layers.png": lambda p: plot_layer_methods(plan, p),
        "report/report.md": lambda p: write_report([plan], str(p.parent), "t"),
    }


@pytest.mark.parametrize("name", list(_writers(None)))
def test_every_write_is_atomic(tmp_path, monkeypatch, name):
    """A write killed before its rename leaves the old file, whole, and no temporary file."""
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"old")

    def killed(src, dst):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(atomic_module.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        _writers(tmp_path)[name](path)
    assert path.read_bytes() == b"old"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
