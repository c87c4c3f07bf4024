"""torch.ops.mtd.rank_run (a whole run of rank bridges in one call) and RankSpaceRun's "run" path.

The op is checked against its plain-PyTorch description (mtd_kernels/ops/rank_run.py: the bridges one after
the other) in float64 and float32, with its factors packed once and packed per call, over chains that reach
every kind of spatial stage, tiny and large maps and batch sizes; the prepared models against their originals.
"""
from __future__ import annotations

import pytest
import torch

import mtd
import mtd_kernels
from mtd.layers.rank_space import RankSpaceRun
from mtd_kernels import reference
from mtd_kernels.ops.rank_run import bridge_meta
from _op_cases import RUN_CASES, make_run_args, map_tensors, run_reference_output

TOL = {torch.float32: 2e-5, torch.float64: 1e-12}  # max |out - ref| / max(1, max |ref|), as for rank_bridge


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.abs().max().clamp_min(1.0)).item()


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", list(RUN_CASES))
def test_matches_the_reference(name, dtype, packed):
    x, weights, meta, _ = make_run_args(name, dtype)
    pk = mtd_kernels.rank_run_pack(weights, meta) if packed else []
    out = torch.ops.mtd.rank_run(x, weights, meta, pk)
    ref = run_reference_output((x, weights, meta, []))
    assert out.shape == ref.shape and out.dtype == dtype
    assert rel_err(out, ref) <= TOL[dtype]
    assert out.is_contiguous(memory_format=torch.channels_last)  # the input's layout


def test_bridge_by_bridge_equals_one_call():
    """The op is the bridges in sequence: the same numbers as one rank_bridge call per bridge."""
    from mtd_kernels._register import run_bridge_by_bridge

    x, weights, meta, _ = make_run_args("vgg-start", torch.float64)
    torch.testing.assert_close(torch.ops.mtd.rank_run(x, weights, meta, []), run_bridge_by_bridge(x, weights, meta, []),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", ["nchw", "view"])
def test_other_layouts(layout):
    x, weights, meta, _ = make_run_args("vgg-start", torch.float32, layout)
    out = torch.ops.mtd.rank_run(x, weights, meta, mtd_kernels.rank_run_pack(weights, meta))
    assert rel_err(out, run_reference_output((x, weights, meta, []))) <= TOL[torch.float32]
    assert out.is_contiguous()  # NCHW in, NCHW out


def test_packed_factors_serve_every_input_shape():
    """Packed once, used for other batch sizes and map sizes (the pack depends on the weights only)."""
    x, weights, meta, _ = make_run_args("vgg-start", torch.float64)
    pk = mtd_kernels.rank_run_pack(weights, meta)
    for n, h, w in [(1, 13, 11), (5, 12, 16), (2, 13, 11), (1, 16, 9)]:
        xi = torch.randn(n, x.shape[1], h, w, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
        got = torch.ops.mtd.rank_run(xi, weights, meta, pk)
        assert rel_err(got, reference.rank_run_ref(xi, weights, meta, [])) <= TOL[torch.float64]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", list(RUN_CASES))
def test_packed_plan_is_the_op(name, dtype):
    """mtd_kernels.rank_run_plan (the no-grad CPU call of RankSpaceRun): the op's numbers on every case, any batch,
    map size and layout; its packed factors are rank_run_pack's."""
    x, weights, meta, _ = make_run_args(name, dtype)
    plan = mtd_kernels.rank_run_plan(weights, meta)
    for xi in (x, x[:1], x.contiguous()):
        torch.testing.assert_close(plan(xi), torch.ops.mtd.rank_run(xi, weights, meta, []), rtol=0, atol=0)
    for a, b in zip(plan.packed(), mtd_kernels.rank_run_pack(weights, meta), strict=True):
        assert torch.equal(a, b)
    assert plan.packed_from(weights) and not plan.packed_from(weights[:-1])
    assert not plan.packed_from([w.clone() for w in weights])  # equal values, other tensors


def test_packed_plan_refuses_changed_weights_and_other_inputs():
    x, weights, meta, _ = make_run_args("vgg-start", torch.float32)
    plan = mtd_kernels.rank_run_plan(weights, meta)
    with pytest.raises(ValueError, match="dtype"):
        plan(x.double())
    weights[1].mul_(2.0)  # in place: its version counter moves
    assert not plan.packed_from(weights)
    with pytest.raises(ValueError, match="changed"):
        plan(x)
    weights[1].data = weights[1].data.clone()  # same tensor, new storage (what Module.to / .double do)
    assert not plan.packed_from(weights)


def test_activation_buffers_are_reused_safely_across_shapes_runs_and_threads():
    """The activations between bridges live in per-thread buffers reused by later calls: results stay right when
    the shapes change and back, a result handed out is never overwritten by a later call, another run of the
    same shapes on the same thread gets right answers, and two threads running at once do not share buffers."""
    import threading

    x, weights, meta, _ = make_run_args("vgg-start", torch.float64)
    other = make_run_args("vgg-start", torch.float64, seed=7)
    pk, pk_other = mtd_kernels.rank_run_pack(weights, meta), mtd_kernels.rank_run_pack(other[1], other[2])
    kept = []
    for n in (2, 1, 3, 2, 2):
        xi = torch.randn(n, x.shape[1], 13, 11, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
        got = torch.ops.mtd.rank_run(xi, weights, meta, pk)
        assert rel_err(got, reference.rank_run_ref(xi, weights, meta, [])) <= TOL[torch.float64]
        kept.append((got, got.clone()))
        alt = torch.ops.mtd.rank_run(xi, other[1], other[2], pk_other)  # the same shapes, other weights
        assert rel_err(alt, reference.rank_run_ref(xi, other[1], other[2], [])) <= TOL[torch.float64]
    assert all(torch.equal(got, copy) for got, copy in kept)

    errors = []

    def worker(seed):
        g = torch.Generator().manual_seed(seed)
        for n in (1, 4, 2) * 3:
            xi = torch.randn(n, x.shape[1], 13, 11, dtype=torch.float64, generator=g)
            xi = xi.contiguous(memory_format=torch.channels_last)
            errors.append(rel_err(torch.ops.mtd.rank_run(xi, weights, meta, pk),
                                  reference.rank_run_ref(xi, weights, meta, [])))

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 18 and max(errors) <= TOL[torch.float64]


@pytest.mark.parametrize("threads", [1, 3])
def test_batch1_bridges_split_over_threads_or_not(threads):
    """Batch 1 on small maps gives a bridge fewer tasks than threads: with several threads it runs as stages split
    over rows, T and R (bridge_kernel.h), with one as one task; both are the reference."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for name in ("batch1-tail", "vgg-start"):
            x, weights, meta, _ = make_run_args(name, torch.float64)
            x = x[:1].contiguous(memory_format=torch.channels_last)
            out = torch.ops.mtd.rank_run(x, weights, meta, mtd_kernels.rank_run_pack(weights, meta))
            assert rel_err(out, reference.rank_run_ref(x, weights, meta, [])) <= TOL[torch.float64]
    finally:
        torch.set_num_threads(before)


def test_bfloat16_runs_each_bridge_chain():
    """The fused kernel takes float32/64; a bf16 run goes bridge by bridge through the ATen chain."""
    x, weights, meta, _ = make_run_args("batch1-tail", torch.bfloat16)
    out = torch.ops.mtd.rank_run(x, weights, meta, mtd_kernels.rank_run_pack(weights, meta))
    assert out.dtype == torch.bfloat16
    assert rel_err(out, run_reference_output((x, weights, meta, []))) < 5e-2


def test_opcheck():
    x, weights, meta, _ = make_run_args("batch1-tail", torch.float64)
    args = map_tensors(lambda t: t.requires_grad_(), (x, weights, meta, []))
    torch.library.opcheck(torch.ops.mtd.rank_run.default, args)
    torch.library.opcheck(torch.ops.mtd.rank_run.default, (x, weights, meta, mtd_kernels.rank_run_pack(weights, meta)))


def test_gradients_are_the_references():
    x, weights, meta, _ = make_run_args("vgg-start", torch.float64)
    leaves = [t.detach().requires_grad_() for t in (x, *weights)]
    torch.ops.mtd.rank_run(leaves[0], leaves[1:], meta, []).square().sum().backward()
    ref_leaves = [t.detach().requires_grad_() for t in (x, *weights)]
    reference.rank_run_ref(ref_leaves[0], ref_leaves[1:], meta, []).square().sum().backward()
    for got, want in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-10, atol=1e-10)


def _errors(args) -> tuple:
    """The ValueError messages of the compiled op and of the reference for the same bad call."""
    messages = []
    for fn in (torch.ops.mtd.rank_run, reference.rank_run_ref):
        with pytest.raises(ValueError) as info:
            fn(*args)
        messages.append(str(info.value).split("\n")[0])
    return tuple(messages)


def test_bad_calls_name_the_problem():
    x, weights, meta, _ = make_run_args("vgg-start", torch.float32)
    cpp, py = _errors((x, weights, meta[:-1], []))
    assert "12 integers per bridge" in cpp and "12 integers per bridge" in py
    cpp, py = _errors((x, weights[:-1], meta, []))
    assert "meta asks for more weights" in cpp and "meta asks for more weights" in py
    cpp, py = _errors((x, weights + [weights[0]], meta, []))
    assert "were given" in cpp and "were given" in py
    bad_flag = list(meta)
    bad_flag[10] = 2
    cpp, py = _errors((x, weights, bad_flag, []))
    assert "relu must be 0 or 1" in cpp and "relu must be 0 or 1" in py
    cpp, py = _errors((x[:, :2], weights, meta, []))  # the first bridge expects 3 channels
    assert cpp.startswith("mtd.rank_run: bridge 0 (input [2, 2, 13, 11])") and py.startswith("mtd.rank_run: bridge 0")
    small = torch.randn(2, 3, 2, 2).contiguous(memory_format=torch.channels_last)  # pooled to 1x1, then too small
    cpp, py = _errors((small, weights, meta, []))
    assert "bridge 1" in cpp and "bridge 1" in py and "too small" in cpp and "too small" in py
    pk = mtd_kernels.rank_run_pack(weights, meta)
    with pytest.raises(ValueError, match="packed holds"):
        torch.ops.mtd.rank_run(x, weights, meta, pk[:-1])
    with pytest.raises(ValueError, match="pack these weights again"):
        torch.ops.mtd.rank_run(x, weights, meta, [pk[0]] + [p.double() for p in pk[1:]])


def test_meta_of_a_bridge():
    assert bridge_meta(2, True, False, True, 2, (1, 0), 1, True, False) == [2, 1, 0, 1, 2, 2, 1, 0, 1, 1, 1, 0]


# ---- RankSpaceRun's "run" path ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vgg():
    from test_rank_bridge import build_compressed_vgg

    return build_compressed_vgg()


def _prepared_run(model):
    prepared = mtd.prepare_inference(model)
    return prepared, next(m for m in prepared.modules() if isinstance(m, RankSpaceRun))


@pytest.mark.parametrize("batch", [1, 3])
def test_prepared_model_on_the_run_path(vgg, batch, monkeypatch):
    monkeypatch.setenv("MTD_RANK_SPACE", "run")
    prepared, _ = _prepared_run(vgg)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert rel_err(prepared(x), vgg(x)) < 1e-5
        y = torch.randn(2, 3, 48, 32)  # another shape and layout with the same packed factors
        assert rel_err(prepared(y), vgg(y)) < 1e-5


def test_factors_are_packed_again_when_they_change(vgg, monkeypatch):
    monkeypatch.setenv("MTD_RANK_SPACE", "run")
    prepared, run = _prepared_run(vgg)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        prepared(x)
        first_pack = run._packed
        prepared(x)
        assert run._packed is first_pack  # unchanged weights: packed once
        run.bridges[1].w_last.mul_(2.0)  # in place: the version counter moves
        monkeypatch.setenv("MTD_RANK_SPACE", "bridge")
        expected = prepared(x)
        monkeypatch.setenv("MTD_RANK_SPACE", "run")
        assert rel_err(prepared(x), expected) < 1e-5 and run._packed is not first_pack
        run.bridges[3].w_last = torch.nn.Parameter(run.bridges[3].w_last * 0.5, requires_grad=False)  # replaced
        monkeypatch.setenv("MTD_RANK_SPACE", "bridge")
        expected = prepared(x)
        monkeypatch.setenv("MTD_RANK_SPACE", "run")
        assert rel_err(prepared(x), expected) < 1e-5
        prepared.double()  # cast: packed again in float64
        out = prepared(x.double())
        assert out.dtype == torch.float64 and run._packed.packed()[0].dtype == torch.float64
        monkeypatch.setenv("MTD_RANK_SPACE", "bridge")
        assert rel_err(out, prepared(x.double())) < 1e-12


def test_the_run_path_with_autograd_autocast_and_copies(vgg, monkeypatch):
    """Without autograd the packed kernel runs directly; with grad enabled, or under autocast, the call goes through
    the op (its autograd and autocast rules) on the same packed factors; copies and pickles of a prepared model
    pack again on their first call."""
    import copy
    import io

    monkeypatch.setenv("MTD_RANK_SPACE", "run")
    prepared, run = _prepared_run(vgg)
    for p in prepared.parameters():
        p.requires_grad_(True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = prepared(x)
    out = prepared(x)  # grad enabled, the input needs none: the op, differentiable in the weights
    assert out.grad_fn is not None and rel_err(out, expected) < 1e-6
    out.sum().backward()
    assert all(b.spatial[0].grad is not None for b in run.bridges)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = prepared(x)
    assert low.dtype == torch.bfloat16 and rel_err(low.float(), expected) < 0.1
    with torch.no_grad():
        twin = copy.deepcopy(prepared)
        buf = io.BytesIO()
        torch.save(prepared, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)  # (a test's own file: full unpickling)
        for other in (twin, loaded):
            assert rel_err(other(x), expected) < 1e-6


def test_the_run_path_is_timed_with_the_others(vgg, monkeypatch):
    monkeypatch.setenv("MTD_RANK_SPACE", "auto")
    prepared, run = _prepared_run(vgg)
    with torch.no_grad():
        prepared(torch.randn(1, 3, 32, 32))
    assert set(run.path_cache().values()) <= {"run", "bridge", "layers"} and len(run.path_cache()) == 1


def test_a_forced_run_path_traces(vgg, monkeypatch):
    """MTD_RANK_SPACE=run under torch.export: the op's fake kernel traces it (nothing packed from fake weights)."""
    monkeypatch.setenv("MTD_RANK_SPACE", "run")
    prepared, _ = _prepared_run(vgg)
    x = torch.randn(2, 3, 32, 32)
    program = torch.export.export(prepared, (x,))
    assert "mtd.rank_run.default" in {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    with torch.no_grad():
        assert rel_err(program.module()(x), vgg(x)) < 1e-5
