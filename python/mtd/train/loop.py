"""The training loop: SGD + per-step schedule, label smoothing, optional distillation, bf16 autocast and
channels_last (``mtd.utils.precision``), atomic per-epoch checkpoints and exact resume. Works on CPU and CUDA,
alone or under DDP."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..models.checkpoint import load_checkpoint, load_state_dict_checked, save_checkpoint, unwrap_model
from ..utils.progress import progress_bar
from ..utils.seeding import get_rng_state, seed_everything, set_rng_state
from .distributed import all_reduce_sum, barrier, get_world_size, is_main_process
from ..utils.precision import Precision, resolve_precision
from .evaluate import evaluate, model_device
from .fused_activations import fused_bn_relu
from .losses import distillation_loss
from .optim import SCHEDULES, make_optimizer, make_scheduler
from .teacher_bank import TeacherBank

History = List[Dict[str, float]]
Loader = Iterable[Tuple[torch.Tensor, torch.Tensor]]


def train(model: nn.Module, train_loader: Loader, *, epochs: int, lr: float, weight_decay: float = 5e-4,
          momentum: float = 0.9, nesterov: bool = True, schedule: str = "onecycle", label_smoothing: float = 0.1,
          teacher: Optional[nn.Module] = None, kd_alpha: float = 0.9, kd_temperature: float = 4.0,
          precision: str = "auto", checkpoint_path: Optional[str] = None,
          resume: bool = False, seed: int = 0, progress: bool = True, eval_loader: Optional[Loader] = None,
          log_fn: Optional[Callable[[str], None]] = None, max_grad_norm: Optional[float] = None,
          model_name: Optional[str] = None, model_kwargs: Optional[Mapping[str, Any]] = None) -> History:
    """Train ``model`` in place and return one dict per epoch (losses, accuracies, lr, seconds).

    ``train_loader`` must have ``len()``; if it has ``set_epoch`` (like :class:`mtd.data.TensorDataLoader`)
    it is called each epoch so a resumed run sees the same batches. ``teacher`` switches on distillation
    (``kd_alpha`` weight of the soft loss, ``kd_temperature``). ``precision`` ("auto", "bf16", "fp32",
    :func:`mtd.utils.precision.resolve_precision`): "auto" is bf16 autocast + channels_last where the device
    computes bf16 natively (CUDA, CPUs with AVX512_BF16 or AMX), fp32 elsewhere. With ``checkpoint_path``
    the model and the full training state are saved atomically after every epoch (rank 0 only);
    ``resume=True`` continues from that file if it exists.
    ``model`` may be DDP-wrapped; metrics are then summed over ranks.
    """
    _check_args(epochs, schedule, len(train_loader))
    main = is_main_process()
    if not main or (log_fn is None and not progress):
        log_fn = _no_log  # only rank 0 talks
    elif log_fn is None:
        log_fn = progress_bar(enabled=False).write
    seed_everything(seed)
    net = unwrap_model(model)
    device = model_device(net)
    mode = resolve_precision(precision, device)
    if mode.channels_last and not _is_channels_last(net):
        # the inputs alone would do in bf16; fp32 convolutions are faster with the weights converted too
        net.to(memory_format=torch.channels_last)  # under DDP, better done before wrapping (wrap_ddp does)
    if teacher is not None:
        teacher.eval()
    optimizer = make_optimizer(net, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    scheduler = make_scheduler(optimizer, schedule, epochs * len(train_loader))
    history: History = []
    start_epoch = 0
    if resume and checkpoint_path is not None and Path(checkpoint_path).is_file():
        start_epoch, history = _restore(checkpoint_path, net, optimizer, scheduler, device, epochs, schedule, lr)
        log_fn(f"resumed from {checkpoint_path} after epoch {start_epoch}/{epochs}")

    for epoch in range(start_epoch, epochs):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        started = time.perf_counter()
        loss, accuracy = _train_one_epoch(
            model, train_loader, optimizer, scheduler, device=device, teacher=teacher, kd_alpha=kd_alpha,
            kd_temperature=kd_temperature, label_smoothing=label_smoothing, precision=mode,
            max_grad_norm=max_grad_norm, bar_desc=f"epoch {epoch + 1}/{epochs}", progress=progress and main)
        record = {"epoch": epoch + 1, "train_loss": loss, "train_accuracy": accuracy,
                  "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started}
        if eval_loader is not None:
            metrics = evaluate(model, eval_loader)  # fp32: the accuracy a user reports
            record.update(eval_loss=metrics["loss"], eval_accuracy=metrics["accuracy"])
        history.append(record)
        log_fn(_format(record, epochs))
        if checkpoint_path is not None:
            if main:
                _save(checkpoint_path, net, optimizer, scheduler, epoch + 1, history, epochs, schedule, lr,
                      model_name, model_kwargs)
            barrier()  # no rank runs ahead of a checkpoint that it might resume from
    return history


def _is_channels_last(net: nn.Module) -> bool:
    weights = [p for p in net.parameters() if p.ndim == 4]
    return all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)


def _no_log(message: str) -> None:
    pass


def _check_args(epochs: int, schedule: str, steps_per_epoch: int) -> None:
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if steps_per_epoch < 1:
        raise ValueError("the training loader yields no batches (is batch_size larger than the data with "
                         "drop_last=True?)")


class DivergenceError(FloatingPointError):
    """The training loss became NaN/inf or exploded (see ``divergence_factor``)."""


def _train_one_epoch(model, loader, optimizer, scheduler, *, device, teacher, kd_alpha, kd_temperature,
                     label_smoothing, precision: Precision, max_grad_norm, bar_desc, progress,
                     divergence_factor: Optional[float] = None,
                     reference: Optional[List[float]] = None) -> Tuple[float, float]:
    """One pass over ``loader``. A :class:`TeacherBank` teacher is handed each batch's view keys (batches of a
    ``views`` loader carry them). With ``divergence_factor`` every step's loss is checked (one host sync per
    step): NaN/inf, or more than ``divergence_factor`` x the mean of the first losses seen (kept in
    ``reference``, which may carry over from earlier passes), raises :class:`DivergenceError` before the step
    is applied."""
    # with MTD_FUSED_TRAINING=1: BatchNorm -> ReLU [-> pool] as one op on the CPU, the modules restored afterwards
    with fused_bn_relu(unwrap_model(model)):
        model.train()
        reference = [] if reference is None else reference
        # Sums stay on the device: no host sync per step.
        totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, samples
        for batch in progress_bar(loader, total=len(loader), desc=bar_desc, enabled=progress, unit="batch"):
            images, labels = batch
            images = precision.inputs(images.to(device, non_blocking=True))
            labels = labels.to(device, non_blocking=True)
            teacher_logits = None
            if isinstance(teacher, TeacherBank):  # runs the teacher in its own precision, only on unseen views
                teacher_logits = teacher(images, getattr(batch, "keys", None))
            elif teacher is not None:
                with torch.no_grad(), precision.autocast():
                    teacher_logits = teacher(images)
            with precision.autocast():
                logits = model(images)
            loss = distillation_loss(logits, labels, teacher_logits, alpha=kd_alpha, temperature=kd_temperature,
                                     label_smoothing=label_smoothing)
            if divergence_factor is not None:  # under DDP on the ranks' mean loss: every rank takes the same branch
                value = float(all_reduce_sum(loss.detach().double().reshape(1).clone()) / get_world_size())
                if not math.isfinite(value) or (len(reference) >= 5 and value > divergence_factor * sum(reference)
                                                / len(reference)):
                    raise DivergenceError(f"loss {value:.4g} at a step of {bar_desc} (reference "
                                          f"{sum(reference) / max(len(reference), 1):.4g})")
                if len(reference) < 20:
                    reference.append(value)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                totals[0] += loss.detach() * labels.numel()
                totals[1] += (logits.argmax(1) == labels).sum()
                totals[2] += labels.numel()
    all_reduce_sum(totals)
    loss_sum, correct, samples = totals.tolist()
    if not math.isfinite(loss_sum):
        raise FloatingPointError(f"training loss became {loss_sum}; lower the learning rate")
    return loss_sum / samples, correct / samples


def _format(record: Dict[str, float], epochs: int) -> str:
    text = (f"epoch {record['epoch']}/{epochs}  loss {record['train_loss']:.4f}  "
            f"acc {100 * record['train_accuracy']:.2f}%  lr {record['lr']:.4g}  {record['seconds']:.1f}s")
    if "eval_accuracy" in record:
        text += f"  eval loss {record['eval_loss']:.4f}  eval acc {100 * record['eval_accuracy']:.2f}%"
    return text


def _save(path, net, optimizer, scheduler, epochs_done, history, epochs, schedule, lr, model_name, model_kwargs):
    state = {"epoch": epochs_done, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": get_rng_state(), "history": history,
             "config": {"epochs": epochs, "schedule": schedule, "lr": lr}}
    save_checkpoint(path, net, model_name=model_name, model_kwargs=model_kwargs, extra={"train_state": state})


def _restore(path, net, optimizer, scheduler, device, epochs, schedule, lr) -> Tuple[int, History]:
    payload = load_checkpoint(path, map_location=device)
    state = payload.get("extra", {}).get("train_state")
    if state is None:
        raise ValueError(f"{path!r} holds weights only, not a training state to resume from")
    config = state["config"]
    if (config["epochs"], config["schedule"], config["lr"]) != (epochs, schedule, lr):
        raise ValueError(f"cannot resume from {path!r}: it was trained with epochs={config['epochs']}, "
                         f"schedule={config['schedule']!r}, lr={config['lr']}; this call uses epochs={epochs}, "
                         f"schedule={schedule!r}, lr={lr}")
    load_state_dict_checked(net, payload["state_dict"], source=f"checkpoint {path!r}")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["epoch"]), list(state["history"])
