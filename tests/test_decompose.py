"""Decompositions: exact recovery, reported errors, balancing, warm starts, restarts and bad input."""
import warnings

import numpy as np
import pytest
import torch

from mtd.decompose import (DEFAULT_ENGINE, ENGINES, CP4Factors, CPDecompositionError, CPFactors,
                           cp4_decompose_conv, cp_decompose_conv, max_cp_rank, max_tucker_ranks, svd_decompose,
                           tucker2_decompose_conv)
from mtd.decompose import cp_als as cp_als_module


def cp3_kernel(rng, t, s, kh, kw, rank):
    a, b, c = rng.standard_normal((t, rank)), rng.standard_normal((s, rank)), rng.standard_normal((kh * kw, rank))
    return np.einsum("tr,sr,kr->tsk", a, b, c).reshape(t, s, kh, kw)


def cp4_kernel(rng, t, s, kh, kw, rank):
    fs = [rng.standard_normal((n, rank)) for n in (t, s, kh, kw)]
    return np.einsum("tr,sr,ir,jr->tsij", *fs)


def tucker_kernel(rng, t, s, kh, kw, r1, r2):
    core = rng.standard_normal((r2, r1, kh, kw))
    return np.einsum("baij,tb,sa->tsij", core, rng.standard_normal((t, r2)), rng.standard_normal((s, r1)))


def cp3_rebuild(f: CPFactors) -> np.ndarray:
    return torch.einsum("tr,rij,rs->tsij", f.last[:, :, 0, 0], f.depthwise[:, 0], f.first[:, :, 0, 0]).numpy()


def cp4_rebuild(f: CP4Factors) -> np.ndarray:
    return torch.einsum("tr,ri,rj,rs->tsij", f.last[:, :, 0, 0], f.vertical[:, 0, :, 0],
                        f.horizontal[:, 0, 0, :], f.first[:, :, 0, 0]).numpy()


def tucker_rebuild(f) -> np.ndarray:
    return torch.einsum("tb,baij,as->tsij", f.last[:, :, 0, 0], f.core, f.first[:, :, 0, 0]).numpy()


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("s,t", [(17, 17), (64, 64), (17, 64)])
def test_cp3_recovers_exact_rank(rng, s, t, engine):
    w = cp3_kernel(rng, t, s, 3, 3, 5)
    f = cp_decompose_conv(torch.from_numpy(w), 5, engine=engine)
    assert f.first.shape == (5, s, 1, 1) and f.depthwise.shape == (5, 1, 3, 3) and f.last.shape == (t, 5, 1, 1)
    assert rel(w, cp3_rebuild(f)) < 1e-4
    assert f.rel_error < 1e-4


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("s,t,kh,kw", [(17, 17, 3, 3), (64, 64, 3, 3), (17, 64, 5, 5), (17, 64, 3, 1)])
def test_cp4_recovers_exact_rank(rng, s, t, kh, kw, engine):
    w = cp4_kernel(rng, t, s, kh, kw, 5)
    f = cp4_decompose_conv(w, 5, engine=engine)
    assert f.vertical.shape == (5, 1, kh, 1) and f.horizontal.shape == (5, 1, 1, kw)
    assert rel(w, cp4_rebuild(f)) < 1e-4
    assert f.rel_error < 1e-4


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("s,t,r1,r2", [(17, 17, 3, 5), (64, 64, 5, 3), (17, 64, 17, 64)])
def test_tucker2_recovers_exact_ranks(rng, s, t, r1, r2, engine):
    w = tucker_kernel(rng, t, s, 3, 3, r1, r2)
    f = tucker2_decompose_conv(torch.from_numpy(w), (r1, r2), engine=engine)
    assert f.first.shape == (r1, s, 1, 1) and f.core.shape == (r2, r1, 3, 3) and f.last.shape == (t, r2, 1, 1)
    assert f.ranks == (r1, r2)
    assert rel(w, tucker_rebuild(f)) < 1e-4 and f.rel_error < 1e-4


def test_reported_errors_match_independent_reconstruction(rng):
    w = rng.standard_normal((12, 10, 3, 3))
    cp = cp_decompose_conv(w, 6)
    cp4 = cp4_decompose_conv(w, 6)
    tk = tucker2_decompose_conv(w, (4, 5))
    for f, rebuilt in ((cp, cp3_rebuild(cp)), (cp4, cp4_rebuild(cp4)), (tk, tucker_rebuild(tk))):
        assert 0.05 < f.rel_error < 1.0
        assert f.rel_error == pytest.approx(rel(w, rebuilt), rel=1e-9)


def test_tucker_error_matches_truncated_hosvd_bound(rng):
    # For ranks (S, r2) only the output mode is truncated: the optimum is the truncated SVD of W_(0).
    w = rng.standard_normal((9, 6, 3, 3))
    f = tucker2_decompose_conv(w, (6, 4))
    sv = np.linalg.svd(w.reshape(9, -1), compute_uv=False)
    assert f.rel_error == pytest.approx(np.linalg.norm(sv[4:]) / np.linalg.norm(sv), rel=1e-8)


def test_svd_exact_and_optimal(rng):
    low = rng.standard_normal((20, 3)) @ rng.standard_normal((3, 30))
    f = svd_decompose(torch.from_numpy(low), 3)
    assert f.first.shape == (3, 30) and f.last.shape == (20, 3)
    assert rel(low, (f.last @ f.first).numpy()) < 1e-10 and f.rel_error < 1e-10
    m = rng.standard_normal((20, 30))
    g = svd_decompose(m[:, :, None, None], 7)  # a 1x1 conv weight works too
    sv = np.linalg.svd(m, compute_uv=False)
    expected = np.linalg.norm(sv[7:]) / np.linalg.norm(sv)
    assert g.rel_error == pytest.approx(expected, rel=1e-10)
    assert rel(m, (g.last @ g.first).numpy()) == pytest.approx(expected, rel=1e-8)
    # balanced: both sides carry the same norm per component
    np.testing.assert_allclose(g.first.norm(dim=1), g.last.norm(dim=0), rtol=1e-10)


def test_cp_factor_norms_are_balanced(rng):
    w = rng.standard_normal((8, 7, 3, 3)) * 50.0
    f = cp_decompose_conv(w, 4)
    n_first = f.first.reshape(4, -1).norm(dim=1)
    n_dw = f.depthwise.reshape(4, -1).norm(dim=1)
    n_last = f.last.reshape(-1, 4).norm(dim=0)
    np.testing.assert_allclose(n_first, n_dw, rtol=1e-10)
    np.testing.assert_allclose(n_first, n_last, rtol=1e-10)
    g = cp4_decompose_conv(w, 4)
    norms = [g.first.reshape(4, -1).norm(dim=1), g.vertical.reshape(4, -1).norm(dim=1),
             g.horizontal.reshape(4, -1).norm(dim=1), g.last.reshape(-1, 4).norm(dim=0)]
    for n in norms[1:]:
        np.testing.assert_allclose(norms[0], n, rtol=1e-10)


def test_rank_above_kernel_mode_size_uses_svd_init_without_warnings(rng):
    w = cp3_kernel(rng, 17, 17, 3, 3, 12)  # rank 12 > kh*kw = 9 and > kh = 3 for CP4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = cp_decompose_conv(w, 12, n_iter_max=300, tol=1e-10)
        g = cp4_decompose_conv(cp4_kernel(rng, 17, 17, 3, 3, 5), 7)
    assert f.rel_error < 1e-3
    assert np.isfinite(g.rel_error) and g.rel_error < 1e-3


AWKWARD_EXACT_RANK = [(16, 32, 3, 1, 4), (32, 16, 1, 3, 4), (16, 16, 5, 1, 6), (8, 12, 3, 1, 3),
                      (24, 20, 3, 1, 5), (64, 32, 3, 3, 12), (17, 64, 5, 5, 5), (16, 32, 3, 3, 16)]


@pytest.mark.parametrize("t,s,kh,kw,rank", AWKWARD_EXACT_RANK)
def test_exact_rank_kernels_are_recovered_on_awkward_shapes(t, s, kh, kw, rank):
    # From the SVD start alone, 1/48 CP3 and 9/48 CP4 of these stopped above 1e-3 (up to 4.5e-2: ALS local minima).
    for seed in range(6):
        gen = np.random.default_rng(seed)
        w3, w4 = cp3_kernel(gen, t, s, kh, kw, rank), cp4_kernel(gen, t, s, kh, kw, rank)
        f3, f4 = cp_decompose_conv(w3, rank, seed=seed), cp4_decompose_conv(w4, rank, seed=seed)
        assert f3.rel_error < 1e-6 and rel(w3, cp3_rebuild(f3)) < 1e-6, (seed, f3.rel_error)
        assert f4.rel_error < 1e-6 and rel(w4, cp4_rebuild(f4)) < 1e-6, (seed, f4.rel_error)


@pytest.mark.parametrize("engine", ENGINES)
def test_nearly_exact_rank_kernel_reaches_the_noise_floor(engine):
    # rank 4 plus 1% noise: the true factors leave ~1% error, so the best rank-4 CP is at most that
    for seed in range(4):
        gen = np.random.default_rng(seed)
        w = cp4_kernel(gen, 16, 32, 3, 1, 4)
        noise = gen.standard_normal(w.shape)
        w_noisy = w + 0.01 * np.linalg.norm(w) / np.linalg.norm(noise) * noise
        floor = rel(w_noisy, w)
        assert cp_decompose_conv(w_noisy, 4, engine=engine).rel_error <= floor
        assert cp4_decompose_conv(w_noisy, 4, engine=engine).rel_error <= floor


def test_gevd_start_applies_only_where_two_modes_hold_the_rank(rng):
    w = cp3_kernel(rng, 16, 32, 3, 1, 4).reshape(16, 32, 3)
    factors = cp_als_module.gevd_init(w, 4)
    assert [f.shape for f in factors] == [(16, 4), (32, 4), (3, 4)]
    assert rel(w, cp_als_module.reconstruct(factors)) < 1e-10  # exact without any ALS sweep
    assert cp_als_module.gevd_init(w, 17) is None  # only T = 32 >= 17
    four_way = cp4_kernel(rng, 8, 32, 3, 3, 9)  # (T, S, kh*kw) = (8, 32, 9): S and the kernel hold rank 9
    factors = cp_als_module.gevd_init(four_way, 9)
    assert [f.shape for f in factors] == [(8, 9), (32, 9), (3, 9), (3, 9)]
    assert rel(four_way, cp_als_module.reconstruct(factors)) < 1e-8


@pytest.mark.parametrize("decompose", [cp_decompose_conv, cp4_decompose_conv])
def test_kernels_far_from_the_rank_keep_the_svd_start(rng, decompose, monkeypatch):
    # a Gaussian kernel (like trained ones) fits badly from the GEVD start: the result is the SVD start's
    w = rng.standard_normal((24, 20, 3, 3))
    with_check = decompose(w, 8)
    monkeypatch.setattr(cp_als_module, "gevd_init", lambda *args: None)
    without = decompose(w, 8)
    assert torch.equal(with_check.first, without.first) and with_check.rel_error == without.rel_error


@pytest.mark.parametrize("decompose", [cp_decompose_conv, cp4_decompose_conv])
@pytest.mark.parametrize("kernel", ["exact", "gaussian"])
@pytest.mark.parametrize("init", ["svd", "random"])
def test_seeded_and_deterministic(rng, decompose, kernel, init):
    w = cp4_kernel(rng, 10, 9, 3, 3, 5) if kernel == "exact" else rng.standard_normal((10, 9, 3, 3))
    a = decompose(w, 5, init=init, seed=3)
    b = decompose(w.copy(), 5, init=init, seed=3)
    for name in ("first", "last", "depthwise", "vertical", "horizontal"):
        if hasattr(a, name):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.rel_error == b.rel_error and a.n_iter == b.n_iter


def test_warm_start_from_higher_and_lower_rank(rng):
    w = rng.standard_normal((24, 20, 3, 3))
    high = cp_decompose_conv(w, 12)
    cold = cp_decompose_conv(w, 8)
    warm = cp_decompose_conv(w, 8, init=high)
    assert warm.rank == 8
    assert warm.rel_error < cold.rel_error * 1.05  # as good as a cold start (ALS local optima differ)
    # the warm start begins from the strongest components: one sweep is already far better than random
    one_sweep = cp_decompose_conv(w, 8, init=high, n_iter_max=1)
    random_sweep = cp_decompose_conv(w, 8, init="random", n_iter_max=1)
    assert one_sweep.rel_error < random_sweep.rel_error
    grown = cp_decompose_conv(w, 14, init=cold)  # padding a lower-rank solution
    assert grown.rank == 14 and grown.rel_error < cold.rel_error
    high4 = cp4_decompose_conv(w, 10)
    assert cp4_decompose_conv(w, 6, init=high4).rank == 6
    with pytest.raises(TypeError, match="CP4Factors"):
        cp_decompose_conv(w, 6, init=high4)
    with pytest.raises(ValueError, match="init factors"):
        cp_decompose_conv(w, 6, init=[np.ones((24, 3)), np.ones((20, 3))])


def test_restart_after_divergence(rng, monkeypatch):
    w = rng.standard_normal((10, 9, 3, 3))
    real_run = cp_als_module._als_run
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise cp_als_module.Diverged("NaN/Inf in the factors at sweep 3")
        return real_run(*args, **kwargs)

    monkeypatch.setattr(cp_als_module, "_als_run", flaky)
    f = cp_decompose_conv(w, 4)
    assert len(calls) == 2 and np.isfinite(f.rel_error) and f.rel_error < 1.0


def test_all_attempts_diverging_raise(rng):
    w = rng.standard_normal((10, 9, 3, 3))
    with pytest.raises(CPDecompositionError, match=r"failed in all 3 attempts.*diverging component norms"):
        cp_decompose_conv(w, 4, max_norm_ratio=1e-6, n_restarts=2)


def test_zero_kernel(rng):
    f = cp_decompose_conv(np.zeros((4, 3, 3, 3)), 2)
    assert f.rel_error == 0.0 and float(f.first.abs().sum()) == 0.0


def test_max_ranks():
    assert max_cp_rank((64, 64, 3, 3)) == (64 * 64 * 9) // (64 + 64 + 9)
    assert max_cp_rank((64, 64, 3, 3), kind="cp4") == (64 * 64 * 9) // (64 + 64 + 3 + 3)
    assert max_cp_rank((3, 3, 1, 1)) == 1  # never below 1
    assert max_cp_rank(torch.nn.Conv2d(17, 5, (1, 3))) == (5 * 17 * 3) // (5 + 17 + 3)
    assert max_tucker_ranks(torch.nn.Conv2d(17, 5, 3)) == (17, 5)
    with pytest.raises(ValueError, match="kind must be one of"):
        max_cp_rank((4, 4, 3, 3), kind="cp5")


@pytest.mark.parametrize("call,exc,match", [
    (lambda w: cp_decompose_conv(w, 0), ValueError, "CP rank must be >= 1"),
    (lambda w: cp_decompose_conv(w, 2.0), TypeError, "CP rank must be an int"),
    (lambda w: cp_decompose_conv(w, max_cp_rank(w.shape) + 1), ValueError, r"too large.*allowed 1\.\."),
    (lambda w: cp4_decompose_conv(w, -3), ValueError, "CP rank must be >= 1"),
    (lambda w: cp4_decompose_conv(w, max_cp_rank(w.shape, "cp4") + 1), ValueError, "too large"),
    (lambda w: tucker2_decompose_conv(w, (7, 2)), ValueError, r"r1 must be <= in_channels=6"),
    (lambda w: tucker2_decompose_conv(w, (2, 9)), ValueError, r"r2 <= out_channels=8"),
    (lambda w: tucker2_decompose_conv(w, (0, 2)), ValueError, "r1 must be >= 1"),
    (lambda w: tucker2_decompose_conv(w, (1, 2, 3)), ValueError, "pair"),
    (lambda w: svd_decompose(w[:, :, 0, 0], 7), ValueError, r"SVD rank 7 is too large"),
    (lambda w: svd_decompose(w, 2), ValueError, "1x1 conv weight"),
    (lambda w: cp_decompose_conv(w[0], 2), ValueError, "4-D conv weight"),
    (lambda w: cp_decompose_conv(w, 2, init="hosvd"), ValueError, "init must be"),
    (lambda w: cp_decompose_conv(w * float("nan"), 2), ValueError, "NaN or Inf"),
    (lambda w: cp_decompose_conv(torch.nn.Conv2d(6, 8, 3, groups=2), 2), ValueError, "groups=2"),
])
def test_bad_input(call, exc, match):
    w = torch.randn(8, 6, 3, 3)
    with pytest.raises(exc, match=match):
        call(w)


def test_cp_of_1x1_kernel_is_the_optimal_truncated_svd(rng):
    m = rng.standard_normal((12, 9))
    sv = np.linalg.svd(m, compute_uv=False)
    optimum = np.linalg.norm(sv[4:]) / np.linalg.norm(sv)
    for f, rebuilt in ((cp_decompose_conv(m[:, :, None, None], 4), cp3_rebuild),
                       (cp4_decompose_conv(m[:, :, None, None], 4), cp4_rebuild)):
        assert f.rel_error == pytest.approx(optimum, rel=1e-10)
        assert rel(m[:, :, None, None], rebuilt(f)) == pytest.approx(optimum, rel=1e-10)


# ---- engine="tensorly" (tensorly.decomposition.parafac / partial_tucker) ----

def test_default_engine_is_the_in_house_one():
    assert DEFAULT_ENGINE == "mtd" and set(ENGINES) == {"mtd", "tensorly"}


def test_engines_reach_comparable_error_at_a_middle_rank(rng):
    w = rng.standard_normal((24, 20, 3, 3))
    results = {}
    for engine in ENGINES:
        cp3 = cp_decompose_conv(w, 12, engine=engine)
        cp4 = cp4_decompose_conv(w, 12, engine=engine)
        tk = tucker2_decompose_conv(w, (8, 10), engine=engine)
        for f, rebuilt in ((cp3, cp3_rebuild(cp3)), (cp4, cp4_rebuild(cp4)), (tk, tucker_rebuild(tk))):
            assert f.rel_error == pytest.approx(rel(w, rebuilt), rel=1e-9)  # reported error is the real one
        results[engine] = (cp3.rel_error, cp4.rel_error, tk.rel_error)
    for ours, theirs in zip(results["mtd"], results["tensorly"]):
        assert 0.1 < ours < 1.0 and 0.1 < theirs < 1.0
        assert max(ours, theirs) / min(ours, theirs) < 1.15
    # HOOI from the same SVD init converges to the same Tucker optimum
    assert results["mtd"][2] == pytest.approx(results["tensorly"][2], rel=1e-3)


@pytest.mark.parametrize("fn,rank", [(cp_decompose_conv, 2), (cp4_decompose_conv, 2),
                                     (tucker2_decompose_conv, (2, 2))])
def test_unknown_engine_is_a_clear_error(fn, rank):
    with pytest.raises(ValueError, match=r"engine must be one of \('mtd', 'tensorly'\), got 'tensorflow'"):
        fn(torch.randn(8, 6, 3, 3), rank, engine="tensorflow")


def test_tensorly_engine_keeps_the_global_backend_and_does_not_warn(rng):
    import tensorly as tl

    w = cp3_kernel(rng, 17, 17, 3, 3, 12)  # rank 12 > kh*kw = 9: tensorly's own SVD init would warn
    previous = tl.get_backend()
    tl.set_backend("pytorch")  # a user's global choice: the engine must work in numpy and leave it alone
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            f = cp_decompose_conv(w, 12, n_iter_max=300, tol=1e-10, engine="tensorly")
            g = cp4_decompose_conv(cp4_kernel(rng, 17, 17, 3, 3, 5), 7, engine="tensorly")
        assert tl.get_backend() == "pytorch"
    finally:
        tl.set_backend(previous)
    assert f.rel_error < 1e-3 and np.isfinite(g.rel_error) and g.rel_error < 1e-3
    assert f.first.dtype == torch.float64


def test_tensorly_engine_balances_norms_and_warm_starts(rng):
    w = rng.standard_normal((8, 7, 3, 3)) * 50.0
    f = cp_decompose_conv(w, 4, engine="tensorly")
    n_first = f.first.reshape(4, -1).norm(dim=1)
    np.testing.assert_allclose(n_first, f.depthwise.reshape(4, -1).norm(dim=1), rtol=1e-10)
    np.testing.assert_allclose(n_first, f.last.reshape(-1, 4).norm(dim=0), rtol=1e-10)
    high = cp_decompose_conv(w, 10, engine="tensorly")
    one_sweep = cp_decompose_conv(w, 6, init=high, n_iter_max=1, engine="tensorly")
    random_sweep = cp_decompose_conv(w, 6, init="random", n_iter_max=1, engine="tensorly")
    assert one_sweep.rank == 6 and one_sweep.rel_error < random_sweep.rel_error


def test_tensorly_engine_restarts_and_raises_like_the_in_house_one(rng, monkeypatch):
    from mtd.decompose import tensorly_engine

    w = rng.standard_normal((10, 9, 3, 3))
    with pytest.raises(CPDecompositionError, match=r"failed in all 3 attempts.*diverging component norms"):
        cp_decompose_conv(w, 4, max_norm_ratio=1e-6, n_restarts=2, engine="tensorly")
    real_parafac, calls = tensorly_engine.parafac, []

    def nan_once(*args, **kwargs):  # the first attempt returns NaN factors, the restart is real
        calls.append(1)
        cp, errors = real_parafac(*args, **kwargs)
        if len(calls) == 1:
            cp.factors[0][:] = np.nan
        return cp, errors

    monkeypatch.setattr(tensorly_engine, "parafac", nan_once)
    f = cp_decompose_conv(w, 4, engine="tensorly")
    assert len(calls) == 2 and np.isfinite(f.rel_error) and f.rel_error < 1.0
