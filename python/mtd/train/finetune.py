"""Fine-tuning a (compressed) model so that it cannot end worse than it started.

What :func:`finetune` adds to :func:`mtd.train.train`:

- warm-up then cosine decay (``warmup_cosine``): a freshly decomposed model's first steps are its most
  fragile;
- per-parameter learning-rate scales (``lr_scales``; :func:`cp_factor_lr_scales` gives CP factors a smaller
  rate: CP factors are known to be unstable at plain SGD rates, Lebedev et al. 2015);
- gradient clipping (``max_grad_norm``);
- divergence detection: a NaN/inf loss, or one ``divergence_factor`` times the mean of the first losses, restores
  the best state so far, halves the learning rate and goes on (at most ``max_retries`` times);
- best-on-held-out checkpointing: with ``eval_fn`` (higher is better) the model is scored before training
  and after every epoch, and the best state is what the model holds at the end;
- ``precision`` ("auto": bf16 autocast + channels_last inputs where the device computes bf16 natively) for the
  student and the teacher;
- a teacher run once per view: when the loader's augmentation is a function of (image, view)
  (``TensorDataLoader(views=K)``), a plain ``teacher`` is wrapped in a :class:`TeacherBank` for the call, and a
  bank passed in (``mtd.compress`` keeps one across its fine-tunes) is reused as it is.

BatchNorm statistics of a model whose convs were just replaced are stale; :func:`recalibrate_batchnorm`
re-estimates them from training batches (the planner calls it after surgery).
"""
from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import torch
from torch import nn

from ..utils.precision import Precision, resolve_precision
from ..utils.progress import progress_bar
from ..utils.seeding import seed_everything
from .evaluate import model_device
from .loop import DivergenceError, History, Loader, _no_log, _train_one_epoch
from .optim import make_optimizer, make_scheduler
from .teacher_bank import TeacherBank


AUTO_BANK_KEYS = 1 << 24  # (image ids x views) up to which finetune banks a plain teacher: 16 MB of flags


def finetune(model: nn.Module, train_loader: Loader, *, epochs: int, lr: float = 0.01,
             teacher: Optional[nn.Module] = None, kd_alpha: float = 0.9, kd_temperature: float = 4.0,
             label_smoothing: float = 0.0, weight_decay: float = 5e-4, warmup_fraction: float = 0.05,
             max_grad_norm: Optional[float] = 5.0, lr_scales: Optional[Mapping[int, float]] = None,
             eval_fn: Optional[Callable[[nn.Module], float]] = None, divergence_factor: float = 5.0,
             max_retries: int = 3, max_steps: Optional[int] = None, seed: int = 0, progress: bool = True,
             log_fn: Optional[Callable[[str], None]] = None,
             precision: Union[str, Precision] = "auto") -> History:
    """Fine-tune ``model`` in place (distilling from ``teacher``, an ``nn.Module`` or a :class:`TeacherBank`,
    when given); one dict per epoch.

    ``max_steps`` stops after that many optimizer steps in all (short fine-tunes of a search; the schedule
    then spans ``max_steps``). See the module docstring for the safeguards.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    steps_per_epoch = len(train_loader)
    if steps_per_epoch < 1:
        raise ValueError("the fine-tuning loader yields no batches")
    log = log_fn or (_no_log if not progress else progress_bar(enabled=False).write)
    seed_everything(seed)
    device = model_device(model)
    mode = resolve_precision(precision, device)
    if teacher is not None:
        teacher.eval()
        views = getattr(train_loader, "views", None)
        num_keys = (int(train_loader.ids.max()) + 1) * views if views else 0
        if views and not isinstance(teacher, TeacherBank) and num_keys <= AUTO_BANK_KEYS:
            teacher = TeacherBank(teacher, num_keys, precision=mode)
    total = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    best_score = eval_fn(model) if eval_fn is not None else None
    best_state = _state(model)
    history: History = []
    done, rate, retries = 0, lr, 0
    reference: list[float] = []  # the first losses: what an exploding loss is measured against
    while done < total:
        optimizer = make_optimizer(model, lr=rate, momentum=0.9, weight_decay=weight_decay, nesterov=True,
                                   lr_scales=lr_scales)
        scheduler = make_scheduler(optimizer, "warmup_cosine", total - done, warmup_fraction)
        try:
            while done < total:
                epoch = done // steps_per_epoch
                n = min(steps_per_epoch - done % steps_per_epoch, total - done)
                if hasattr(train_loader, "set_epoch"):
                    train_loader.set_epoch(epoch)
                started = time.perf_counter()
                loss, accuracy = _train_one_epoch(
                    model, _first(train_loader, n), optimizer, scheduler, device=device, teacher=teacher,
                    kd_alpha=kd_alpha, kd_temperature=kd_temperature, label_smoothing=label_smoothing,
                    precision=mode, max_grad_norm=max_grad_norm,
                    bar_desc=f"fine-tune {done // steps_per_epoch + 1}/{-(-total // steps_per_epoch)}",
                    progress=progress, divergence_factor=divergence_factor, reference=reference)
                done += n
                record = {"epoch": done / steps_per_epoch, "train_loss": loss, "train_accuracy": accuracy,
                          "lr": rate, "seconds": time.perf_counter() - started}
                if eval_fn is not None:
                    record["eval_score"] = score = eval_fn(model)
                    if score > best_score:
                        best_score, best_state = score, _state(model)
                else:
                    best_state = _state(model)
                history.append(record)
        except DivergenceError as err:
            retries += 1
            _restore(model, best_state)
            history.append({"epoch": done / steps_per_epoch, "diverged": str(err), "lr": rate})
            if retries > max_retries:
                log(f"fine-tuning diverged {retries} times ({err}); keeping the best state so far")
                break
            rate /= 2  # the diverged pass is run again from the best state, at half the rate
            log(f"fine-tuning diverged ({err}); restored the best state, lr halved to {rate:.3g}")
    if eval_fn is not None:
        _restore(model, best_state)
    return history


def cp_factor_lr_scales(model: nn.Module, scale: float) -> dict[int, float]:
    """``{id(param): scale}`` for the factor weights of every CP / CP4 layer in ``model``."""
    from ..layers import CP4Conv2d, CPConv2d

    return {id(p): scale for m in model.modules() if isinstance(m, (CPConv2d, CP4Conv2d))
            for name, p in m.named_parameters() if not name.endswith("bias")}


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: Iterable, num_batches: int = 50,
                          precision: Union[str, Precision] = "fp32") -> int:
    """Re-estimate every BatchNorm's running statistics from ``num_batches`` batches (cumulative average);
    returns how many batches were used. Weights are unchanged; the model is left in eval mode. The running
    statistics stay fp32 buffers whatever ``precision`` the passes run in."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over the batches below
    mode = resolve_precision(precision, model_device(model))
    model.train()
    used = 0
    try:
        for x, _ in itertools.islice(loader, num_batches):
            with mode.autocast():
                model(mode.inputs(x))
            used += 1
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.eval()
    return used


def _first(loader: Any, n: int) -> Any:
    """The first ``n`` batches of ``loader`` (with a ``len`` for the progress bar)."""
    class _Head:
        def __len__(self) -> int:
            return n

        def __iter__(self):
            return itertools.islice(iter(loader), n)

    return _Head()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _restore(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    model.load_state_dict(state)
