"""Image folders of any size and image size (mtd.data.image_dataset): decoded on demand, labelled by class folder,
cropped to the asked size, and refusing what could exhaust the machine with an error that names the file."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mtd.data import ReadLimits
from mtd.data.image_dataset import MAX_PIXELS, ImageFolderDataset

NORM = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def write_folder(root, sizes=((40, 30), (64, 64), (30, 50)), classes=("cat", "ant", "dog")):
    """One image of each size per class, each class its own colour."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            pixels = np.full((h, w, 3), 40 * (c + 1), np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    (root / classes[0] / "notes.txt").write_text("not an image")
    return root


def colour(name, classes=("cat", "ant", "dog")):
    return 40 * (classes.index(name) + 1)


def test_images_are_labelled_by_sorted_class_folder_and_cropped_to_size(tmp_path):
    root = write_folder(tmp_path / "train")
    data = ImageFolderDataset(root, size=24, train=False, **NORM)
    assert data.classes == ("ant", "cat", "dog") and len(data) == 9 and data.targets == [0] * 3 + [1] * 3 + [2] * 3
    for i in range(len(data)):
        x, y = data[i]
        assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and y == data.targets[i]
        # a uniform image stays uniform: its colour, normalised (JPEG may move it by a few levels)
        expected = (colour(data.classes[y]) / 255 - 0.5) / 0.25
        assert torch.allclose(x, torch.full_like(x, expected), atol=0.1)
    train = ImageFolderDataset(root, size=16, train=True, **NORM)
    torch.manual_seed(0)
    assert all(train[i][0].shape == (3, 16, 16) for i in range(len(train)))
    loader = torch.utils.data.DataLoader(train, batch_size=4, num_workers=2)  # decoded by worker processes
    assert sum(len(y) for _, y in loader) == 9


def test_a_validation_folder_takes_the_training_classes(tmp_path):
    train = ImageFolderDataset(write_folder(tmp_path / "train"), size=8, train=True, **NORM)
    val = ImageFolderDataset(write_folder(tmp_path / "val", classes=("dog",)), size=8, train=False,
                             classes=train.classes, **NORM)
    assert set(val.targets) == {2}
    with pytest.raises(ValueError, match="classes the labels do not know"):
        ImageFolderDataset(write_folder(tmp_path / "other", classes=("emu",)), size=8, train=False,
                           classes=train.classes, **NORM)


def test_what_could_exhaust_the_machine_is_refused_naming_the_file(tmp_path):
    root = write_folder(tmp_path / "train")
    bomb = root / "ant" / "bomb.ppm"  # a 20-byte file whose header claims 100,000 x 100,000 pixels
    bomb.write_bytes(b"P6\n100000 100000\n255\n" + b"\0" * 16)
    data = ImageFolderDataset(root, size=8, train=False, **NORM)
    index = data.files.index(str(bomb))
    with pytest.raises(ValueError, match="bomb.ppm' claims .*pixels.*not decoded"):
        data[index]
    assert MAX_PIXELS < 100000 * 100000
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    data = ImageFolderDataset(root, size=8, train=False, **NORM)
    with pytest.raises(ValueError, match="cannot decode image .*broken.jpg"):
        data[data.files.index(str(root / "cat" / "broken.jpg"))]
    with pytest.raises(ValueError, match="more than 5 files"):
        ImageFolderDataset(root, size=8, train=False, limits=ReadLimits(max_members=5), **NORM)


@pytest.mark.parametrize("kwargs, match", [(dict(size=0), "size must be"), (dict(std=(1, 1)), "three values"),
                                           (dict(std=(1, 0, 1)), "std > 0")])
def test_bad_settings_fail_at_once(tmp_path, kwargs, match):
    root = write_folder(tmp_path / "train")
    with pytest.raises(ValueError, match=match):
        ImageFolderDataset(root, **{**dict(size=8, train=False, **NORM), **kwargs})
    with pytest.raises(ValueError, match="not a folder"):
        ImageFolderDataset(tmp_path / "missing", size=8, train=False, **NORM)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no images"):
        ImageFolderDataset(tmp_path / "empty", size=8, train=False, **NORM)


FOLDER_MODEL = """
from torch import nn


def build():
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, 10))
"""


def test_compress_runs_on_a_224px_image_folder_from_the_command_line(tmp_path, monkeypatch, capsys):
    """The issue's check: 1,000 synthetic 224x224 images through ``mtd compress --smoke``."""
    import importlib
    import sys

    from mtd.cli import main
    from mtd.planner import Plan

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 80), ("test", 20)):
        for c in range(10):
            folder = tmp_path / "data" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = np.clip(rng.normal(25 * c, 30, (224, 224, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=75)
    (tmp_path / "folder_net.py").write_text(FOLDER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    torch.save(importlib.import_module("folder_net").build().state_dict(), tmp_path / "weights.pt")
    out = tmp_path / "out"
    common = ["compress", "--data", str(tmp_path / "data"), "--model", "folder_net:build", "--checkpoint",
              str(tmp_path / "weights.pt"), "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--quiet"]
    try:
        rc = main([*common, "--image-size", "224", "--smoke", "--max-drop", "99", "--out", str(out), "--no-speed"])
        stdout, err = capsys.readouterr()
        assert rc == 0, err
        assert "decoded on the fly at 224x224" in stdout and "verifying the budget on 100 test images" in stdout
        plan = Plan.load(out / "plan.json")
        assert plan.results["holdout"]["images"] == 100 and "accuracy" in plan.results["test"]
        assert (out / "compressed.pt").is_file()
        # mtd eval on a tarball of the same folder: all 200 test images, labelled as compress labelled them
        import tarfile

        with tarfile.open(tmp_path / "data.tar", "w") as tar:
            tar.add(tmp_path / "data", arcname=".")
        monkeypatch.setenv("MTD_CACHE_DIR", str(tmp_path / "cache"))
        rc = main(["eval", "--data", str(tmp_path / "data.tar"), "--image-size", "224", "--model", "folder_net:build",
                   "--checkpoint", str(out / "compressed.pt"), "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
                   "--quiet", "--no-speed"])
        stdout, err = capsys.readouterr()
        assert rc == 0 and "200 images" in stdout and "unpacking" in err, err
        # what cannot work fails at once, in one line
        for extra, fragment in ((["--image-size", "224", "--val-data", str(tmp_path / "nowhere")], "--val-data"),
                                (["--val-data", str(tmp_path / "data" / "test")], "--val-data needs --image-size"),
                                (["--image-size", "224", "--val-images", "1000"], "--val-images must be")):
            rc = main([*common, *extra, "--out", str(tmp_path / "x")])
            _, err = capsys.readouterr()
            assert rc == 2 and fragment in err, err
    finally:
        sys.modules.pop("folder_net", None)


def _tar(folder, path, arcname=".", extra=None):
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
        if extra is not None:
            extra(tar)
    return path


def test_a_tarball_is_unpacked_once_into_the_cache(tmp_path, monkeypatch, capsys):
    from mtd.data.extract import extracted_folder

    monkeypatch.setenv("MTD_CACHE_DIR", str(tmp_path / "cache"))
    write_folder(tmp_path / "src" / "train")
    write_folder(tmp_path / "src" / "test")
    tarball = _tar(tmp_path / "src", tmp_path / "data.tar.gz", arcname="mydata")  # one top folder: stepped into
    said = []
    root = extracted_folder(tarball, announce=said.append)
    assert (root / "train" / "ant").is_dir() and (root / "test" / "dog").is_dir() and len(said) == 1
    first = (root / "train" / "ant" / "0.jpg").stat().st_mtime_ns
    assert extracted_folder(tarball, announce=said.append) == root and len(said) == 1  # not unpacked again
    assert (root / "train" / "ant" / "0.jpg").stat().st_mtime_ns == first
    data = ImageFolderDataset(root / "train", size=24, train=False, **NORM)
    assert data.classes == ("ant", "cat", "dog") and len(data) == 9
    assert not [p for p in root.parent.parent.iterdir() if p.name.startswith(".")]  # no partial folder left


def test_what_a_tarball_may_not_do(tmp_path, monkeypatch):
    import io
    import tarfile

    from mtd.data import ReadLimits
    from mtd.data.extract import extracted_folder

    write_folder(tmp_path / "src")

    def climb(tar):
        info = tarfile.TarInfo("../outside.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))

    bad = _tar(tmp_path / "src", tmp_path / "bad.tar.gz", extra=climb)
    with pytest.raises(ValueError, match="points outside the archive"):
        extracted_folder(bad, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "outside.txt").exists()
    good = _tar(tmp_path / "src", tmp_path / "good.tar.gz")
    with pytest.raises(ValueError, match="more than 5 files"):
        extracted_folder(good, cache_dir=tmp_path / "cache", limits=ReadLimits(max_members=5))
    with pytest.raises(ValueError, match="bytes unpacked"):
        extracted_folder(good, cache_dir=tmp_path / "cache", limits=ReadLimits(max_bytes=100))
    (tmp_path / "junk.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ValueError, match="not a readable"):
        extracted_folder(tmp_path / "junk.tar.gz", cache_dir=tmp_path / "cache")
    extracted = tmp_path / "cache" / "extracted"
    assert not [p for p in extracted.iterdir()]  # every failure left nothing behind
