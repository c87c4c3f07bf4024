"""DDP on CPU (gloo, 2 spawned processes): replicas stay identical and match one process on the joint batches."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mtd.data import TensorDataLoader
from mtd.train import train
from mtd.train.distributed import cleanup, init_distributed, wrap_ddp

WORLD = 2
ARGS = dict(epochs=2, lr=0.05, schedule="cosine", seed=0, progress=False, precision="fp32")  # exact comparisons


def data():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8), rng.integers(0, 3, 48).astype(np.int64)


def make_model():
    """No BatchNorm, so DDP is exactly equivalent to one process on the concatenated batches."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))


def worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = init_distributed(backend="gloo")
    assert (info.rank, info.world_size, info.device.type) == (rank, WORLD, "cpu")
    model = wrap_ddp(make_model(), info)
    x, y = data()
    loader = TensorDataLoader(x, y, 8, train=True, seed=1, rank=info.rank, world_size=info.world_size)
    logs = []
    history = train(model, loader, checkpoint_path=os.path.join(out_dir, "ckpt.pt"), log_fn=logs.append, **ARGS)
    torch.save({"state": model.module.state_dict(), "logs": logs, "loss": history[-1]["train_loss"]},
               os.path.join(out_dir, f"rank{rank}.pt"))
    cleanup()


class JointBatches:
    """What DDP computes on: each step's rank-0 and rank-1 batches together."""

    def __init__(self, loaders):
        self.loaders = loaders

    def __len__(self):
        return len(self.loaders[0])

    def set_epoch(self, epoch):
        for loader in self.loaders:
            loader.set_epoch(epoch)

    def __iter__(self):
        for parts in zip(*self.loaders):
            yield torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_two_process_ddp_matches_single_process(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for key, value in results[0]["state"].items():
        assert torch.equal(value, results[1]["state"][key]), f"replicas differ at {key}"
    assert results[0]["loss"] == results[1]["loss"]  # metrics are reduced over ranks
    assert len(results[0]["logs"]) == 2 and results[1]["logs"] == []  # only rank 0 logs
    assert (tmp_path / "ckpt.pt").is_file()

    torch.set_num_threads(1)
    x, y = data()
    reference = make_model()
    shards = [TensorDataLoader(x, y, 8, train=True, seed=1, rank=r, world_size=WORLD) for r in range(WORLD)]
    history = train(reference, JointBatches(shards), log_fn=lambda m: None, **ARGS)
    start = make_model().state_dict()
    for key, value in reference.state_dict().items():
        assert not torch.equal(value, start[key])  # training did move the weights
        torch.testing.assert_close(results[0]["state"][key], value, rtol=1e-5, atol=1e-6)
    assert results[0]["loss"] == pytest.approx(history[-1]["train_loss"], rel=1e-5)
