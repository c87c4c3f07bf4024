"""torch.ops.mtd.bn_relu / bn_relu_backward (training-mode BatchNorm -> ReLU [-> 2x2 max-pool] in one op) and
mtd.train.fused_activations, which runs a model's BatchNorm, ReLU[, MaxPool2d] runs through it while training.

The op is checked against its plain-PyTorch description (mtd_kernels/ops/bn_relu.py: float32 arithmetic on the
input's values) over awkward shapes (odd sizes that leave a row and a column outside every pooling window, channel
counts off the vector width, one channel, a 2x2 map), in float32 and bfloat16, forward and backward; opcheck covers
schema, fake kernels and autograd; a model trained one step with and without the rewrite gets the same gradients
and running statistics.
"""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mtd_kernels
from mtd.train import fused_activations
from mtd.train.fused_activations import BatchNormReLU2d, fused_bn_relu
from mtd_kernels.reference import bn_relu_backward_ref, bn_relu_ref

pytestmark = pytest.mark.skipif(not mtd_kernels.extension_available(), reason="needs the compiled CPU kernels")

SHAPES = [(4, 19, 7, 5), (8, 64, 16, 16), (3, 33, 6, 6), (16, 512, 2, 2), (5, 1, 4, 4), (2, 40, 9, 3)]
# max |out - ref| / max(1, max |ref|): float32 sums in another order; bfloat16 one rounding of each stored value
TOL = {torch.float32: 2e-5, torch.bfloat16: 1e-2}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1.0)).item()


def make(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = (torch.randn(shape, generator=g) * 2 + 0.5).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.rand(c, generator=g) + 0.5
    b = torch.randn(c, generator=g) * 0.3
    return x, w, b


@pytest.mark.parametrize("pool", [False, True], ids=["bn_relu", "bn_relu_pool"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_the_reference(shape, dtype, pool):
    x, w, b = make(shape, dtype)
    y, mean, var = torch.ops.mtd.bn_relu(x, w, b, 1e-5, pool)
    y_ref, mean_ref, var_ref = bn_relu_ref(x, w, b, 1e-5, pool)
    assert y.shape == y_ref.shape and y.dtype == dtype and mean.dtype == var.dtype == torch.float32
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(y, y_ref) <= TOL[dtype]
    assert rel_err(mean, mean_ref) <= 2e-5 and rel_err(var, var_ref) <= 2e-5
    grad = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    dx, dw, db = torch.ops.mtd.bn_relu_backward(grad, x, w, b, mean, var, 1e-5, pool)
    dx_ref, dw_ref, db_ref = bn_relu_backward_ref(grad, x, w, b, mean_ref, var_ref, 1e-5, pool)
    assert dx.dtype == dtype and dx.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(dx, dx_ref) <= TOL[dtype]
    assert rel_err(dw, dw_ref) <= 1e-4 and rel_err(db, db_ref) <= 1e-4


def test_pool_ties_and_dead_windows():
    """Equal maxima send the gradient to the first (row by row), as max_pool2d does; a window whose ReLU outputs
    are all 0 passes none; the odd last row and column still get the statistics' part of the gradient."""
    x = torch.zeros(2, 3, 5, 5)
    x[:, :, 0:2, 0:2] = 3.0  # a 4-way tie
    x[:, :, 2, 3] = x[:, :, 3, 2] = 2.0  # a 2-way tie, second row first
    x[:, :, 4, :] = torch.arange(5.0)  # outside every window
    x = x + torch.linspace(-1, 1, 3).view(1, 3, 1, 1) * 0.01
    x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.ones(3), torch.full((3,), -0.2)
    y, mean, var = torch.ops.mtd.bn_relu(x, w, b, 1e-5, True)
    grad = torch.ones_like(y)
    dx, dw, db = torch.ops.mtd.bn_relu_backward(grad, x, w, b, mean, var, 1e-5, True)
    dx_ref, dw_ref, db_ref = bn_relu_backward_ref(grad, x, w, b, mean, var, 1e-5, True)
    assert rel_err(y, bn_relu_ref(x, w, b, 1e-5, True)[0]) <= 2e-5
    assert rel_err(dx, dx_ref) <= 2e-5 and rel_err(dw, dw_ref) <= 2e-5 and rel_err(db, db_ref) <= 2e-5


def test_other_layouts_and_threads():
    """A contiguous (NCHW) input gives a contiguous result with the same values; one thread the same as two."""
    x, w, b = make((4, 24, 6, 6), torch.float32)
    nchw = x.contiguous()
    y, mean, var = torch.ops.mtd.bn_relu(nchw, w, b, 1e-5, True)
    assert y.is_contiguous() and rel_err(y, bn_relu_ref(x, w, b, 1e-5, True)[0]) <= 2e-5
    dx = torch.ops.mtd.bn_relu_backward(torch.ones_like(y), nchw, w, b, mean, var, 1e-5, True)[0]
    assert dx.is_contiguous()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.mtd.bn_relu(x, w, b, 1e-5, False)[0]
    finally:
        torch.set_num_threads(threads)
    assert rel_err(one, torch.ops.mtd.bn_relu(x, w, b, 1e-5, False)[0]) <= 2e-5


@pytest.mark.parametrize("pool", [False, True])
def test_opcheck(pool):
    x, w, b = make((3, 20, 6, 4), torch.float32)
    torch.library.opcheck(torch.ops.mtd.bn_relu.default, (x, w.requires_grad_(), b.requires_grad_(), 1e-5, pool))
    y, mean, var = torch.ops.mtd.bn_relu(x, w, b, 1e-5, pool)
    torch.library.opcheck(torch.ops.mtd.bn_relu_backward.default,
                          (torch.randn_like(y), x, w.detach(), b.detach(), mean, var, 1e-5, pool))


def test_autograd_through_the_op():
    x, w, b = make((4, 16, 6, 6), torch.float32)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    y, _, _ = torch.ops.mtd.bn_relu(*leaves, 1e-5, True)
    (y * torch.linspace(0, 1, y.numel()).view_as(y)).sum().backward()
    ref = [t.clone().requires_grad_() for t in (x, w, b)]
    y_ref = F.max_pool2d(F.relu(F.batch_norm(ref[0], None, None, ref[1], ref[2], training=True)), 2)
    (y_ref * torch.linspace(0, 1, y_ref.numel()).view_as(y_ref)).sum().backward()
    for a, r in zip(leaves, ref):
        assert rel_err(a.grad, r.grad) <= 2e-5


@pytest.mark.parametrize("args, message", [
    (((2, 4, 4), (4,), (4,), False), "must be 4-D"),
    (((2, 4, 4, 4), (3,), (4,), False), "weight and bias must have shape"),
    (((1, 4, 1, 1), (4,), (4,), False), "more than one value per channel"),
    (((2, 4, 1, 5), (4,), (4,), True), "at least 2x2 pixels"),
])
def test_bad_input_is_a_value_error(args, message):
    shape, wshape, bshape, pool = args
    x = torch.randn(shape)
    for device in ("cpu", "meta"):
        with pytest.raises(ValueError, match=message):
            torch.ops.mtd.bn_relu(x.to(device), torch.ones(wshape, device=device), torch.zeros(bshape, device=device),
                                  1e-5, pool)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        torch.ops.mtd.bn_relu(torch.randn(2, 4, 4, 4, dtype=torch.float64), torch.ones(4), torch.zeros(4), 1e-5, False)
    x = torch.randn(2, 4, 4, 4)
    with pytest.raises(ValueError, match="grad must have the output's shape"):
        torch.ops.mtd.bn_relu_backward(torch.randn(2, 4, 4, 4), x, torch.ones(4), torch.zeros(4), torch.zeros(4),
                                       torch.ones(4), 1e-5, True)


# ---- the training rewrite (opt-in: MTD_FUSED_TRAINING=1) ----

@pytest.fixture(autouse=True)
def _fused_training_on(monkeypatch):
    monkeypatch.setenv("MTD_FUSED_TRAINING", "1")


def small_net(momentum=0.1) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24, momentum=momentum), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(24, 40, 3, padding=1, bias=False), nn.BatchNorm2d(40, momentum=momentum), nn.ReLU(),
        nn.Sequential(nn.Conv2d(40, 40, 1), nn.BatchNorm2d(40), nn.ReLU(), nn.MaxPool2d(2, 2)),
        nn.Flatten(), nn.Linear(40 * 4 * 4, 10),
    ).to(memory_format=torch.channels_last)


def one_step(net, x, y, steps=1):
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net.train()
    for _ in range(steps):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_training_step_matches_the_plain_modules(momentum):
    plain, fused = small_net(momentum), small_net(momentum)
    x = torch.randn(8, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,))
    keys = list(fused.state_dict())
    loss_plain = one_step(plain, x, y, steps=2)
    with fused_bn_relu(fused) as runs:
        assert runs == 3
        assert [type(m) for m in fused[:4]] == [nn.Conv2d, BatchNormReLU2d, nn.Identity, nn.Identity]
        assert list(fused.state_dict()) == keys  # same names, same tensors
        loss_fused = one_step(fused, x, y, steps=2)
    assert [type(m) for m in fused[:4]] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    assert abs(loss_plain - loss_fused) <= 1e-4
    a, b = plain.state_dict(), fused.state_dict()
    for k in a:
        assert rel_err(b[k].float(), a[k].float()) <= 1e-4, k
    plain.eval(), fused.eval()
    assert rel_err(fused(x), plain(x)) <= 1e-4


def test_bf16_autocast_step_close_to_the_plain_modules():
    plain, fused = small_net(), small_net()
    x = torch.randn(16, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    grads = []
    for net, ctx in ((plain, contextlib.nullcontext()), (fused, fused_bn_relu(fused))):
        with ctx:
            net.train()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = net(x)
            out.float().square().mean().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for g_plain, g_fused in zip(*grads):
        assert rel_err(g_fused, g_plain) <= 3e-2  # two bf16 computations of the same step


def test_what_is_not_rewritten_and_what_falls_back():
    shared = nn.BatchNorm2d(8)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), shared, nn.ReLU(), nn.Conv2d(8, 8, 1), shared, nn.ReLU(),
                        nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8, affine=False), nn.ReLU(),
                        nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(3))
    hooked = nn.Sequential(nn.BatchNorm2d(8), nn.ReLU())
    seen = []
    hooked[0].register_forward_hook(lambda m, args, out: seen.append(out.shape))
    with fused_bn_relu(hooked) as runs:
        assert runs == 0  # its hook would stop firing
        hooked.train()(torch.randn(2, 8, 3, 3).contiguous(memory_format=torch.channels_last))
    assert seen == [(2, 8, 3, 3)]
    with fused_bn_relu(net) as runs:
        assert runs == 1  # shared BN used twice, no affine: left alone; MaxPool2d(3) stays a module
        assert isinstance(net[10], BatchNormReLU2d) and not net[10].pool and isinstance(net[12], nn.MaxPool2d)
        x = torch.randn(2, 3, 6, 6)  # NCHW: the plain path inside the rewritten module
        net.train()
        out = net(x)
    ref = net(x)  # the same modules, restored (train mode, running stats moved once more)
    assert out.shape == ref.shape


def test_restored_after_an_error_and_off_by_default(monkeypatch):
    net = small_net()
    with pytest.raises(RuntimeError, match="boom"):
        with fused_bn_relu(net):
            raise RuntimeError("boom")
    assert type(net[1]) is nn.BatchNorm2d and type(net[2]) is nn.ReLU
    for value in ("0", ""):
        monkeypatch.setenv("MTD_FUSED_TRAINING", value)
        assert not fused_activations.enabled()
        with fused_bn_relu(net) as runs:
            assert runs == 0 and type(net[1]) is nn.BatchNorm2d
    monkeypatch.delenv("MTD_FUSED_TRAINING")
    assert not fused_activations.enabled()  # off by default


def test_the_training_loops_use_it(monkeypatch):
    """mtd.train.train and mtd.train.finetune (every fine-tune of mtd.compress) train through the rewrite."""
    from mtd.train import finetune, train

    seen = []
    original = fused_activations.fused_bn_relu

    def spy(model):
        ctx = original(model)
        seen.append(model)
        return ctx

    monkeypatch.setattr("mtd.train.loop.fused_bn_relu", spy)
    net = small_net()
    data = [(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))) for _ in range(2)]
    history = train(net, data, epochs=1, lr=0.01, precision="fp32", progress=False)
    assert seen == [net] and len(history) == 1
    assert type(net[1]) is nn.BatchNorm2d and net[1].num_batches_tracked.item() == 2
    finetune(net, data, epochs=1, lr=0.01, precision="fp32", progress=False)
    assert seen == [net, net] and net[1].num_batches_tracked.item() == 4
    assert copy.deepcopy(net).state_dict().keys() == small_net().state_dict().keys()
