"""Shared test fixtures: seeds, and a small CIFAR-like image-folder tarball (written by the same tool CI uses)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


write_tiny_cifar_tar = _load_tool("make_tiny_cifar").write_tiny_cifar_tar


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> Path:
    """``train/<class>/*.png`` (30 a class) and ``test/<class>/*.png`` (10 a class), class-coloured 32x32 noise."""
    return write_tiny_cifar_tar(tmp_path_factory.mktemp("data") / "tiny.tar.gz", train_per_class=30,
                                test_per_class=10)
