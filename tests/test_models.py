"""Models (shapes, parameter counts from an independent formula) and checkpoint files."""
import os

import pytest
import torch
from torch import nn

import mtd.models as models
from mtd.models import build_model, load_checkpoint, load_model, load_weights, save_checkpoint

# Conv output channels per VGG variant, written out here independently of mtd.models.VGG_CONFIGS.
VGG_CONVS = {
    "vgg11": [64, 128, 256, 256, 512, 512, 512, 512],
    "vgg13": [64, 64, 128, 128, 256, 256, 512, 512, 512, 512],
    "vgg16": [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512],
    "vgg19": [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512],
}


def expected_vgg_params(convs, num_classes=10, width=1.0):
    total, cin = 0, 3
    for c in convs:
        cout = max(1, round(c * width))
        total += 9 * cin * cout + 2 * cout  # 3x3 conv without bias + BN scale/shift
        cin = cout
    return total + cin * num_classes + num_classes


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a shared, busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("name", list(VGG_CONVS))
def test_vgg_param_counts_and_shapes(name):
    model = build_model(name)
    assert n_params(model) == expected_vgg_params(VGG_CONVS[name])
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == VGG_CONVS[name]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5
    model.eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vgg16_is_about_14_7_million_params():
    assert expected_vgg_params(VGG_CONVS["vgg16"]) == 14_724_042
    assert n_params(models.vgg16()) == 14_724_042


@pytest.mark.parametrize("width", [0.25, 0.5, 0.3, 0.001])
def test_width_scales_channels(width):
    model = models.vgg11(num_classes=7, width=width)
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [max(1, round(c * width)) for c in VGG_CONVS["vgg11"]]
    assert model.classifier.in_features == convs[-1] and model.classifier.out_features == 7
    assert n_params(model) == expected_vgg_params(VGG_CONVS["vgg11"], 7, width)
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 7)


def test_tiny_resnet_has_skip_strided_and_5x5_convs():
    model = build_model("tiny_resnet", width=0.5).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert any(c.kernel_size == (5, 5) and c.stride == (2, 2) for c in convs)
    assert any(c.kernel_size == (1, 1) for c in convs)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 10)
    # The skip path matters: zeroing the shortcut's BN changes the output.
    with torch.no_grad():
        model.shortcut[1].weight.zero_()
        model.shortcut[1].bias.zero_()
    assert not torch.allclose(model(x), out)


def test_build_model_errors():
    with pytest.raises(ValueError, match="unknown model 'vgg12'"):
        build_model("vgg12")
    with pytest.raises(TypeError, match="depth"):
        build_model("vgg11", depth=3)
    with pytest.raises(ValueError, match="width"):
        build_model("vgg11", width=0)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("vgg11", num_classes=0)
    assert set(models.MODEL_NAMES) == {"vgg11", "vgg13", "vgg16", "vgg19", "tiny_resnet"}


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model("vgg11", width=0.125, num_classes=5)
    model(torch.randn(4, 3, 32, 32))  # train-mode pass: BN running stats become non-trivial
    model.eval()
    path = tmp_path / "sub" / "model.pt"
    save_checkpoint(path, model, extra={"note": "hello", "acc": 0.5})
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary file left behind
    payload = load_checkpoint(path)
    assert payload["model_name"] == "vgg11" and payload["model_kwargs"] == {"width": 0.125, "num_classes": 5}
    assert payload["extra"] == {"note": "hello", "acc": 0.5}
    loaded = load_model(path).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_checkpoint_explicit_name_for_plain_module(tmp_path):
    model = models.tiny_resnet(width=0.25)  # built directly: no registry attributes
    save_checkpoint(tmp_path / "t.pt", model, model_name="tiny_resnet", model_kwargs={"width": 0.25})
    assert isinstance(load_model(tmp_path / "t.pt"), models.TinyResNet)


def test_checkpoint_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign"])
def test_checkpoint_corrupt_file(tmp_path, damage):
    path = tmp_path / "model.pt"
    save_checkpoint(path, build_model("tiny_resnet", width=0.25))
    if damage == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"this is not a checkpoint at all" * 10)
    else:
        torch.save({"weights": torch.zeros(3)}, path)  # a valid torch file, but not an mtd checkpoint
    with pytest.raises(ValueError, match="is not a valid mtd checkpoint"):
        load_model(path)


def test_checkpoint_of_another_model(tmp_path):
    path = tmp_path / "vgg11.pt"
    save_checkpoint(path, build_model("vgg11", width=0.125))
    with pytest.raises(ValueError, match=r"missing keys features\.") as info:
        load_weights(build_model("vgg13", width=0.125), path)
    assert "vgg11.pt" in str(info.value)
    with pytest.raises(ValueError, match=r"shape mismatches features\.0\.weight \(checkpoint \(8, 3, 3, 3\) "
                                         r"vs model \(16, 3, 3, 3\)\)"):
        load_weights(build_model("vgg11", width=0.25), path)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_checkpoint(path, build_model("tiny_resnet", width=0.25))
    before = path.read_bytes()

    def failing_save(obj, handle):
        handle.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, build_model("tiny_resnet", width=0.5))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.pt"]
