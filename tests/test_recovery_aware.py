"""mtd.recovery: input statistics against a direct computation, and the activation-aware
decompositions against their weight-only twins on planted problems."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtd.decompose import cp4_decompose_conv, cp_decompose_conv, svd_decompose, tucker2_decompose_conv
from mtd.layers import CP4Conv2d, CPConv2d, LowRankLinear, TuckerConv2d
from mtd.recovery import (InputStats, aware_cp, aware_cp4, aware_svd, aware_tucker2, collect_input_stats,
                          output_error)


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding="same"),
                         nn.Flatten(), nn.Linear(5 * 4 * 4, 6))


def patches_by_loops(x: torch.Tensor, k: int, stride: int, pad: int) -> torch.Tensor:
    """(N*L, S*k*k) patches, index s*k*k + i*k + j, gathered without F.unfold."""
    xp = F.pad(x, (pad, pad, pad, pad)).double()
    n, s, h, w = xp.shape
    rows = []
    for oy in range(0, h - k + 1, stride):
        for ox in range(0, w - k + 1, stride):
            rows.append(xp[:, :, oy:oy + k, ox:ox + k].reshape(n, -1))
    return torch.cat(rows)


def test_stats_match_direct_computation():
    model = tiny_model().eval()
    batches = [torch.randn(5, 3, 8, 8) for _ in range(3)]
    stats = collect_input_stats(model, batches, chunk_bytes=512)  # tiny chunks: many partial sums
    assert set(stats) == {"0", "2", "4"}
    x = torch.cat(batches)
    inputs = {"0": x}
    with torch.no_grad():
        inputs["2"] = model[1](model[0](x))
        inputs["4"] = model[3](model[2](inputs["2"]))
    for name, stride, pad in (("0", 2, 1), ("2", 1, 1)):
        inp = inputs[name].double()
        pixels = inp.permute(0, 2, 3, 1).reshape(-1, inp.shape[1])
        patches = patches_by_loops(inputs[name], 3, stride, pad)
        st = stats[name]
        assert st.count == pixels.shape[0] and st.patch_count == patches.shape[0]
        torch.testing.assert_close(st.channel_moment, pixels.T @ pixels / pixels.shape[0])
        torch.testing.assert_close(st.mean, pixels.mean(0))
        torch.testing.assert_close(st.patch_moment, patches.T @ patches / patches.shape[0])
    rows = inputs["4"].double()
    torch.testing.assert_close(stats["4"].channel_moment, rows.T @ rows / rows.shape[0])
    assert stats["4"].patch_moment is stats["4"].channel_moment and stats["4"].count == 15


def test_patch_limit_and_named_layers():
    model = tiny_model()
    stats = collect_input_stats(model, [(torch.randn(2, 3, 8, 8), torch.zeros(2))], ["2"], patch_limit=35)
    assert list(stats) == ["2"] and stats["2"].patch_moment is None  # D = 4*9 = 36 > 35
    with pytest.raises(ValueError, match="no layer named"):
        collect_input_stats(model, [torch.randn(1, 3, 8, 8)], ["nope"])
    with pytest.raises(ValueError, match="ReLU"):
        collect_input_stats(model, [torch.randn(1, 3, 8, 8)], ["1"])
    with pytest.raises(ValueError, match="never ran"):
        collect_input_stats(model, [], ["0"])


def anisotropic_data(dim: int, n: int, rng) -> np.ndarray:
    """(n, dim) samples whose covariance has eigenvalues 1 .. 1e-4 along random directions."""
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return (rng.standard_normal((n, dim)) * np.logspace(0, -2, dim)) @ q.T


def planted_kernel(rng, t=12, s=10, k=3, rank=6, noise=0.3) -> np.ndarray:
    """A kernel of CP rank ``rank`` plus ``noise`` (relative) Gaussian noise."""
    a, b, c = rng.standard_normal((t, rank)), rng.standard_normal((s, rank)), rng.standard_normal((k * k, rank))
    w = np.einsum("tr,sr,kr->tsk", a, b, c)
    w += noise * np.linalg.norm(w) / np.sqrt(w.size) * rng.standard_normal(w.shape)
    return w.reshape(t, s, k, k)


def dense(factors) -> np.ndarray:
    if hasattr(factors, "depthwise"):
        return torch.einsum("tr,rij,rs->tsij", factors.last[:, :, 0, 0], factors.depthwise[:, 0],
                            factors.first[:, :, 0, 0]).numpy()
    if hasattr(factors, "vertical"):
        return torch.einsum("tr,ri,rj,rs->tsij", factors.last[:, :, 0, 0], factors.vertical[:, 0, :, 0],
                            factors.horizontal[:, 0, 0, :], factors.first[:, :, 0, 0]).numpy()
    if hasattr(factors, "core"):
        return torch.einsum("tb,baij,as->tsij", factors.last[:, :, 0, 0], factors.core,
                            factors.first[:, :, 0, 0]).numpy()
    return (factors.last @ factors.first).numpy()


CONV_TWINS = [
    (cp_decompose_conv, aware_cp, 4),
    (cp4_decompose_conv, aware_cp4, 4),
    (tucker2_decompose_conv, aware_tucker2, (4, 5)),
]


@pytest.mark.parametrize("weight_only, aware, rank", CONV_TWINS, ids=["cp3", "cp4", "tucker2"])
def test_aware_conv_beats_weight_only_on_anisotropic_inputs(weight_only, aware, rank):
    rng = np.random.default_rng(0)
    w = planted_kernel(rng)
    x = anisotropic_data(w.shape[1] * 9, 4000, rng)
    sigma = x.T @ x / len(x)
    base = output_error(w, dense(weight_only(w, rank)), sigma)
    for start in ("weights", "whitened"):
        got = output_error(w, dense(aware(w, sigma, rank, start=start)), sigma)
        assert got < 0.92 * base, (start, got, base)  # measured: 0.67-0.90 of the weight-only error


@pytest.mark.parametrize("weight_only, aware, rank", CONV_TWINS, ids=["cp3", "cp4", "tucker2"])
def test_aware_conv_equals_weight_only_for_identity_sigma(weight_only, aware, rank):
    w = planted_kernel(np.random.default_rng(1))
    eye = np.eye(w.shape[1] * 9)
    base = output_error(w, dense(weight_only(w, rank)), eye)
    got = output_error(w, dense(aware(w, eye, rank, ridge=0.0)), eye)
    assert got <= base + 1e-9 and got > base - 1e-3


def test_aware_svd_is_the_exact_optimum_and_svd_for_identity():
    rng = np.random.default_rng(2)
    m = rng.standard_normal((9, 14))
    x = anisotropic_data(14, 500, rng)
    sigma = x.T @ x / len(x)
    aware = dense(aware_svd(m, sigma, 3, ridge=0.0))
    # the optimum via SVD-LLM's whitening: truncated SVD of M L, mapped back with L^-1
    chol = np.linalg.cholesky(sigma)
    u, sv, vt = np.linalg.svd(m @ chol)
    optimum = (u[:, :3] * sv[:3]) @ vt[:3] @ np.linalg.inv(chol)
    np.testing.assert_allclose(aware, optimum, atol=1e-8)
    assert output_error(m, aware, sigma) < 0.8 * output_error(m, dense(svd_decompose(m, 3)), sigma)
    np.testing.assert_allclose(dense(aware_svd(m, np.eye(14), 3, ridge=0.0)), dense(svd_decompose(m, 3)), atol=1e-10)


def test_aware_cp_of_1x1_conv_is_the_aware_svd():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 6, 1, 1))
    x = anisotropic_data(6, 300, rng)
    sigma = x.T @ x / len(x)
    np.testing.assert_allclose(dense(aware_cp(w, sigma, 2))[:, :, 0, 0], dense(aware_svd(w, sigma, 2)), atol=1e-10)


def test_output_error_is_the_measured_output_error_and_factors_drop_into_layers():
    torch.manual_seed(4)
    conv = nn.Conv2d(6, 7, 3, stride=2, padding=1, bias=False).double()
    linear = nn.Linear(6, 5).double()
    x = torch.randn(20, 6, 9, 9, dtype=torch.float64) * torch.linspace(0.1, 3, 6).view(1, -1, 1, 1)
    rows = torch.randn(30, 6, dtype=torch.float64) * torch.linspace(0.1, 3, 6)
    conv_stats = _stats_of(conv, x)
    for cls, aware, rank in ((CPConv2d, aware_cp, 3), (CP4Conv2d, aware_cp4, 3), (TuckerConv2d, aware_tucker2, (3, 4))):
        factors = aware(conv, conv_stats, rank)
        layer = cls.from_conv(conv, rank, backend="torch", factors=factors).double()
        with torch.no_grad():
            y, y_hat = conv(x), layer(x)
        measured = float((y - y_hat).norm() / y.norm())
        assert output_error(conv, layer.dense_weight(), conv_stats) == pytest.approx(measured, rel=1e-9)
    lin_stats = _stats_of(linear, rows)
    layer = LowRankLinear.from_linear(linear, 2, factors=aware_svd(linear, lin_stats, 2)).double()
    with torch.no_grad():
        measured = float((linear(rows) - layer(rows)).norm() / (linear(rows) - linear.bias).norm())
    assert output_error(linear, layer.to_dense().weight, lin_stats) == pytest.approx(measured, rel=1e-9)


def _stats_of(module: nn.Module, x: torch.Tensor) -> InputStats:
    return collect_input_stats(nn.Sequential(module), [x], ["0"])["0"]


def test_bad_input_raises_clear_errors():
    rng = np.random.default_rng(5)
    w = planted_kernel(rng)
    sigma = np.eye(w.shape[1] * 9)
    with pytest.raises(ValueError, match=r"must be \(90, 90\)"):
        aware_cp(w, np.eye(7), 3)
    with pytest.raises(ValueError, match="too large"):
        aware_cp(w, sigma, 10_000)
    with pytest.raises(ValueError, match="too large"):
        aware_tucker2(w, sigma, (11, 3))
    with pytest.raises(ValueError, match="too large"):
        aware_svd(np.ones((4, 5)), np.eye(5), 5)
    bad = sigma.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        aware_tucker2(w, bad, (3, 3))
    with pytest.raises(ValueError, match="no positive diagonal"):
        aware_cp4(w, np.zeros_like(sigma), 3)
    with pytest.raises(ValueError, match="ridge"):
        aware_svd(np.ones((4, 5)), np.eye(5), 2, ridge=-1.0)
    with pytest.raises(ValueError, match="start must be"):
        aware_cp(w, sigma, 3, start="svd")
    with pytest.raises(ValueError, match="rank 4, expected 3"):
        aware_cp(w, sigma, 3, start=cp_decompose_conv(w, 4))
    stats = InputStats(torch.eye(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64), 1, (3, 3))
    with pytest.raises(ValueError, match="do not fit"):
        aware_cp(w, stats, 3)
    with pytest.raises(ValueError, match="differ in shape"):
        output_error(w, w[:, :, :2], sigma)
