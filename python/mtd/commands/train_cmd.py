"""``mtd train``: train a baseline CIFAR model and save an mtd checkpoint."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional

from ..utils.precision import PRECISIONS
from .common import CLIError, data_loaders, load_data, under_torchrun

DEFAULT_MODEL, DEFAULT_WIDTH = "vgg11", 0.25


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a baseline model on CIFAR-10")
    p.add_argument("--data", required=True, help="CIFAR-10 archive / image-folder tar / folder")
    p.add_argument("--model", default=DEFAULT_MODEL, help="vgg11, vgg13, vgg16, vgg19 or tiny_resnet")
    p.add_argument("--width", type=float, default=DEFAULT_WIDTH, help="channel width multiplier")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", default="mtd-out/baseline.pt", help="checkpoint to write")
    p.add_argument("--state", default=None, help="training state written after every epoch (default: "
                   "OUT.state); kept after the run so that a finished run resumes to the same checkpoint")
    p.add_argument("--resume", action="store_true", help="continue from --state if it exists (same model, "
                   "width, epochs, lr and data; the run then sees the same batches as an unbroken one)")
    add_common(p)
    p.set_defaults(func=run)


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None, help="folder for the decoded data (default ~/.cache/mtd)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="training and "
                   "forward passes: auto = bf16 autocast + channels_last where the device computes bf16 "
                   "natively (CUDA, CPUs with AVX512_BF16 or AMX), fp32 elsewhere; test accuracy is always fp32")


def train_baseline(arrays, model_name: str, width: float, epochs: int, lr: float, batch_size: int, device,
                   seed: int, progress: bool, out: str, precision: str = "auto", state: Optional[str] = None,
                   resume: bool = False):
    """Build, train and save a baseline; returns (model, test accuracy in %, seconds of this call).

    With ``state`` the full training state is written there atomically after every epoch, and ``resume``
    continues from it (:func:`mtd.train.train`)."""
    import torch

    from ..models import build_model, save_checkpoint
    from ..train import evaluate, train
    from ..train.distributed import DistInfo, get_rank, get_world_size, is_main_process, sync_module, wrap_ddp
    from ..utils import seed_everything
    from ..utils.precision import resolve_precision

    seed_everything(seed)  # the initial weights too: the same seed gives the same baseline in every process
    try:
        model = build_model(model_name, num_classes=len(arrays.classes), width=width).to(device)
    except (ValueError, TypeError) as err:
        raise CLIError(str(err)) from None
    world, rank = get_world_size(), get_rank()
    if batch_size < world:
        raise CLIError(f"--batch-size {batch_size} is smaller than the {world} processes sharing it")
    # under torchrun: DDP, each rank its shard and an equal part of the global batch
    train_loader, test_loader = data_loaders(arrays, batch_size // world, device, seed, rank=rank, world_size=world)
    net = model
    if world > 1:  # channels_last set before wrapping: DDP syncs what it sees
        net = wrap_ddp(model, DistInfo(rank, world, device.index or 0, device),
                       channels_last=resolve_precision(precision, device).channels_last)
    t0 = time.perf_counter()
    try:
        train(net, train_loader, epochs=epochs, lr=lr, seed=seed, progress=progress, precision=precision,
              checkpoint_path=state, resume=resume, log_fn=None if progress else print)  # quiet: a line an epoch
    except ValueError as err:  # a state file of another run, or not a training state at all
        raise CLIError(str(err)) from None
    seconds = time.perf_counter() - t0
    model = model.to(memory_format=torch.contiguous_format)  # train() may have made it channels_last
    acc = 100.0 * evaluate(model, test_loader)["accuracy"]
    if is_main_process():  # under torchrun rank 0 writes
        save_checkpoint(out, model, extra={"test_accuracy": acc, "epochs": epochs})
    return sync_module(model), acc, seconds  # BatchNorm buffers: rank 0's everywhere


def run(args: argparse.Namespace) -> int:
    """The command; under ``torchrun`` DDP over the processes, rank 0 printing and writing."""
    return under_torchrun(_run, args)


def _run(args: argparse.Namespace, device) -> int:
    from ..utils import pick_device

    device = device or pick_device(args.device)
    if args.epochs < 1:
        raise CLIError(f"--epochs must be >= 1, got {args.epochs}")
    state = args.state or f"{args.out}.state"
    if args.resume and not Path(state).is_file():
        print(f"--resume: no training state at {state}; starting from epoch 1")
    from ..train.distributed import is_main_process, main_process_first

    with main_process_first():  # rank 0 decodes into the cache, the others read it
        arrays = load_data(args.data, args.cache_dir, progress=not args.quiet and is_main_process())
    _, acc, seconds = train_baseline(arrays, args.model, args.width, args.epochs, args.lr, args.batch_size,
                                     device, args.seed, not args.quiet, args.out, args.precision, state,
                                     args.resume)
    print(f"trained {args.model} (width {args.width}) for {args.epochs} epochs in {seconds:.0f} s: "
          f"test accuracy {acc:.2f}% -> {args.out}")
    return 0
