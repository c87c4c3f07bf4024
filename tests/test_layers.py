"""Decomposed layers vs independent references (dense conv of the reconstructed weight, reference chain),
on both backends, plus gradcheck, save/load, tracing, BN folding, surgery, counting and bad input."""
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtd.decompose import max_cp_rank, max_tucker_ranks
from mtd.layers import (CP4Conv2d, CPConv2d, LowRankLinear, TuckerConv2d, conv_macs, fold_batchnorm,
                        fold_batchnorm_into, get_module, compressible_layers, is_compressible, num_parameters,
                        replace_module, unsupported_reason)
from mtd_kernels import reference

pytestmark = [
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning"),
]

KINDS = ["cp3", "cp4", "tucker"]

# (S, T, kernel, stride, padding, dilation, bias, rank, batch, dtype, channels_last, input_hw)
CONFIGS = [
    (3, 17, 3, 1, 1, 1, True, 1, 1, torch.float64, False, (9, 9)),
    (17, 17, 3, 2, 2, 1, True, 5, 7, torch.float32, False, (11, 10)),
    (17, 3, 5, 1, "same", 1, False, "max", 1, torch.float64, True, (8, 9)),
    (64, 17, (1, 3), 1, "valid", 1, True, 5, 2, torch.float32, True, (7, 9)),
    (17, 64, 1, 1, 0, 1, True, 5, 1, torch.float64, False, (6, 6)),
    (3, 3, 3, 1, "same", 2, True, "max", 7, torch.float32, False, (9, 8)),
    (17, 17, 2, 1, "same", 1, True, 5, 1, torch.float64, False, (7, 8)),  # even kernel: asymmetric 'same'
    (17, 17, (3, 5), 2, (1, 2), (2, 1), False, 5, 1, torch.float32, True, (12, 13)),
    (64, 64, 3, 1, 1, 1, True, 1, 7, torch.float64, False, (6, 7)),
    (17, 17, 3, 1, "valid", 2, True, 5, 1, torch.float64, True, (10, 10)),
]


def make_layer(kind, conv, rank, backend):
    t, s = conv.out_channels, conv.in_channels
    if kind == "tucker":
        ranks = max_tucker_ranks(conv) if rank == "max" else (min(rank, s), min(rank, t))
        return TuckerConv2d.from_conv(conv, ranks, backend=backend)
    cls, k = (CPConv2d, "cp3") if kind == "cp3" else (CP4Conv2d, "cp4")
    return cls.from_conv(conv, max_cp_rank(conv, k) if rank == "max" else rank, backend=backend, n_iter_max=30)


def rebuilt_weight(kind, layer):
    """The dense kernel from the layer's factor tensors, computed here independently of the layer."""
    first = layer.first.weight[:, :, 0, 0]  # (R, S)
    last = layer.last.weight[:, :, 0, 0]  # (T, R)
    if kind == "cp3":
        dw = layer.depthwise.weight[:, 0]  # (R, kh, kw)
        return (last[:, :, None, None, None] * dw[None, :, None] * first[None, :, :, None, None]).sum(1)
    if kind == "cp4":
        v, h = layer.vertical.weight[:, 0, :, 0], layer.horizontal.weight[:, 0, 0, :]  # (R, kh), (R, kw)
        spatial = v[:, :, None] * h[:, None, :]
        return (last[:, :, None, None, None] * spatial[None, :, None] * first[None, :, :, None, None]).sum(1)
    core = layer.core.weight  # (R2, R1, kh, kw)
    return torch.einsum("tb,as,baij->tsij", last, first, core)


def reference_chain(kind, layer, x, padding):
    ws = [layer.first.weight, *[m.weight for m in layer._spatial_convs()], layer.last.weight]
    fn = {"cp3": reference.cp_conv2d_ref, "cp4": reference.cp4_conv2d_ref, "tucker": reference.tucker_conv2d_ref}
    return fn[kind](x, *ws, layer.last.bias, layer.stride, padding, layer.dilation)


@pytest.mark.parametrize("backend", ["fused", "torch"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"S{c[0]}T{c[1]}k{c[2]}s{c[3]}p{c[4]}d{c[5]}r{c[7]}")
def test_layer_matches_dense_and_reference(cfg, kind, backend):
    s, t, k, stride, padding, dilation, bias, rank, batch, dtype, cl, hw = cfg
    conv = nn.Conv2d(s, t, k, stride, padding, dilation, bias=bias).to(dtype)
    layer = make_layer(kind, conv, rank, backend)
    assert layer.first.weight.dtype == dtype and layer.has_bias == bias
    x = torch.randn(batch, s, *hw, dtype=dtype)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    out = layer(x)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    # 1) dense conv with the kernel reconstructed here (F.conv2d handles 'same' padding itself)
    expected = F.conv2d(x, rebuilt_weight(kind, layer), conv.bias, stride, padding, dilation)
    torch.testing.assert_close(out, expected, **tol)
    # 2) the layer's own dense export
    torch.testing.assert_close(out, layer.to_dense()(x), **tol)
    # 3) the unfused reference chain (symmetric padding only; 'valid' is 0)
    if padding != "same":
        torch.testing.assert_close(out, reference_chain(kind, layer, x, 0 if padding == "valid" else padding), **tol)
    if cl:
        assert out.is_contiguous(memory_format=torch.channels_last)
    # the reported error is that of the reconstructed kernel
    w = conv.weight.detach().double()
    expected_err = float((w - rebuilt_weight(kind, layer).detach().double()).norm() / w.norm())
    assert layer.rel_error == pytest.approx(expected_err, rel=1e-3 if dtype == torch.float32 else 1e-8, abs=1e-6)
    # MACs: sum over the factor convs, counted independently
    macs = conv_macs(layer.first, hw) + sum(_chain_macs(layer, hw))
    assert layer.macs(hw) == macs
    assert layer.num_parameters() == num_parameters(layer)


def _chain_macs(layer, hw):
    """MACs of the spatial and last convs, walking the chain's spatial sizes with conv_macs."""
    size, total = tuple(hw), []
    for m in [*layer._spatial_convs(), layer.last]:
        total.append(conv_macs(m, size))
        size = tuple(F.conv2d(torch.zeros(1, m.in_channels, *size, dtype=m.weight.dtype), m.weight, None,
                              m.stride, m.padding, m.dilation, m.groups).shape[2:])
    return total


@pytest.mark.parametrize("kind", KINDS)
def test_relu_flag_and_backend_switch(kind):
    conv = nn.Conv2d(5, 6, 3, padding=1).double()
    layer = make_layer(kind, conv, 3, "fused")
    layer.relu = True
    x = torch.randn(2, 5, 6, 6, dtype=torch.float64)
    fused = layer(x)
    layer.backend = "torch"
    assert layer.backend == "torch"
    torch.testing.assert_close(fused, layer(x))
    torch.testing.assert_close(fused, torch.relu(layer.to_dense()(x)))
    assert (fused >= 0).all() and (fused == 0).any()
    with pytest.raises(ValueError, match=r"backend must be one of \('fused', 'torch'\)"):
        layer.backend = "cuda"


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_fused_fp64(kind):
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1).double()
    layer = make_layer(kind, conv, 2, "fused")
    names = [n for n, _ in layer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64, requires_grad=True)

    def fn(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params))


@pytest.mark.parametrize("kind", KINDS)
def test_trained_gradients_match_torch_backend(kind):
    conv = nn.Conv2d(6, 5, 3, padding=1)
    fused = make_layer(kind, conv, 3, "fused")
    plain = make_layer(kind, conv, 3, "torch")
    x = torch.randn(2, 6, 7, 7)
    fused(x).square().sum().backward()
    plain(x).square().sum().backward()
    for (n, a), b in zip(fused.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4, msg=n)


def _from_shapes(kind, conv, layer):
    geo = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None)
    if kind == "tucker":
        return TuckerConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, layer.ranks, **geo)
    cls = CPConv2d if kind == "cp3" else CP4Conv2d
    return cls(conv.in_channels, conv.out_channels, conv.kernel_size, layer.rank, **geo)


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind):
    conv = nn.Conv2d(7, 9, (3, 2), stride=(2, 1), padding="valid", dilation=(1, 2))
    layer = make_layer(kind, conv, 4, "fused")
    x = torch.randn(3, 7, 10, 11)
    rebuilt = _from_shapes(kind, conv, layer)
    assr = rebuilt.load_state_dict(layer.state_dict())
    assert not assr.missing_keys and not assr.unexpected_keys
    torch.testing.assert_close(rebuilt(x), layer(x))
    assert rebuilt.rel_error == pytest.approx(layer.rel_error)
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    torch.testing.assert_close(loaded(x), layer(x))
    assert loaded.backend == "fused" and loaded.rel_error == pytest.approx(layer.rel_error)


@pytest.mark.parametrize("kind", KINDS)
def test_torch_backend_traces(kind):
    conv = nn.Conv2d(4, 6, 3, padding="same")
    layer = make_layer(kind, conv, 3, "torch").eval()
    x = torch.randn(2, 4, 8, 8)
    traced = torch.jit.trace(layer, x)
    y = torch.randn(3, 4, 8, 8)  # another batch size: the trace must not have baked in shapes
    torch.testing.assert_close(traced(y), layer(y))
    graph = str(traced.inlined_graph)
    assert "mtd::" not in graph and "aten::_convolution" in graph


def test_low_rank_linear():
    torch.manual_seed(0)
    low = torch.randn(12, 3) @ torch.randn(3, 20)
    lin = nn.Linear(20, 12)
    with torch.no_grad():
        lin.weight.copy_(low)
    layer = LowRankLinear.from_linear(lin, 3)
    x = torch.randn(5, 20)
    torch.testing.assert_close(layer(x), lin(x), rtol=1e-4, atol=1e-4)
    assert layer.rel_error < 1e-5
    lossy = LowRankLinear.from_linear(nn.Linear(20, 12, bias=False), 4)
    torch.testing.assert_close(lossy(x), lossy.to_dense()(x), rtol=1e-5, atol=1e-5)
    assert lossy.macs() == 4 * (20 + 12) and lossy.num_parameters() == 4 * 32
    rebuilt = LowRankLinear(20, 12, 4, bias=False)
    rebuilt.load_state_dict(lossy.state_dict())
    torch.testing.assert_close(rebuilt(x), lossy(x))
    with pytest.raises(ValueError, match="SVD rank 13 is too large"):
        LowRankLinear.from_linear(lin, 13)
    with pytest.raises(TypeError, match="expected an nn.Linear"):
        LowRankLinear.from_linear(nn.Conv2d(2, 2, 1), 1)


def _bn(channels, dims=2):
    bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(channels)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    return bn.eval()


@pytest.mark.parametrize("bias", [True, False])
def test_fold_batchnorm(bias):
    conv = nn.Conv2d(5, 6, 3, padding=1, bias=bias).double()
    bn = _bn(6).double()
    x = torch.randn(2, 5, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(fold_batchnorm(conv, bn)(x), bn(conv(x)))
    for kind in KINDS:
        layer = make_layer(kind, conv, 3, "fused")
        expected = bn(layer(x))
        assert fold_batchnorm_into(layer, bn) is layer and layer.has_bias
        torch.testing.assert_close(layer(x), expected)
    lin = LowRankLinear.from_linear(nn.Linear(8, 6, bias=bias).double(), 3)
    bn1 = _bn(6, dims=1).double()
    z = torch.randn(4, 8, dtype=torch.float64)
    expected = bn1(lin(z))
    torch.testing.assert_close(fold_batchnorm_into(lin, bn1)(z), expected)
    with pytest.raises(ValueError, match="BatchNorm has 4 features but the layer has 6 output channels"):
        fold_batchnorm(conv, _bn(4).double())
    with pytest.raises(ValueError, match="without running statistics"):
        fold_batchnorm(conv, nn.BatchNorm2d(6, track_running_stats=False))
    with pytest.raises(TypeError, match="use fold_batchnorm for nn.Conv2d"):
        fold_batchnorm_into(conv, bn)
    fused_relu = CPConv2d.from_conv(conv, 2, relu=True)
    with pytest.raises(ValueError, match="relu=True"):
        fold_batchnorm_into(fused_relu, bn)


def _model():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.Conv2d(8, 16, 3, stride=2)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


def test_surgery_on_nested_model():
    model = _model().eval()
    names = [n for n, _ in compressible_layers(model)]
    assert names == ["0", "3.1", "6"]  # the grouped conv 3.0 is skipped
    assert [n for n, _ in compressible_layers(model, lambda m, n: isinstance(m, nn.Conv2d))] == ["0", "3.1"]
    assert not is_compressible(model[3][0]) and "groups=2" in unsupported_reason(model[3][0])
    x = torch.randn(2, 3, 9, 9)
    target = get_module(model, "3.1")
    assert target is model[3][1] and get_module(model, "") is model
    layer = CPConv2d.from_conv(target, max_cp_rank(target))
    dense_of_layer = layer.to_dense()
    old = replace_module(model, "3.1", layer)
    assert old is target and model[3][1] is layer
    assert [n for n, _ in compressible_layers(model)] == ["0", "6"]  # nothing inside the CP layer
    assert "already decomposed" in unsupported_reason(layer)
    replace_module(model, "6", LowRankLinear.from_linear(model[6], 10))
    out = model(x)
    model[3][1] = dense_of_layer
    model[6] = model[6].to_dense() if hasattr(model[6], "to_dense") else model[6]
    torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(KeyError, match=r"no submodule '3\.7'.*has no child '7'"):
        get_module(model, "3.7")
    with pytest.raises(KeyError, match="no submodule 'head'"):
        replace_module(model, "head", nn.Identity())
    with pytest.raises(ValueError, match="cannot replace the model itself"):
        replace_module(model, "", nn.Identity())
    with pytest.raises(TypeError, match="must be an nn.Module"):
        replace_module(model, "0", "conv")


def test_counting_matches_formulas():
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1)
    assert conv_macs(conv, (32, 32)) == 32 * 16 * 9 * 16 * 16
    assert conv_macs(nn.Conv2d(8, 8, 3, padding="same", groups=4), (5, 6)) == 8 * 2 * 9 * 30
    cp = CPConv2d(16, 32, 3, 10, stride=2, padding=1)
    assert cp.macs((32, 32)) == 10 * (16 * 32 * 32 + 9 * 16 * 16 + 32 * 16 * 16)
    assert cp.num_parameters() == 10 * (16 + 9 + 32) + 32
    cp4 = CP4Conv2d(16, 32, 3, 10, stride=2, padding=1, bias=False)
    assert cp4.macs((32, 32)) == 10 * (16 * 32 * 32 + 3 * 16 * 32 + 3 * 16 * 16 + 32 * 16 * 16)
    assert cp4.num_parameters() == 10 * (16 + 3 + 3 + 32)
    tk = TuckerConv2d(16, 32, 3, (4, 6), stride=2, padding=1)
    assert tk.macs((32, 32)) == 16 * 4 * 32 * 32 + 4 * 6 * 9 * 16 * 16 + 6 * 32 * 16 * 16
    assert tk.num_parameters() == 16 * 4 + 6 * 4 * 9 + 6 * 32 + 32


@pytest.mark.parametrize("build,exc,match", [
    (lambda: CPConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2), 2), ValueError, "groups=2"),
    (lambda: CP4Conv2d.from_conv(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), 2), ValueError,
     "padding_mode='reflect'"),
    (lambda: TuckerConv2d.from_conv(nn.Conv2d(4, 5, 3), (5, 5)), ValueError, "r1 must be <= in_channels=4"),
    (lambda: CPConv2d.from_conv(nn.Conv2d(4, 5, 3), 0), ValueError, "CP rank must be >= 1"),
    (lambda: CPConv2d(4, 5, 3, max_cp_rank((5, 4, 3, 3)) + 1), ValueError, "too large"),
    (lambda: CP4Conv2d(4, 5, 3, 2.5), TypeError, "CP rank must be an int"),
    (lambda: CPConv2d(4, 5, 3, 2, stride=2, padding="same"), ValueError, "padding='same' is not supported"),
    (lambda: CPConv2d(4, 5, 3, 2, padding="full"), ValueError, "'same' or 'valid'"),
    (lambda: CPConv2d(4, 5, 3, 2, padding=-1), ValueError, "padding must be >= 0"),
    (lambda: CPConv2d(4, 5, 0, 2), ValueError, "kernel_size must be >= 1"),
    (lambda: TuckerConv2d(4, 5, 3, (2, 2), dilation=(1, 2, 3)), TypeError, "dilation must be an int or a pair"),
    (lambda: CPConv2d(0, 5, 3, 2), ValueError, "in_channels must be a positive int"),
    (lambda: CPConv2d(4, 5, 3, 2, backend="triton"), ValueError, "backend must be one of"),
    (lambda: CPConv2d.from_conv(nn.Linear(4, 4), 2), TypeError, "expected an nn.Conv2d"),
    (lambda: CPConv2d.from_conv(nn.ConvTranspose2d(4, 4, 3), 2), TypeError, "expected an nn.Conv2d"),
])
def test_bad_input(build, exc, match):
    with pytest.raises(exc, match=match):
        build()


def test_factors_rank_mismatch():
    from mtd.decompose import cp_decompose_conv

    conv = nn.Conv2d(4, 5, 3)
    f = cp_decompose_conv(conv.weight, 3)
    assert CPConv2d.from_conv(conv, 3, factors=f).rel_error == pytest.approx(f.rel_error)
    with pytest.raises(ValueError, match="factors have rank 3, expected 2"):
        CPConv2d.from_conv(conv, 2, factors=f)
