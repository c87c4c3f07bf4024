"""Sequential local reconstruction: fit each decomposed layer to what the original layer computed.

After surgery every decomposed layer sees the inputs of a network whose earlier layers are approximate too.
Asymmetric reconstruction (Zhang et al. 2015, "Accelerating very deep convolutional networks for
classification and detection"; FSKD, Li et al. CVPR 2020) fits each decomposed layer, in the order the
network runs them, so that *from the compressed prefix's input* X~ it reproduces *the original layer's
output on the original input* Y = W * X:

    min  || layer(X~) - Y ||^2   over the layer's factors

so that each layer also undoes part of the error its predecessors left. Per layer:

1. capture X~ (a forward pre-hook on the compressed model) and Y (a forward hook on the original) over a
   few hundred training images, each forward stopped at the layer (no full-network activations are held,
   and the image count is capped by ``max_bytes``);
2. solve the last factor (the (T, R) 1x1 conv or Linear, and its bias) in closed form: a least-squares fit
   of Y on the rank-R intermediate Z over every pixel, from the (R+1)^2 Gram matrix in float64;
3. ``steps`` Adam steps on all factors (cosine-decayed ``lr``, random mini-batches of the captured images);
4. the closed-form last-factor solve again;
5. keep the result only if it lowered the layer's relative output error on the captured images.

Works on any ``nn.Module`` (hooks, not indices). BatchNorm is left as it is: the targets are the original
layer's outputs, so the original statistics stay valid; callers re-estimate it afterwards if they wish.

Under a process group every rank calls it with the same images and captures its share of them (image i of
each batch on rank i mod world): the Gram matrices of the solve, the errors and every Adam step's gradients
(each rank's mini-batch a share of the global one) are summed over the ranks, so every rank makes the same fit.

Measured on full-width VGG11 at the 35x plan of ``cifar_cpu_full`` (3,000 test images, baseline 82.27%; 2-core
AMD EPYC, AVX2, loaded by other jobs), without / with BatchNorm re-estimated afterwards. From
``benchmarks/studies/recovery_vgg11.py``: weight-only factors - / 74.20%, the defaults (512 images,
150 steps) - / 77.00%.
From a one-off check run with the same plan and images (not a script in the repository): weight-only 65.13% / -,
the defaults 75.17% / 77.00% (269 s under load), 1,024 images and 300 steps 75.43% / 76.83% (407 s), the
closed-form solve alone (``steps=0``) 76.73% / 76.53% (118 s). Re-estimating BatchNorm helps the defaults
(+1.8 points), so ``mtd.compress`` does it.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Iterable, Optional, Sequence

import torch
from torch import nn

from ..layers._factorized import FactorizedModule
from ..train.distributed import all_reduce_sum, get_rank, get_world_size
from ..layers.base import FactorizedConv2d
from ..layers.low_rank_linear import LowRankLinear
from ..utils import progress_bar


@dataclass(frozen=True)
class ReconstructionConfig:
    """How hard :func:`reconstruct` works per layer (defaults: ~1 minute for a full-width VGG11, 2 cores)."""

    images: int = 512  # captured images per layer (capped by max_bytes)
    steps: int = 150  # Adam steps per layer (0: closed-form last factor only)
    lr: float = 1e-3
    batch_size: int = 32  # images per Adam step
    max_bytes: int = 512 * 2 ** 20  # captured inputs + targets of one layer, float32
    ridge: float = 1e-6  # relative Tikhonov term of the closed-form solve

    def __post_init__(self) -> None:
        for name in ("images", "batch_size", "max_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"reconstruction {name} must be an int >= 1, got {value!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"reconstruction steps must be an int >= 0, got {self.steps!r}")
        for name in ("lr", "ridge"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) > 0):
                raise ValueError(f"reconstruction {name} must be > 0, got {getattr(self, name)!r}")


@dataclass
class LayerReconstruction:
    """What :func:`reconstruct` did to one layer (relative output errors on the captured images)."""

    name: str
    images: int
    error_before: float
    error_after: float
    kept: bool
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass at the layer of interest."""


def execution_order(model: nn.Module, names: Sequence[str], sample: torch.Tensor) -> list[str]:
    """``names`` in the order ``model`` first calls them on ``sample`` (names never called are dropped)."""
    order: list[str] = []
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda module, args, n=n: order.append(n) if n not in order else None) for n in names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return order


@torch.no_grad()
def capture(model: nn.Module, name: str, batches: Iterable[torch.Tensor], *, output: bool) -> torch.Tensor:
    """The input (``output=False``) or output of ``model``'s layer ``name`` over ``batches``, concatenated
    on the CPU; every forward stops at that layer. The model is put in eval mode."""
    stored: list[torch.Tensor] = []

    def keep(tensor: torch.Tensor) -> None:
        stored.append(tensor.detach().float().cpu())
        raise _Stop

    module = model.get_submodule(name)
    hook = (module.register_forward_hook(lambda m, args, out: keep(out)) if output
            else module.register_forward_pre_hook(lambda m, args: keep(args[0])))
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            try:
                model(x)
            except _Stop:
                pass
    finally:
        hook.remove()
        model.train(was_training)
    if not stored:
        raise ValueError(f"layer {name!r} was never called on the reconstruction images")
    return torch.cat(stored)


def reconstruct(compressed: nn.Module, original: nn.Module, images: Sequence[torch.Tensor],
                config: ReconstructionConfig = ReconstructionConfig(), names: Optional[Sequence[str]] = None,
                *, seed: int = 0, progress: bool = False) -> list[LayerReconstruction]:
    """Fit every decomposed layer of ``compressed`` (or those in ``names``) to ``original``, in network order.

    ``images``: batches of input images (tensors on the models' device), e.g. training images held out of
    nothing in particular; the first ``config.images`` of them are used. ``compressed`` is changed in place
    (layers with ``backend="torch"`` or ``"fused"`` alike: the fit runs the plain chain) and is left in eval
    mode. ``original`` must have the same module names (``compressed`` a decomposed copy of it).
    """
    batches = list(_first_images(images, config.images))
    if not batches:
        raise ValueError("reconstruction needs at least one batch of images")
    candidates = [n for n, m in compressed.named_modules() if isinstance(m, FactorizedModule)]
    if names is not None:
        missing = [n for n in names if n not in candidates]
        if missing:
            raise ValueError(f"not decomposed layers of the model: {', '.join(missing)}")
        candidates = [n for n in candidates if n in set(names)]
    order = execution_order(compressed, candidates, batches[0][:1])
    generator = torch.Generator().manual_seed(seed)
    bar = progress_bar(total=len(order), desc="reconstructing layers", enabled=progress, unit="layer")
    results = []
    try:
        for name in order:
            results.append(_reconstruct_layer(compressed, original, name, batches, config, generator))
            bar.update(1)
    finally:
        bar.close()
    compressed.eval()
    return results


def _first_images(batches: Iterable[torch.Tensor], limit: int) -> Iterable[torch.Tensor]:
    seen = 0
    for x in batches:
        if isinstance(x, (tuple, list)):
            x = x[0]  # (images, labels) batches
        if seen >= limit:
            return
        yield x[:limit - seen]
        seen += int(x.shape[0])


def _reconstruct_layer(compressed: nn.Module, original: nn.Module, name: str, batches: list[torch.Tensor],
                       config: ReconstructionConfig, generator: torch.Generator) -> LayerReconstruction:
    t0 = time.perf_counter()
    layer = compressed.get_submodule(name)
    if not isinstance(layer, (FactorizedConv2d, LowRankLinear)):
        raise TypeError(f"layer {name!r} is a {type(layer).__name__}, not a decomposed layer")
    if isinstance(layer, FactorizedConv2d) and layer.relu:
        raise ValueError(f"layer {name!r} has a fused ReLU; reconstruct before prepare_inference")
    # how many images fit in max_bytes: measured on the first image (under a process group, on every rank)
    x0 = capture(compressed, name, [batches[0][:1]], output=False)
    y0 = capture(original, name, [batches[0][:1]], output=True)
    per_image = (x0[0].numel() + y0[0].numel()) * 4
    limit = max(1, min(config.images, config.max_bytes // per_image))
    use = [b[get_rank()::get_world_size()] for b in _first_images(batches, limit)]  # this rank's share
    use = [b for b in use if b.shape[0]]
    x = capture(compressed, name, use, output=False)  # (N, S, H, W) or (N, in): the compressed prefix's input
    y = capture(original, name, use, output=True)  # (N, T, Ho, Wo) or (N, out): the original layer's output
    device = next(layer.parameters()).device
    backend, layer.backend = layer.backend, "torch"
    state = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    try:
        before = _relative_error(layer, x, y, device)
        _solve_last(layer, x, y, config.ridge, device)
        if config.steps:
            _adam_steps(layer, x, y, config, generator, device)
            _solve_last(layer, x, y, config.ridge, device)
        after = _relative_error(layer, x, y, device)
        kept = math.isfinite(after) and after < before
        if not kept:
            layer.load_state_dict(state)
    finally:
        layer.backend = backend
    return LayerReconstruction(name, int(x.shape[0]), before, after if kept else before, kept,
                               time.perf_counter() - t0)


def _chunks(n: int, size: int = 64) -> Iterable[slice]:
    return (slice(i, min(i + size, n)) for i in range(0, n, size))


@torch.no_grad()
def _relative_error(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, device) -> float:
    """||layer(x) - y|| / ||y|| over all captured images."""
    sums = torch.zeros(2, dtype=torch.float64)  # squared error, squared target
    dtype = next(layer.parameters()).dtype
    for s in _chunks(x.shape[0]):
        yb = y[s].to(device, torch.float64)
        sums[0] += float(((layer(x[s].to(device, dtype)).double() - yb) ** 2).sum())
        sums[1] += float((yb ** 2).sum())
    num, den = all_reduce_sum(sums).tolist()  # over the ranks' shares (no-op alone)
    return math.sqrt(num / den) if den > 0 else float("inf")


def _rank_intermediate(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the last factor sees: (N, R, Ho, Wo) for a conv chain, (N, R) for a LowRankLinear."""
    if isinstance(layer, LowRankLinear):
        return layer.first(x)
    return layer._spatial_chain(layer.first(x))


@torch.no_grad()
def _solve_last(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, ridge: float, device) -> None:
    """Closed-form least squares of the last factor (and bias) given the others: [W b] = C (G + rI)^-1 with
    G = sum z~ z~^T, C = sum y z~^T over every pixel, z~ = [z; 1] (float64)."""
    last = layer.last
    r = last.weight.shape[1]
    bias = last.bias is not None
    k = r + int(bias)
    gram = torch.zeros(k, k, dtype=torch.float64, device=device)
    cross = torch.zeros(last.weight.shape[0], k, dtype=torch.float64, device=device)
    dtype = last.weight.dtype
    for s in _chunks(x.shape[0]):
        z = _rank_intermediate(layer, x[s].to(device, dtype)).double()
        yb = y[s].to(device, torch.float64)
        if z.dim() == 4:  # (N, R, H, W) -> (N*H*W, R): every pixel is a sample
            z = z.permute(0, 2, 3, 1).reshape(-1, r)
            yb = yb.permute(0, 2, 3, 1).reshape(-1, yb.shape[1])
        if bias:
            z = torch.cat([z, torch.ones(z.shape[0], 1, dtype=z.dtype, device=device)], 1)
        gram += z.T @ z
        cross += yb.T @ z
    all_reduce_sum(gram)
    all_reduce_sum(cross)
    scale = float(torch.diagonal(gram).mean())
    if not math.isfinite(scale) or scale <= 0:
        return
    solution = torch.linalg.solve(gram + ridge * scale * torch.eye(k, dtype=gram.dtype, device=device), cross.T).T
    if not torch.isfinite(solution).all():
        return
    last.weight.copy_(solution[:, :r].reshape(last.weight.shape).to(dtype))
    if bias:
        last.bias.copy_(solution[:, r].to(dtype))


def _adam_steps(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, config: ReconstructionConfig,
                generator: torch.Generator, device) -> None:
    """``config.steps`` Adam steps on the normalised output MSE, cosine-decayed rate, random mini-batches."""
    params = [p for p in layer.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps)
    dtype = params[0].dtype
    world = get_world_size()
    moments = all_reduce_sum(torch.tensor([float((y.double() ** 2).sum()), y.numel()], dtype=torch.float64))
    scale = float(moments[0] / moments[1])
    if scale <= 0:
        return
    n = x.shape[0]
    batch = min(max(1, config.batch_size // world), n)  # each rank's share of the global mini-batch
    with torch.enable_grad():
        for _ in range(config.steps):
            idx = torch.randint(0, n, (batch,), generator=generator)
            xb, yb = x[idx].to(device, dtype), y[idx].to(device, dtype)
            loss = torch.mean((layer(xb) - yb) ** 2) / scale
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:  # the mean over the ranks' mini-batches
                for p in params:
                    if p.grad is not None:
                        all_reduce_sum(p.grad).div_(world)
            optimizer.step()
            scheduler.step()
