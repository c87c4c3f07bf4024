"""Planner: EVBMF, plan JSON, thesis rule, budgeted selection and exact rebuild from a plan.

Everything runs on a tiny CNN whose conv weights are built with known structure: one layer is
exactly low CP rank, another exactly low Tucker-2 rank, so the right answers are known.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from mtd.planner import CandidateGrid, LayerPlan, Plan, apply_plan, compress, evbmf_rank, vbmf_tucker_ranks
from mtd.planner.baselines import uniform_cp_rank, uniform_tucker_ranks
from mtd.planner.layer_factory import set_backend
from mtd.planner.select import Scored, assignment_path, search_budget
from mtd.planner.candidates import Candidate

GRID = CandidateGrid(cp_ratios=(2, 4, 8, 16), cp4_ratios=(8,), tucker_fractions=(0.5, 0.25), svd_ratios=(2,))


def cp_weight(t: int, s: int, k: int, rank: int, gen: torch.Generator) -> torch.Tensor:
    """A (t, s, k, k) kernel of CP rank exactly ``rank``."""
    a, b, c = (torch.randn(n, rank, generator=gen) for n in (t, s, k * k))
    return torch.einsum("tr,sr,kr->tsk", a, b, c).reshape(t, s, k, k) / rank ** 0.5


def tucker_weight(t: int, s: int, k: int, r1: int, r2: int, gen: torch.Generator) -> torch.Tensor:
    """A (t, s, k, k) kernel of Tucker-2 ranks exactly (r1, r2) with a dense random core."""
    core = torch.randn(r2, r1, k, k, generator=gen)
    u_out, u_in = torch.randn(t, r2, generator=gen), torch.randn(s, r1, generator=gen)
    return torch.einsum("bakl,tb,sa->tskl", core, u_out, u_in) / (r1 * r2) ** 0.5


class TinyNet(nn.Module):
    """conv(3->8) -> conv(8->16, CP rank 3) -> pool -> conv(16->16, Tucker (4, 4)) -> linear."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.randn(8, 3, 3, 3, generator=gen) * 0.3)
            self.conv2.weight.copy_(cp_weight(16, 8, 3, 3, gen))
            self.conv3.weight.copy_(tucker_weight(16, 16, 3, 4, 4, gen))
            self.fc.weight.copy_(torch.randn(10, 16, generator=gen))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return torch.relu(self.conv3(x)).mean((2, 3))  # (N, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    @torch.no_grad()
    def standardise_classifier(self, x: torch.Tensor) -> None:
        """Scale/shift the classifier so that its logits are centred on ``x``: diverse predicted classes."""
        f = self.features(x)
        self.fc.weight.div_(f.std(0) + 1e-6)
        self.fc.bias.copy_(-self.fc.weight @ f.mean(0))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.randn(384, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    model.standardise_classifier(x)
    with torch.no_grad():
        y = model(x).argmax(1)  # the model's own labels: 100% baseline accuracy, every change shows
    assert torch.bincount(y, minlength=10).min() > 5  # every class is predicted
    return model, x, y


# --- EVBMF ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,rank,noise", [((60, 200), 7, 0.1), ((120, 80), 12, 0.3), ((64, 576), 20, 0.2)])
def test_evbmf_recovers_rank_of_low_rank_plus_noise(shape, rank, noise):
    rng = np.random.default_rng(rank)
    signal = rng.standard_normal((shape[0], rank)) @ rng.standard_normal((rank, shape[1]))
    assert evbmf_rank(signal + noise * rng.standard_normal(shape)) == rank


def test_evbmf_of_pure_noise_is_zero():
    assert evbmf_rank(np.random.default_rng(0).standard_normal((50, 90))) == 0


def test_vbmf_tucker_ranks_of_tucker_kernel():
    w = tucker_weight(32, 24, 3, 5, 7, torch.Generator().manual_seed(0))
    w = w + 0.01 * torch.randn(w.shape, generator=torch.Generator().manual_seed(1))
    assert vbmf_tucker_ranks(w) == (5, 7)


def test_uniform_ranks_meet_ratio():
    T, S, k = 64, 32, 3
    r = uniform_cp_rank(T, S, k, k, 8)
    assert r * (S + T + k * k) <= T * S * k * k / 8 < (r + 1) * (S + T + k * k)
    r1, r2 = uniform_tucker_ranks(T, S, k, k, 8)
    assert S * r1 + r1 * r2 * k * k + r2 * T <= T * S * k * k / 8
    with pytest.raises(ValueError, match="target_ratio"):
        uniform_cp_rank(T, S, k, k, 0.5)


# --- plan JSON --------------------------------------------------------------------------------------------
def test_plan_json_round_trip(tmp_path):
    plan = Plan(model_name="vgg11", model_kwargs={"width": 0.25}, method="mtd",
                layers=[LayerPlan("features.0", "conv", "cp", [5], 1728, 300, 10, 3, 0.1, {"loss": 0.1, "accuracy": 0.2},
                                  seed=3, warm_start=[9, 7]),
                        LayerPlan("classifier", "linear", "dense", [], 100, 100, 100, 100)],
                budget={"max_drop": 1.0}, results={"rounds": [{"round": 0}]}, decomposition={"cp_n_iter_max": 5})
    path = plan.save(tmp_path / "sub" / "plan.json")
    loaded = Plan.load(path)
    assert loaded == plan
    assert json.loads(path.read_text())["totals"]["params_after"] == 400
    assert not list(path.parent.glob("*.tmp"))  # atomic write left no temporary file
    with pytest.raises(ValueError, match="unknown method"):
        LayerPlan("x", "conv", "magic")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Plan.load(tmp_path / "bad.json")


# --- selection ---------------------------------------------------------------------------------------------
def test_budget_search_picks_most_compressed_acceptable():
    opts = {"a": [Scored(Candidate("dense"), 100, 0), Scored(Candidate("cp", (4,)), 10, 0, loss=0.5),
                  Scored(Candidate("cp", (8,)), 20, 0, loss=0.05)],
            "b": [Scored(Candidate("dense"), 100, 0), Scored(Candidate("cp", (2,)), 5, 0, loss=0.01)]}
    path = assignment_path(opts, 200)
    a_params = [a["a"].params for a in path]
    assert a_params[0] == 10 and a_params[-1] == 100 and a_params == sorted(a_params)  # compressed -> dense
    assert path[0]["b"].params == 5 and path[-1]["b"].method == "dense"
    # accept only assignments whose summed loss increase is below 0.1
    _, chosen = search_budget(path, lambda a: sum(s.loss for s in a.values()) < 0.1)
    assert chosen["a"].params == 20 and chosen["b"].params == 5


# --- thesis rule --------------------------------------------------------------------------------------------
def test_thesis_mode_picks_cp_for_cp_layer_and_tucker_for_tucker_layer(tiny):
    model, x, y = tiny
    _, plan = compress(model, (x, y), method="thesis", max_drop=1.0, calib_size=256, holdout_size=0,
                       finetune_epochs=0, grid=GRID, progress=False, layers=["conv2", "conv3"])
    assert plan.layer("conv2").method == "cp" and plan.layer("conv2").ranks[0] >= 3
    assert plan.layer("conv3").method == "tucker"
    assert plan.layer("conv3").rel_error < 1e-6


# --- budgeted MTD + exact rebuild ---------------------------------------------------------------------------
def test_mtd_respects_budget_and_apply_plan_rebuilds_exactly(tiny, tmp_path):
    model, x, y = tiny
    compressed, plan = compress(model, (x, y), method="mtd", max_drop=1.0, calib_size=256, holdout_size=0,
                                finetune_epochs=0, grid=GRID, progress=False, seed=2, cache_dir=str(tmp_path))
    rounds = plan.results["rounds"]
    assert rounds[-1]["calibration_drop"] <= plan.budget["planning_drop"] == 1.0
    assert plan.totals()["param_ratio"] > 1.5 and plan.results["model_param_ratio"] > 1.0
    assert {plan.layer("conv2").method, plan.layer("conv3").method} <= {"cp", "cp4", "tucker"}
    before = {p.data_ptr() for p in model.parameters()}
    assert before == {p.data_ptr() for p in model.parameters()}  # original untouched
    plan_path = plan.save(tmp_path / "plan.json")
    rebuilt = apply_plan(model, Plan.load(plan_path), backend="torch")
    set_backend(compressed, "torch")
    with torch.no_grad():
        assert torch.equal(rebuilt(x[:16]), compressed(x[:16]))
    # loading a (here: perturbed, as if fine-tuned) state_dict on top of the plan's structure
    state = {k: v + 1e-3 for k, v in compressed.state_dict().items()}
    skeleton = apply_plan(model, plan, state_dict=state, decompose=False, backend="torch")
    compressed.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(skeleton(x[:16]), compressed(x[:16]))


def test_compress_rejects_bad_arguments(tiny):
    model, x, y = tiny
    with pytest.raises(ValueError, match="unknown method"):
        compress(model, (x, y), method="magic")
    with pytest.raises(ValueError, match="needs target_ratio"):
        compress(model, (x, y), method="cp-uniform")
    with pytest.raises(ValueError, match="no layer named 'missing'"):
        compress(model, (x, y), layers=["conv1", "missing"])
    odd = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    with pytest.raises(ValueError, match="'1' \\(BatchNorm2d\\) cannot be compressed"):
        compress(odd.eval(), (x, y), layers=["1"])
    with pytest.raises(TypeError, match="train_data"):
        compress(model, x)
