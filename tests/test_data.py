"""CIFAR-10 readers (official python archive, image folders and their tars), cache, download, split, loader."""
import functools
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mtd.data.load as load_module
from mtd.data import (CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, TensorDataLoader, calibration_split,
                      crop_and_flip, download_cifar10, download_file, file_md5, load_cifar10)

RNG = np.random.default_rng(1234)


# ----------------------------------------------------------------------------- fixtures: writers
def random_images(n):
    return RNG.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def smooth_images(n):
    """Low-frequency images, so JPEG at high quality stays close to the original."""
    yy, xx = np.mgrid[0:32, 0:32]
    out = np.empty((n, 32, 32, 3), np.uint8)
    for i in range(n):
        a, b, c = RNG.uniform(0.5, 3.0, size=3)
        out[i, :, :, 0] = 127 + 100 * np.sin(a * xx / 32 * np.pi)
        out[i, :, :, 1] = 127 + 100 * np.cos(b * yy / 32 * np.pi)
        out[i, :, :, 2] = 40 + c * (xx + yy)  # at most 40 + 3 * 62 = 226
    return out


def write_official(root: Path, per_batch=3, label_names=CIFAR10_CLASSES):
    """The official layout: cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}, python-2 style pickles."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = random_images(per_batch)
        labels = RNG.integers(0, len(label_names), per_batch).tolist()
        chw_rows = images.transpose(0, 3, 1, 2).reshape(per_batch, 3072)  # row-major CHW
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": chw_rows, b"labels": labels,
                         b"filenames": [b"x.png"] * per_batch}, f, protocol=2)
        xs.append(images)
        ys.append(np.array(labels, np.int64))
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in label_names], b"num_vis": 3072}, f, protocol=2)
    return folder, np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5]


def make_tar(src: Path, dest: Path, arcname: str, mode="w:gz"):
    with tarfile.open(dest, mode) as tar:
        tar.add(src, arcname=arcname)
    return dest


def write_tree(root: Path, classes, per_class=2, fmt="png", images_fn=random_images):
    """train/<class>/NNNN.<fmt> and test/<class>/NNNN.<fmt>; returns {(split, class): [images in name order]}."""
    written = {}
    for split in ("train", "test"):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True)
            images = images_fn(per_class)
            for i, image in enumerate(images):
                Image.fromarray(image).save(folder / f"{i:04d}.{fmt}", quality=95) if fmt == "jpg" else \
                    Image.fromarray(image).save(folder / f"{i:04d}.{fmt}")
            written[split, cls] = images
    return written


def expected_from_tree(written, classes_in_order, split):
    xs = [written[split, c] for c in classes_in_order]
    ys = [np.full(len(written[split, c]), i, np.int64) for i, c in enumerate(classes_in_order)]
    return np.concatenate(xs), np.concatenate(ys)


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


# ----------------------------------------------------------------------------- official archive
def test_official_folder_and_archive_round_trip(tmp_path, cache):
    folder, train_x, train_y, test_x, test_y = write_official(tmp_path / "src")
    archive = make_tar(folder, tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    for source in (folder, archive, tmp_path / "src", tmp_path):  # folders *holding* the data work too
        data = load_cifar10(source, cache_dir=cache, progress=False)
        np.testing.assert_array_equal(data.train_x, train_x)
        np.testing.assert_array_equal(data.train_y, train_y)
        np.testing.assert_array_equal(data.test_x, test_x)
        np.testing.assert_array_equal(data.test_y, test_y)
        assert data.classes == CIFAR10_CLASSES
    assert data.train_x.shape == (15, 32, 32, 3) and data.train_x.dtype == np.uint8


def test_official_meta_names_are_used(tmp_path, cache):
    names = ("a", "b", "c")
    folder, *_ = write_official(tmp_path, label_names=names)
    assert load_cifar10(folder, cache_dir=cache, progress=False).classes == names


def test_official_missing_or_corrupt_batch(tmp_path, cache):
    folder, *_ = write_official(tmp_path)
    (folder / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match="data_batch_3"):
        load_cifar10(folder, cache_dir=cache, progress=False)
    other, *_ = write_official(tmp_path / "other")
    (other / "test_batch").unlink()
    archive = make_tar(other, tmp_path / "a.tar.gz", "cifar-10-batches-py")
    with pytest.raises(ValueError, match="missing CIFAR-10 file 'test_batch'"):
        load_cifar10(archive, cache_dir=cache, progress=False)


# ----------------------------------------------------------------------------- image folders
def test_png_tree_exact_and_cifar_class_order(tmp_path, cache):
    written = write_tree(tmp_path / "tree", CIFAR10_CLASSES, per_class=1)
    data = load_cifar10(tmp_path / "tree", cache_dir=cache, progress=False)
    assert data.classes == CIFAR10_CLASSES  # CIFAR order, not alphabetical (automobile < bird, ... ship < truck)
    for split in ("train", "test"):
        x, y = expected_from_tree(written, CIFAR10_CLASSES, split)
        np.testing.assert_array_equal(getattr(data, f"{split}_x"), x)
        np.testing.assert_array_equal(getattr(data, f"{split}_y"), y)


def test_other_class_sets_are_sorted(tmp_path, cache):
    classes = ["zebra", "cat", "mouse"]
    written = write_tree(tmp_path / "tree", classes, per_class=2)
    data = load_cifar10(tmp_path / "tree", cache_dir=cache, progress=False)
    assert data.classes == ("cat", "mouse", "zebra")
    x, y = expected_from_tree(written, data.classes, "train")
    np.testing.assert_array_equal(data.train_x, x)
    np.testing.assert_array_equal(data.train_y, y)


def test_jpeg_tree_approximately(tmp_path, cache):
    written = write_tree(tmp_path / "tree", ["b", "a"], per_class=3, fmt="jpg", images_fn=smooth_images)
    data = load_cifar10(tmp_path / "tree", cache_dir=cache, progress=False)
    x, y = expected_from_tree(written, ("a", "b"), "test")
    np.testing.assert_array_equal(data.test_y, y)
    error = np.abs(data.test_x.astype(np.int16) - x.astype(np.int16))
    assert error.mean() < 4 and error.max() < 64  # lossy, but clearly the same pictures
    assert np.abs(data.test_x[0].astype(int) - x[1].astype(int)).mean() > 10  # and not some other picture


@pytest.mark.parametrize("mode,suffix,arcname", [("w:gz", ".tar.gz", "."), ("w", ".tar", "cifar10"),
                                                  ("w:bz2", ".tar.bz2", "."), ("w:xz", ".tar.xz", ".")])
def test_tar_of_tree_matches_folder(tmp_path, cache, mode, suffix, arcname):
    write_tree(tmp_path / "tree", ["dog", "cat"], per_class=2)
    (tmp_path / "tree" / "train" / "cat" / "notes.txt").write_text("not an image")  # ignored, like ImageFolder
    archive = make_tar(tmp_path / "tree", tmp_path / f"data{suffix}", arcname, mode)
    from_folder = load_cifar10(tmp_path / "tree", cache_dir=cache, progress=False)
    from_tar = load_cifar10(archive, cache_dir=cache, progress=False)
    for field in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(from_tar, field), getattr(from_folder, field))
    assert from_tar.classes == from_folder.classes == ("cat", "dog")


# ----------------------------------------------------------------------------- errors
def test_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cifar10(tmp_path / "nowhere.tar.gz", cache_dir=tmp_path)


def test_tar_without_train_test(tmp_path, cache):
    (tmp_path / "x" / "images" / "cat").mkdir(parents=True)
    Image.fromarray(random_images(1)[0]).save(tmp_path / "x" / "images" / "cat" / "1.png")
    archive = make_tar(tmp_path / "x", tmp_path / "x.tar.gz", ".")
    with pytest.raises(ValueError, match="no images under train/<class>/ or test/<class>/"):
        load_cifar10(archive, cache_dir=cache, progress=False)
    with pytest.raises(ValueError, match="neither an image folder"):
        load_cifar10(tmp_path / "x", cache_dir=cache, progress=False)


def test_not_an_archive(tmp_path, cache):
    path = tmp_path / "data.tar.gz"
    path.write_bytes(b"definitely not gzip")
    with pytest.raises(ValueError, match="not a readable .tar/.tar.gz archive"):
        load_cifar10(path, cache_dir=cache)


def test_unreadable_image_is_named(tmp_path, cache):
    write_tree(tmp_path / "tree", ["a", "b"], per_class=1)
    (tmp_path / "tree" / "test" / "b" / "0000.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match=r"cannot decode image '.*test/b/0000\.png'"):
        load_cifar10(tmp_path / "tree", cache_dir=cache, progress=False)


def test_wrong_image_size_is_named(tmp_path, cache):
    write_tree(tmp_path / "tree", ["a"], per_class=1)
    Image.new("RGB", (64, 48)).save(tmp_path / "tree" / "train" / "a" / "big.png")
    archive = make_tar(tmp_path / "tree", tmp_path / "t.tar.gz", ".")
    with pytest.raises(ValueError, match=r"image '.*train/a/big\.png' is 64x48 pixels; expected 32x32"):
        load_cifar10(archive, cache_dir=cache, progress=False)


# ----------------------------------------------------------------------------- cache
def test_cache_hit_skips_decoding_and_change_invalidates(tmp_path, cache, monkeypatch):
    write_tree(tmp_path / "tree", ["a", "b"], per_class=1)
    archive = make_tar(tmp_path / "tree", tmp_path / "t.tar.gz", ".")
    calls = []
    real_read = load_module.read_source
    monkeypatch.setattr(load_module, "read_source", lambda *a, **k: calls.append(1) or real_read(*a, **k))
    first = load_cifar10(archive, cache_dir=cache, progress=False)
    second = load_cifar10(archive, cache_dir=cache, progress=False)
    assert len(calls) == 1 and len(list(cache.glob("*.npz"))) == 1
    np.testing.assert_array_equal(first.train_x, second.train_x)
    assert second.classes == ("a", "b")
    # Rewrite the archive with other images (and a newer mtime): decoded again.
    (tmp_path / "tree" / "train" / "a" / "0000.png").unlink()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "tree" / "train" / "a" / "0000.png")
    make_tar(tmp_path / "tree", archive, ".")
    os.utime(archive, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    third = load_cifar10(archive, cache_dir=cache, progress=False)
    assert len(calls) == 2
    assert third.train_x[0].max() == 0


def test_corrupt_cache_is_rebuilt(tmp_path, cache):
    write_tree(tmp_path / "tree", ["a"], per_class=1)
    first = load_cifar10(tmp_path / "tree", cache_dir=cache, progress=False)
    (cache_file,) = cache.glob("*.npz")
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    with pytest.warns(UserWarning, match="ignoring corrupt data cache"):
        again = load_cifar10(tmp_path / "tree", cache_dir=cache, progress=False)
    np.testing.assert_array_equal(again.train_x, first.train_x)
    assert np.load(cache_file)["train_x"].shape == (1, 32, 32, 3)  # rewritten


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    write_tree(tmp_path / "tree", ["a"], per_class=1)
    monkeypatch.setenv("MTD_CACHE_DIR", str(tmp_path / "envcache"))
    load_cifar10(tmp_path / "tree", progress=False)
    assert len(list((tmp_path / "envcache").glob("*.npz"))) == 1


# ----------------------------------------------------------------------------- download
def test_download_checks_md5_and_is_atomic(tmp_path):
    payload = os.urandom(3000)
    src = tmp_path / "remote.bin"
    src.write_bytes(payload)
    good = download_file(src.as_uri(), tmp_path / "out" / "file.bin", md5=file_md5(src), progress=False,
                         chunk_size=1000)
    assert good.read_bytes() == payload
    with pytest.raises(ValueError, match="md5"):
        download_file(src.as_uri(), tmp_path / "out2" / "file.bin", md5="0" * 32, progress=False)
    assert os.listdir(tmp_path / "out2") == []  # neither the file nor a temporary was left


def test_load_with_download_fetches_the_official_archive(tmp_path, monkeypatch, cache):
    folder, train_x, *_ = write_official(tmp_path / "remote")
    archive = make_tar(folder, tmp_path / "remote.tar.gz", "cifar-10-batches-py")
    fake = functools.partial(download_cifar10, url=archive.as_uri(), md5=file_md5(archive))
    monkeypatch.setattr(load_module, "download_cifar10", fake)
    data = load_cifar10(tmp_path / "data", download=True, cache_dir=cache, progress=False)
    assert (tmp_path / "data" / "cifar-10-python.tar.gz").is_file()
    np.testing.assert_array_equal(data.train_x, train_x)
    # An existing valid copy is reused, not fetched again.
    archive.unlink()
    assert download_cifar10(tmp_path / "data", url="file:///nonexistent", md5=fake.keywords["md5"],
                            progress=False) == tmp_path / "data" / "cifar-10-python.tar.gz"


# ----------------------------------------------------------------------------- calibration split
def test_calibration_split():
    train_idx, calib_idx = calibration_split(100, 10, seed=3)
    assert len(calib_idx) == 10 and len(train_idx) == 90
    assert set(train_idx).isdisjoint(calib_idx) and set(train_idx) | set(calib_idx) == set(range(100))
    again = calibration_split(100, 10, seed=3)
    np.testing.assert_array_equal(again[1], calib_idx)
    assert not np.array_equal(calibration_split(100, 10, seed=4)[1], calib_idx)
    for bad in (0, 100, 2.5):
        with pytest.raises(ValueError, match="calibration size"):
            calibration_split(100, bad)


# ----------------------------------------------------------------------------- loader
def indexed_images(n):
    """Image i is constant with value i % 251; its label is i, so images and labels can be cross-checked."""
    x = (np.arange(n) % 251).astype(np.uint8)[:, None, None, None] * np.ones((1, 32, 32, 3), np.uint8)
    return x, np.arange(n, dtype=np.int64)


def denormalise(images):
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (images.float() * std + mean) * 255


def test_eval_loader_is_ordered_and_normalised():
    x = random_images(10)
    loader = TensorDataLoader(x, np.arange(10), 4, train=False)
    assert len(loader) == 3
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    images = torch.cat([b[0] for b in batches])
    expected = (x.transpose(0, 3, 1, 2) / 255.0 - np.array(CIFAR10_MEAN)[None, :, None, None]) \
        / np.array(CIFAR10_STD)[None, :, None, None]
    np.testing.assert_allclose(images.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert torch.cat([b[1] for b in batches]).tolist() == list(range(10))


def test_train_loader_shuffles_augments_and_keeps_labels_with_images():
    x, y = indexed_images(50)
    loader = TensorDataLoader(x, y, 16, train=True, seed=7, channels_last=True)
    assert len(loader) == 3  # drop_last in training
    seen = []
    for images, labels in loader:
        assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32
        assert images.is_contiguous(memory_format=torch.channels_last)
        pixels = denormalise(images).round()
        # The centre pixel always comes from the image itself (crops move at most 4 pixels).
        assert pixels[:, 0, 16, 16].long().tolist() == (labels % 251).tolist()
        seen += labels.tolist()
    assert len(set(seen)) == 48 and seen != sorted(seen)
    assert (denormalise(images).round() == 0).any()  # some zero padding came in through a crop


def test_loader_epochs_are_deterministic_and_differ():
    x = random_images(20)
    a = TensorDataLoader(x, np.arange(20), 8, train=True, seed=1)
    b = TensorDataLoader(x, np.arange(20), 8, train=True, seed=1)
    first_a, first_b = list(a), list(b)
    for (ia, la), (ib, lb) in zip(first_a, first_b):
        assert torch.equal(ia, ib) and torch.equal(la, lb)
    second_a = list(a)  # iteration advanced to epoch 1
    assert not torch.equal(first_a[0][0], second_a[0][0])
    b.set_epoch(1)
    assert torch.equal(list(b)[0][0], second_a[0][0])


def test_crop_and_flip_matches_per_image_reference():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 8, 10), dtype=torch.uint8, generator=gen)
    cy, cx = torch.randint(0, 9, (6,), generator=gen), torch.randint(0, 9, (6,), generator=gen)
    flip = torch.tensor([True, False, True, False, True, False])
    out = crop_and_flip(images, cy, cx, flip)
    for i in range(6):
        padded = np.zeros((3, 16, 18), np.uint8)
        padded[:, 4:12, 4:14] = images[i].numpy()
        crop = padded[:, cy[i]:cy[i] + 8, cx[i]:cx[i] + 10]
        if flip[i]:
            crop = crop[:, :, ::-1]
        np.testing.assert_array_equal(out[i].numpy(), crop)


def test_distributed_shards_cover_the_data():
    x, y = indexed_images(21)
    shards = [TensorDataLoader(x, y, 4, train=True, seed=2, rank=r, world_size=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 2  # 11 samples each (padded), drop_last
    labels = [torch.cat([l for _, l in s]).tolist() for s in shards]
    assert set(labels[0]).isdisjoint(labels[1])
    full = [TensorDataLoader(x, y, 4, train=False, drop_last=False, shuffle=True, rank=r, world_size=2, seed=2)
            for r in range(2)]
    covered = [l for s in full for _, lb in s for l in lb.tolist()]
    assert set(covered) == set(range(21)) and len(covered) == 22  # one wrap-around duplicate


def test_loader_input_errors():
    x = random_images(4)
    with pytest.raises(ValueError, match="uint8"):
        TensorDataLoader(x.astype(np.float32), np.arange(4), 2, train=False)
    with pytest.raises(ValueError, match="labels must be shape"):
        TensorDataLoader(x, np.arange(3), 2, train=False)
    with pytest.raises(ValueError, match="batch_size"):
        TensorDataLoader(x, np.arange(4), 0, train=False)
    with pytest.raises(ValueError, match="rank"):
        TensorDataLoader(x, np.arange(4), 2, train=False, rank=2, world_size=2)


# ----------------------------------------------------------------------------- planner data adapter
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset  # noqa: E402

from mtd.data.adapter import as_planning_data  # noqa: E402

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def all_batches(data, indices, train=False, seed=0, batch_size=4):
    return list(data.loader(np.asarray(indices), batch_size, train=train, device=torch.device("cpu"), seed=seed))


def normalised(x_uint8_nchw, mean, std):
    return (x_uint8_nchw.float() / 255 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def test_uint8_arrays_need_an_explicit_normalisation():
    x = np.zeros((6, 20, 24, 3), np.uint8)
    with pytest.raises(ValueError, match="mean=... and std="):
        as_planning_data((x, np.arange(6) % 2))
    with pytest.raises(ValueError, match="both mean and std"):
        as_planning_data((x, np.arange(6) % 2), mean=IMAGENET_MEAN)
    with pytest.raises(ValueError, match="3 channels"):
        as_planning_data((x, np.arange(6) % 2), mean=(0.5,), std=(0.5,))


def test_uint8_arrays_of_any_size_use_the_given_normalisation_without_augmentation():
    x = torch.as_tensor(RNG.integers(0, 256, (10, 20, 24, 3), dtype=np.uint8))
    data = as_planning_data((x, np.arange(10)), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert len(data) == 10 and data.labels.dtype == torch.int64
    expected = normalised(x.permute(0, 3, 1, 2), IMAGENET_MEAN, IMAGENET_STD)
    got = torch.cat([b[0] for b in all_batches(data, [1, 3, 5, 7, 9])])
    assert got.shape == (5, 3, 20, 24)
    torch.testing.assert_close(got, expected[[1, 3, 5, 7, 9]])
    for xb, yb in all_batches(data, range(10), train=True, batch_size=2):  # shuffled, not cropped or flipped
        torch.testing.assert_close(xb, expected[yb])


def test_cifar_arrays_default_to_cifar_statistics():
    from mtd.data import CIFAR10Arrays

    x = RNG.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    arrays = CIFAR10Arrays(x, np.arange(8) % 10, x[:2], np.arange(2), CIFAR10_CLASSES)
    (xb, _), = all_batches(as_planning_data(arrays), range(4))
    torch.testing.assert_close(xb, normalised(torch.as_tensor(x[:4]).permute(0, 3, 1, 2), CIFAR10_MEAN, CIFAR10_STD))


def test_float_images_are_taken_as_normalised():
    x = torch.randn(6, 1, 9, 7)
    data = as_planning_data((x, torch.arange(6)))
    torch.testing.assert_close(torch.cat([b[0] for b in all_batches(data, range(6))]), x)
    with pytest.raises(ValueError, match="already normalised"):
        as_planning_data((x, torch.arange(6)), mean=(0.5,), std=(0.5,))


class _Uint8Images(Dataset):
    """uint8 (C, H, W) images with integer labels and no ``targets`` (labels are read item by item)."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], i % 3


def test_dataset_and_dataloader_give_the_same_batches():
    x, y = torch.randn(10, 3, 40, 28), torch.arange(10) % 4
    ds = TensorDataset(x, y)
    for source in (ds, DataLoader(ds, batch_size=3, shuffle=True)):
        data = as_planning_data(source)
        torch.testing.assert_close(data.labels, y)
        batches = all_batches(data, [0, 2, 4, 6, 8])
        assert len(data.loader(np.arange(10), 4, train=True, device=torch.device("cpu"))) == 3
        torch.testing.assert_close(torch.cat([b[0] for b in batches]), x[[0, 2, 4, 6, 8]])
        assert torch.cat([b[1] for b in batches]).dtype == torch.int64
    first = [b[1] for b in all_batches(as_planning_data(ds), range(10), train=True, seed=1)]
    again = [b[1] for b in all_batches(as_planning_data(ds), range(10), train=True, seed=1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(torch.cat(first), torch.arange(10) % 4)  # shuffled


def test_uint8_dataset_is_normalised_on_the_fly_and_labels_are_read_once():
    x = torch.as_tensor(RNG.integers(0, 256, (7, 3, 12, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8 images"):
        as_planning_data(_Uint8Images(x))
    data = as_planning_data(_Uint8Images(x), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    torch.testing.assert_close(data.labels, torch.arange(7) % 3)
    torch.testing.assert_close(torch.cat([b[0] for b in all_batches(data, range(7))]),
                               normalised(x, IMAGENET_MEAN, IMAGENET_STD))
    subset = as_planning_data(Subset(TensorDataset(torch.randn(6, 3, 4, 4), torch.arange(6)), [5, 1]))
    torch.testing.assert_close(subset.labels, torch.tensor([5, 1]))


def test_unusable_datasets_are_rejected_clearly():
    class Pil(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return Image.new("RGB", (8, 8)), 0

    class Stream(IterableDataset):
        def __iter__(self):
            yield torch.zeros(3, 4, 4), 0

    with pytest.raises(ValueError, match="ToTensor"):
        as_planning_data(Pil())
    with pytest.raises(TypeError, match="map-style"):
        as_planning_data(Stream())
    with pytest.raises(ValueError, match="empty"):
        as_planning_data(TensorDataset(torch.zeros(0, 3, 4, 4), torch.zeros(0)))
    with pytest.raises(ValueError, match="class indices"):
        as_planning_data(TensorDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2)))
    with pytest.raises(TypeError, match="Dataset or DataLoader"):
        as_planning_data(torch.zeros(2, 3, 4, 4))


def test_split_validation_moves_a_seeded_disjoint_slice():
    from mtd.data import CIFAR10Arrays

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    y = np.arange(30, dtype=np.int64) % 10
    arrays = CIFAR10Arrays(x, y, x[:20], y[:20], tuple("abcdefghij"))
    rest, val = arrays.split_validation(8, seed=3)
    assert len(rest.train_y) == 22 and len(val.train_y) == 8 and len(val.test_y) == 0
    assert np.array_equal(rest.test_x, arrays.test_x)
    joined = np.concatenate([rest.train_x, val.train_x]).reshape(30, -1)
    assert len({row.tobytes() for row in joined}) == 30  # a partition: nothing lost, nothing twice
    again = arrays.split_validation(8, seed=3)[1]
    assert np.array_equal(again.train_x, val.train_x)
    rest, val = arrays.split_validation(5, seed=3, from_test=True)
    assert len(rest.test_y) == 15 and len(val.train_y) == 5 and np.array_equal(rest.train_x, arrays.train_x)
    with pytest.raises(ValueError, match="cannot hold out 30"):
        arrays.split_validation(30)
