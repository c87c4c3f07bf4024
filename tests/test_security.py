"""Hostile files: every file mtd reads either loads or fails with a clear error — it never runs code,
never exhausts memory, and is never silently used when corrupt or foreign."""
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest

from mtd.data import CIFAR10_CLASSES, load_cifar10
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
