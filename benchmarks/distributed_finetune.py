#!/usr/bin/env python
"""Does sharding cost anything? One fine-tuning epoch as ``mtd.compress`` runs it, in 1 process x 2 threads and
under ``torchrun`` in 2 processes x 1 thread (DDP, gloo, each rank its shard and half the global batch).

The student is the VGG11 38x plan of ``finetune_speed`` (``results/finetune_speed_plans.json``; random factors,
timing only) built on the shared VGG11 checkpoint, distilled from that dense model through a fresh
:class:`mtd.train.teacher_bank.TeacherBank` (a first fine-tune: every view's teacher output computed once) and
then again over the same views (a repeated fine-tune: bank hits), precision "auto", ``--images`` random uint8
32x32 images (an epoch of CIFAR-10's 50,000 by default), global batch 128. The two configurations alternate for
``--rounds`` rounds; a row is the median of its rounds, wall time of the whole epoch on rank 0 (the ranks wait
for each other every step).

    python benchmarks/distributed_finetune.py [--rounds 2] [--images 50000]
    python benchmarks/distributed_finetune.py --render      # the .md again from the .json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _bench_util as bu  # noqa: E402

BATCH = 128
CONFIGS = (("1 process x 2 threads", 1, 2), ("2 processes x 1 thread (torchrun, DDP)", 2, 1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", default="../shared/models")
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # a JSON file a run writes its times to
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.render:
        results = json.loads((Path(args.out) / "distributed_finetune.json").read_text())
        (Path(args.out) / "distributed_finetune.md").write_text(markdown(results))
        print(markdown(results))
        return 0
    results = {"machine": bu.machine_info(), "images": args.images, "global_batch": BATCH, "rows": []}
    times: dict[str, list[dict]] = {name: [] for name, _, _ in CONFIGS}
    for r in range(args.rounds):
        for name, procs, threads in CONFIGS:
            times[name].append(launch(args, procs, threads))
            print(f"round {r + 1} {name:42s} first {times[name][-1]['first_s']:6.1f} s  repeated "
                  f"{times[name][-1]['repeated_s']:6.1f} s", flush=True)
    base = statistics.median(t["first_s"] for t in times[CONFIGS[0][0]])
    for name, procs, threads in CONFIGS:
        first = statistics.median(t["first_s"] for t in times[name])
        repeated = statistics.median(t["repeated_s"] for t in times[name])
        results["rows"].append({"config": name, "processes": procs, "threads_per_process": threads,
                                "first_epoch_s": first, "repeated_epoch_s": repeated,
                                "first_vs_one_process": first / base, "rounds": times[name]})
    out = Path(args.out)
    (out / "distributed_finetune.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "distributed_finetune.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def launch(args, procs: int, threads: int) -> dict:
    """One run in its own process(es); its times as rank 0 wrote them."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "times.json"
        common = [str(Path(__file__).resolve()), "--worker", str(result), "--checkpoints", args.checkpoints,
                  "--images", str(args.images)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        if procs == 1:
            cmd = [sys.executable, *common]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                   *common]
        subprocess.run(cmd, env=env, check=True)
        return json.loads(result.read_text())


def worker(args) -> int:
    """The fine-tunes ``mtd.compress`` runs, sharded as it shards them under a process group."""
    from finetune_speed import build
    from mtd.data import TensorDataLoader
    from mtd.train import finetune
    from mtd.train.distributed import cleanup, init_distributed
    from mtd.train.teacher_bank import TeacherBank

    info = init_distributed()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    dense, student, _ = build("vgg11", args.checkpoints)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 32, 32, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.images,), generator=g)
    loader = TensorDataLoader(images, labels, BATCH // info.world_size, train=True, views=16, rank=info.rank,
                              world_size=info.world_size, mean=(0.5,) * 3, std=(0.25,) * 3)
    trained = student
    if info.world_size > 1:
        trained = torch.nn.parallel.DistributedDataParallel(student)
    bank = TeacherBank(dense, args.images * 16)
    seconds = []
    for _ in range(2):  # a first fine-tune (the teacher runs once per view), then a repeated one (bank hits)
        loader.set_epoch(0)
        t0 = time.perf_counter()
        finetune(trained, loader, epochs=1, lr=1e-3, teacher=bank, progress=False)
        seconds.append(time.perf_counter() - t0)
    if info.is_main:
        Path(args.worker).write_text(json.dumps({"first_s": seconds[0], "repeated_s": seconds[1],
                                                 "steps": len(loader), "threads": torch.get_num_threads()}))
    cleanup()
    return 0


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = ["# One fine-tuning epoch: 1 process x 2 threads vs 2 processes x 1 thread (DDP)", "",
             f"{m['cpu']} ({', '.join(m['cpu_features'])}; {m['cores']} cores), torch {m['torch']}; VGG11 38x "
             f"student distilled from dense VGG11 through a teacher bank, {results['images']} images, global batch "
             f"{results['global_batch']}, precision auto; median of {len(results['rows'][0]['rounds'])} "
             "alternating rounds (`python benchmarks/distributed_finetune.py`).", "",
             "| configuration | first fine-tune epoch (s) | repeated epoch, bank hits (s) | first epoch, time vs 1 process |",
             "|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['config']} | {r['first_epoch_s']:.1f} | {r['repeated_epoch_s']:.1f} | "
                     f"{r['first_vs_one_process']:.2f}x |")
    lines += ["", "Each round, first / repeated epoch (s): " + "; ".join(
        f"{r['config']}: " + ", ".join(f"{t['first_s']:.1f} / {t['repeated_s']:.1f}" for t in r["rounds"])
        for r in results["rows"]) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
