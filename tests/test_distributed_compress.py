"""``mtd.compress`` under a process group (gloo, 2 CPU processes): the work is split, the scores and the plan are
one process's and the verdict is computed as one process computes it, every rank returns the same model, only
rank 0 writes; ``torchrun -m mtd compress`` runs, and a rank that fails stops the job with its error instead of a
hang."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from torch import nn

from mtd.planner import CompressConfig, compress
from mtd.planner.factor_cache import FactorCache
from mtd.planner.options import candidate_owners
from mtd.planner.candidates import Candidate

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")
WORLD = 2
# small enough for seconds, big enough that candidates, probes, fine-tunes and a verification all run
CONFIG = dict(grid="tiny", max_drop=3.0, calib_size=128, holdout_size=300, finetune_epochs=1, search_rounds=2,
              recovery_images=64, reconstruct_steps=5, cp_n_iter_max=10, finetune_views=4, precision="fp32",
              finetune_batch_size=32, batch_size=64)


# activation-aware decomposition from input statistics each rank collects on its share of the images
AWARE = dict(aware=True, target_ratio=8.0, max_drop=None, search_rounds=1)


def make_data():
    """An easy 4-class task on noisy uint8 12x12 images: classes 0-2 brighten their channel, class 3 none."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 1200)
    x = rng.integers(0, 140, (1200, 12, 12, 3)).astype(np.int64)
    for c in range(3):
        x[y == c, :, :, c] += 60
    return x.astype(np.uint8), y


def make_model_skeleton():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))


def make_model():
    """The skeleton trained for six epochs (seeded)."""
    torch.manual_seed(0)
    model = make_model_skeleton()
    x, y = make_data()
    from mtd.data import TensorDataLoader
    from mtd.train import train

    loader = TensorDataLoader(x, y, 64, train=True, seed=0, mean=(0.3,) * 3, std=(0.2,) * 3)
    train(model, loader, epochs=6, lr=0.1, schedule="cosine", progress=False, precision="fp32")
    return model.eval()


def run_compress(model, cache_dir, **overrides):
    x, y = make_data()
    config = CompressConfig(**{**CONFIG, **overrides}, cache_dir=str(cache_dir), mean=(0.3,) * 3, std=(0.2,) * 3)
    compressed, plan = compress(model, (x, y), config, progress=False)
    layers = [(lp.name, lp.method, tuple(lp.ranks), lp.sensitivity["loss"], lp.rel_error) for lp in plan.layers]
    return {"layers": layers, "results": plan.results, "state": compressed.state_dict()}


def worker(rank, port, folder, model_state):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from mtd.train.distributed import cleanup, init_distributed

    init_distributed(backend="gloo")
    if rank > 0:  # only rank 0 writes: every library write ends in os.replace (mtd.utils.atomic)
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if str(folder) in str(dst):
                raise AssertionError(f"rank {rank} wrote {dst}")
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace
    model = make_model_from(model_state)
    out = run_compress(model, os.path.join(folder, "cache-dist"))
    torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    out = run_compress(model, os.path.join(folder, "cache-dist"), **AWARE)
    torch.save(out, os.path.join(folder, f"aware{rank}.pt"))
    cleanup()


def make_model_from(state):
    model = make_model_skeleton()
    model.load_state_dict(state)
    return model.eval()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_choose_verify_and_return_what_one_process_does(tmp_path):
    torch.set_num_threads(1)  # the ranks' thread count: one process then computes bit for bit as they do
    model = make_model()
    mp.spawn(worker, args=(free_port(), str(tmp_path), model.state_dict()), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    single = run_compress(model, tmp_path / "cache-single")

    for key, value in ranks[0]["state"].items():  # every rank returns the same model
        assert torch.equal(value, ranks[1]["state"][key]), key
    own = ("wall_time_s", "teacher")  # each rank's own clock and teacher-bank hits
    assert {k: v for k, v in ranks[0]["results"].items() if k not in own} == \
        {k: v for k, v in ranks[1]["results"].items() if k not in own}
    # candidates split over the ranks score exactly as in one process, so the plan is the same
    assert ranks[0]["layers"] == single["layers"]
    assert any(method != "dense" for _, method, *_ in single["layers"])
    for run in (ranks[0], single):
        assert run["results"]["within_budget"], run["results"]["verdict"]
        assert run["results"]["verdict"].startswith("within budget: ")
    dist_ver, single_ver = ranks[0]["results"]["verification"], single["results"]["verification"]
    assert dist_ver["images"] == single_ver["images"] == 240  # a fifth of the images at most
    assert dist_ver["base_accuracy"] == single_ver["base_accuracy"]  # the same held-out images, gathered in order
    # rank 0 wrote the caches: the merged teacher bank holds both ranks' shards
    banks = list((tmp_path / "cache-dist").glob("teacher-bank-*.npz"))
    single_bank = list((tmp_path / "cache-single").glob("teacher-bank-*.npz"))
    assert len(banks) == 1 and len(single_bank) == 1
    filled = np.load(banks[0])["filled"].sum()
    assert filled >= 0.95 * np.load(single_bank[0])["filled"].sum()
    assert list((tmp_path / "cache-dist").glob("scores-*.json"))

    aware = [torch.load(tmp_path / f"aware{r}.pt", weights_only=False) for r in range(WORLD)]
    for key, value in aware[0]["state"].items():
        assert torch.equal(value, aware[1]["state"][key]), key
    single_aware = run_compress(model, tmp_path / "cache-single", **AWARE)
    # statistics summed over the ranks equal one process's up to the order of the sums
    assert [lp[:3] for lp in aware[0]["layers"]] == [lp[:3] for lp in single_aware["layers"]]
    for got, want in zip(aware[0]["layers"], single_aware["layers"]):
        assert got[4] == pytest.approx(want[4], rel=1e-4, abs=1e-6)  # the decomposition's relative error


def test_a_read_only_factor_cache_reads_the_folder_but_never_writes(tmp_path):
    weight = torch.randn(8, 6, 3, 3)
    FactorCache(tmp_path, writable=False).factors(weight, "tucker", (4, 4))
    assert not list(tmp_path.iterdir())
    FactorCache(tmp_path).factors(weight, "tucker", (4, 4))
    assert len(list(tmp_path.iterdir())) == 1
    key, found = FactorCache(tmp_path, writable=False).lookup(weight, "tucker", (4, 4))
    assert found is not None and key[1:3] == ("tucker", (4, 4))


def test_candidates_are_split_by_layer_and_method_largest_first():
    model = make_model_skeleton()
    per_layer = {"0": [Candidate("cp", (4,)), Candidate("cp", (2,)), Candidate("tucker", (2, 2))],
                 "3": [Candidate("cp", (8,)), Candidate("tucker", (4, 4))], "7": [Candidate("tucker", (8, 8))]}
    owners = candidate_owners(model, per_layer, 2)
    assert set(owners) == {("0", "cp"), ("0", "tucker"), ("3", "cp"), ("3", "tucker"), ("7", "tucker")}
    # the two largest groups (layers 3 and 7: 4608 and 9216 weights) go to different ranks
    assert owners[("7", "tucker")] != owners[("3", "cp")] or owners[("7", "tucker")] != owners[("3", "tucker")]
    assert set(owners.values()) == {0, 1}
    assert set(candidate_owners(model, per_layer, 1).values()) == {0}


CLI_MODEL = """
import os
from torch import nn


def build():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))


def build_fail():
    if os.environ.get("RANK") == "1":
        raise RuntimeError("rank 1 cannot build its model")
    return build()
"""


def _torchrun(tmp_path, *args, timeout):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]), MTD_DIST_TIMEOUT_S="300")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}", "-m", "mtd",
           *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def test_torchrun_runs_the_command_and_a_failing_rank_stops_the_job(tmp_path):
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 60), ("test", 15)):
        for c in range(4):
            folder = tmp_path / "data" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = np.clip(rng.normal(50 * c + 30, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    (tmp_path / "dist_net.py").write_text(CLI_MODEL)
    sys.path.insert(0, str(tmp_path))
    try:
        import dist_net

        torch.manual_seed(0)
        torch.save(dist_net.build().state_dict(), tmp_path / "weights.pt")
    finally:
        sys.path.remove(str(tmp_path))
    common = ["compress", "--data", str(tmp_path / "data"), "--checkpoint", str(tmp_path / "weights.pt"),
              "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--image-size", "16", "--smoke", "--max-drop", "99",
              "--no-speed", "--quiet"]
    done = _torchrun(tmp_path, *common, "--model", "dist_net:build", "--out", str(tmp_path / "out"), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test accuracy") == 1  # only rank 0 prints
    assert (tmp_path / "out" / "plan.json").is_file() and (tmp_path / "out" / "compressed.pt").is_file()

    failed = _torchrun(tmp_path, *common, "--model", "dist_net:build_fail", "--out", str(tmp_path / "out2"),
                       timeout=300)
    assert failed.returncode != 0
    assert "rank 1 cannot build its model" in failed.stderr + failed.stdout
    assert not (tmp_path / "out2" / "plan.json").exists()


def test_torchrun_trains_a_baseline_through_ddp(tmp_path, tiny_cifar):
    done = _torchrun(tmp_path, "train", "--data", str(tiny_cifar), "--model", "vgg11", "--width", "0.125",
                     "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path / "vgg.pt"), "--quiet",
                     "--cache-dir", str(tmp_path / "cache"), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained vgg11") == 1  # only rank 0 prints
    from mtd.models import load_model

    assert load_model(str(tmp_path / "vgg.pt")) is not None


def test_commands_that_would_only_repeat_their_work_refuse_torchrun(capsys, monkeypatch, tmp_path):
    from mtd.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["eval", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tmp_path)]) == 2
    assert "mtd eval runs in one process" in capsys.readouterr().err
