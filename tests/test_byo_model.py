"""Bring your own model: a non-registry CNN trained on a Dataset is compressed from a DataLoader with a
validation loader, saved, reloaded with its architecture, and exported to ONNX and through torch.export."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import mtd
from mtd import planner

CLASSES, SIZE = 4, 16
pytestmark = pytest.mark.skipif(not hasattr(planner, "CompressConfig"),
                                reason="needs the CompressConfig API of mtd.compress (val_data)")


class TinyResNet(nn.Module):
    """stem -> residual block -> strided conv -> pool -> Linear; not in mtd's registry."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                   nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(self.down(x).mean(dim=(2, 3)))


class Stripes(Dataset):
    """Normalised float (3, 16, 16) images: class k is a stripe pattern of orientation/frequency k plus noise."""

    def __init__(self, n: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.targets = torch.arange(n) % CLASSES
        ii, jj = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
        patterns = torch.stack([torch.sin(ii * 0.8), torch.sin(jj * 0.8), torch.sin((ii + jj) * 0.6),
                                torch.sin((ii - jj) * 1.2)])  # (CLASSES, H, W)
        phase = torch.randn(n, 3, 1, 1, generator=gen) * 0.3
        self.images = patterns[self.targets].unsqueeze(1) + phase + 0.5 * torch.randn(n, 3, SIZE, SIZE, generator=gen)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], int(self.targets[i])


def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    return 100.0 * hits / len(loader.dataset)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model, train = TinyResNet(), Stripes(256, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(3):
        for x, y in DataLoader(train, batch_size=64, shuffle=True):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval(), train


def test_compress_save_reload_and_deploy_a_model_of_your_own(trained, tmp_path):
    model, train = trained
    val = DataLoader(Stripes(256, seed=1), batch_size=128)
    base = accuracy(model, val)
    assert base > 90, "the synthetic task should be learnt"
    max_drop = 3.0
    compressed, plan = mtd.compress(model, DataLoader(train, batch_size=64), val_data=val, max_drop=max_drop,
                                    grid="tiny", calib_size=64, finetune_epochs=1, progress=False)
    assert isinstance(plan.results["verdict"], str) and plan.model_name is None
    assert any(lp.method != "dense" for lp in plan.layers)
    assert base - accuracy(compressed, val) <= max_drop  # the budget holds on the validation loader
    x = next(iter(val))[0][:4]
    expected = compressed.eval()(x)

    path = mtd.save(compressed, tmp_path / "byo.pt", plan=plan)
    reloaded = mtd.load(path, model=TinyResNet).eval()
    torch.testing.assert_close(reloaded(x), expected)

    ort = pytest.importorskip("onnxruntime")
    onnx_path = mtd.export_onnx(reloaded, tmp_path / "byo.onnx", x)
    (got,) = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-4)

    torch.export.save(torch.export.export(reloaded, (x,)), tmp_path / "byo.pt2")
    torch.testing.assert_close(torch.export.load(tmp_path / "byo.pt2").module()(x), expected)
