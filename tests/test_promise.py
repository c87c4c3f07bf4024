"""The promise under selection: the budget search keeps its stated confidence (simulated searches)."""
import importlib.util
from pathlib import Path

import pytest

from mtd.planner import CompressConfig
from mtd.planner.verify import selection_z

_spec = importlib.util.spec_from_file_location(
    "promise_simulation", Path(__file__).resolve().parents[1] / "benchmarks" / "studies" / "promise_simulation.py")
sim = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sim)


def test_bonferroni_quantile():
    assert selection_z(0.8, 1) == pytest.approx(0.8416, abs=1e-4)
    assert selection_z(0.8, 3) == pytest.approx(1.5011, abs=1e-4)  # each round at 1 - 0.2 / 3
    assert CompressConfig(confidence=0.9).z(2) == pytest.approx(selection_z(0.9, 2))
    with pytest.raises(ValueError):
        selection_z(0.8, 0)


@pytest.mark.parametrize("scenario", ["flat", "edge", "cliff"])
def test_search_delivers_the_stated_confidence(scenario):
    corrected = sim.simulate(scenario, "bonferroni", seeds=400)
    assert corrected["broken_rate"] <= corrected["stated_limit"]  # at most 20% of searches over budget
    if scenario != "flat":  # (where nothing is within budget, returning nothing is right)
        assert corrected["returned_rate"] > 0.5  # and it still compresses


def test_without_the_correction_selection_breaks_more_promises():
    naive = sim.simulate("flat", "naive", seeds=400)
    corrected = sim.simulate("flat", "bonferroni", seeds=400)
    assert naive["broken_rate"] > naive["stated_limit"] + 0.05  # each round passes ~18%: several rounds, more
    assert naive["broken_rate"] > corrected["broken_rate"] + 0.1


def test_paired_masks_have_the_requested_drop():
    import numpy as np

    base, model = sim.paired_masks(2.0, 200_000, 0.08, np.random.default_rng(0))
    drop = 100 * float(base.double().mean() - model.double().mean())
    assert drop == pytest.approx(2.0, abs=0.2)
