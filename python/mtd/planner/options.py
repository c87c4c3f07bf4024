"""Score every candidate of every layer: build it, count it, and measure it in the network."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from .. import methods
from ..utils import atomic_write, progress_bar
from .candidates import Candidate, CandidateGrid, layer_candidates
from ..train.distributed import all_reduce_sum, get_rank, get_world_size
from .factor_cache import FactorCache, weight_hash
from .layer_factory import build_layer, dense_cost, layer_cost
from .select import Scored
from .sensitivity import Calibration, Score, sensitivity


def warm_chain(candidate: Candidate, all_candidates: list[Candidate]) -> tuple[int, ...]:
    """Higher ranks of the same method decomposed before ``candidate`` (each warm-starts the next), for a method
    that warm-starts (CP/CP4)."""
    if candidate.method == methods.DENSE or not methods.get(candidate.method).warm_starts:
        return ()
    rank = candidate.ranks[0]
    higher = sorted({c.ranks[0] for c in all_candidates if c.method == candidate.method and c.ranks[0] > rank},
                    reverse=True)
    return tuple(higher)


def record_io_shapes(model: nn.Module, names: list[str], sample: torch.Tensor) -> dict[str, tuple]:
    """``{name: (input_hw, output_hw)}`` of each named conv from one forward pass of ``sample``."""
    shapes: dict[str, tuple] = {}
    hooks = []
    for name in names:
        def hook(module, inputs, output, name=name):
            shapes[name] = (tuple(inputs[0].shape[2:]), tuple(output.shape[2:]))
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            was_training = model.training
            model.eval()
            model(sample)
            model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def candidate_owners(model: nn.Module, per_layer: dict[str, list[Candidate]], world: int) -> dict[tuple, int]:
    """``{(layer, method): rank}``: which rank decomposes and scores a layer's candidates of one method under a
    process group of ``world`` ranks. A method's candidates stay together (CP's lower ranks warm-start from its
    higher ones); groups go, largest first, to the least loaded rank (load ~ weight size x candidates)."""
    groups: dict[tuple, int] = {}
    for name, cands in per_layer.items():
        size = model.get_submodule(name).weight.numel()
        for cand in cands:
            groups[(name, cand.method)] = groups.get((name, cand.method), 0) + size
    load, owners = [0] * world, {}
    for group, cost in sorted(groups.items(), key=lambda item: -item[1]):  # stable: ties keep layer order
        rank = min(range(world), key=lambda r: load[r])
        owners[group], load[rank] = rank, load[rank] + cost
    return owners


def score_options(model: nn.Module, layers: list[str], grid: CandidateGrid, calib: Calibration, base: Score,
                  cache: FactorCache, io_shapes: dict[str, tuple], seed: int, *,
                  only: Optional[Callable[[str, nn.Module], list[Candidate]]] = None,
                  stats: Optional[dict] = None, progress: bool = True) -> dict[str, list[Scored]]:
    """``{layer: [Scored dense, Scored candidates...]}``; ``only`` overrides the candidate list per layer.
    ``stats``: ``{layer: InputStats}``: candidates are decomposed activation-aware where their method has a
    variant (the factors the compressed model is then built from).

    Under a process group every rank calls it; each decomposes and scores the candidates
    :func:`candidate_owners` gives it, and the scores are gathered: every rank returns the same options, each
    exactly as one process would have scored it."""
    per_layer = {}
    for name in layers:
        module = model.get_submodule(name)
        per_layer[name] = only(name, module) if only else layer_candidates(module, grid)
    owners = candidate_owners(model, per_layer, get_world_size())
    rank = get_rank()
    flat = [(name, cand, cands) for name, cands in per_layer.items() for cand in cands]
    mine = [row for row, (name, cand, _) in enumerate(flat) if owners[(name, cand.method)] == rank]
    rows = torch.zeros(len(flat), 5, dtype=torch.float64)  # per candidate: params, macs, rel_error, loss, accuracy
    bar = progress_bar(total=len(mine), desc="scoring candidates", enabled=progress, unit="cand")
    whashes: dict[str, str] = {}  # each layer's weight hashed once
    try:
        for row in mine:
            name, cand, cands = flat[row]
            module = model.get_submodule(name)
            if name not in whashes:
                whashes[name] = weight_hash(module.weight)
            bar.set_postfix_str(f"{name} {cand.label()}", refresh=False)
            factors = cache.factors(module.weight, cand.method, cand.ranks, seed, warm_chain(cand, cands),
                                    whash=whashes[name], stats=(stats or {}).get(name))
            layer = build_layer(module, cand.method, factors, backend="torch")
            p, macs = layer_cost(layer, io_shapes[name][0])
            d = sensitivity(model, name, layer, calib, base)
            rows[row] = torch.tensor([p, macs, float(factors.rel_error), d["loss"], d["accuracy"]],
                                     dtype=torch.float64)
            bar.update(1)
    finally:
        bar.close()
    all_reduce_sum(rows)  # every rank's rows (no-op alone)
    options: dict[str, list[Scored]] = {}
    values = iter(rows.tolist())
    for name, cands in per_layer.items():
        params, macs = dense_cost(model.get_submodule(name), io_shapes[name][0])
        options[name] = [Scored(Candidate(methods.DENSE), params, macs)]
        for cand in cands:
            p, macs, rel_error, loss, accuracy = next(values)
            s = Scored(cand, int(p), int(macs), rel_error=rel_error)
            s.loss, s.accuracy = loss, accuracy
            options[name].append(s)
    return options


def score_key(model: nn.Module, layers: list[str], parts: dict) -> str:
    """Content key of a scoring run: the whole model's weights and buffers plus ``parts`` (JSON-able)."""
    h = hashlib.sha1(json.dumps({"layers": layers, **parts}, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:24]


_SCORES_FORMAT = "mtd-scores"


def save_options(path: Path, options: dict[str, list[Scored]]) -> None:
    """Write scored options as JSON (atomically): a later run with the same key skips the scoring."""
    data = {name: [dict(dataclasses.asdict(s), candidate=dataclasses.asdict(s.candidate)) for s in opts]
            for name, opts in options.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as f:
        json.dump({"format": _SCORES_FORMAT, "key": path.stem, "layers": data}, f)


def load_options(path: Path) -> Optional[dict[str, list[Scored]]]:
    """Options written by :func:`save_options` to ``path``, or None if absent; a file that is unreadable,
    foreign (another format or key) or holds ill-typed scores gives a warning and None (re-scored)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != _SCORES_FORMAT or data.get("key") != path.stem:
            raise ValueError(f"not an {_SCORES_FORMAT} file written for {path.stem!r}")
        return {name: [_scored(s) for s in opts] for name, opts in data["layers"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        warnings.warn(f"ignoring unusable candidate-score cache {path} ({type(err).__name__}: {err}); "
                      "scoring again", stacklevel=2)
        return None


def _scored(entry: dict) -> Scored:
    """One :class:`Scored` from its JSON, every number checked against the field's type."""
    hints = typing.get_type_hints(Scored)
    entry = {("macs" if k == "flops" else k): v for k, v in entry.items()}  # "flops" before mtd renamed it (#19)
    cand = entry["candidate"]
    if not isinstance(cand["method"], str) or not all(type(r) is int and r > 0 for r in cand["ranks"]):
        raise ValueError(f"bad candidate {cand!r}")
    values = {}
    for f in dataclasses.fields(Scored):
        if f.name == "candidate":
            continue
        value = entry[f.name]
        allowed = (int,) if hints[f.name] is int else (int, float)
        if type(value) not in allowed:
            raise ValueError(f"{f.name}={value!r} is not a {hints[f.name].__name__}")
        values[f.name] = value
    return Scored(Candidate(cand["method"], tuple(cand["ranks"])), **values)
