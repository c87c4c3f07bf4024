"""Where the budget search spends its rounds: by the ratio expected to be kept, the last one where a pass is likely.

Synthetic searches: ``probe`` and ``finish`` are fakes over a path whose probe drops, verified drops and margins
are given per index (no training). The scenario is the one that motivated the rule (``search.py``'s docstring).
"""
import math
import random

import pytest
from torch import nn

from mtd.planner.search import (LIKELY, RETAINED, SPREAD_PRIOR, FrontierSearch, plan_rounds, prediction_spread,
                                probe_threshold)
from mtd.planner.verify import Verification


class Path:
    """A fake path: ``ratios``, ``probes`` (calibration drops), ``verified`` drops and ``margins`` per index."""

    def __init__(self, ratios, probes, verified, margins, max_drop):
        assert len(ratios) == len(probes) == len(verified) == len(margins)
        self.ratios, self.probes, self.verified, self.margins = ratios, probes, verified, margins
        self.max_drop = max_drop
        self.probed: list[int] = []  # every call of probe, in order
        self.models: dict[int, nn.Module] = {}
        self.search = None

    def probe(self, i):
        self.probed.append(i)
        model = nn.Identity()
        model.index = i
        self.models[i] = model
        return self.probes[i], model

    def finish(self, model):
        d, m = self.verified[model.index], self.margins[model.index]
        return Verification(500, 99.9, 99.9 - d, d, m / 1.5, m, self.max_drop)

    def run(self, rounds):
        self.search = FrontierSearch(len(self.ratios), ratio=lambda i: self.ratios[i], probe=self.probe,
                                     finish=self.finish, max_drop=self.max_drop, rounds=rounds, log=lambda m: None)
        return self.search, self.search.run()


def issue_path():
    """The issue's CNN, as the search saw it: 21.96x verified 2.20 (+0.84 margin) and 21.38x 1.40 (+0.67) against
    a budget of 2.0, probes at 16-17x measuring 0.00. Verified drops rise steeply above 17.6x, so every index
    from 18.4x up fails narrowly and every one from 17.6x down passes."""
    ratios = [21.96, 21.38, 20.6, 19.5, 18.4, 17.6, 16.9, 16.2, 12.0, 8.0, 4.0, 2.0, 1.3]
    probes = [4.0, 2.0, 1.6, 1.2, 0.6, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    verified = [2.20, 1.40, 1.38, 1.36, 1.36, 0.30, 0.20, 0.15, 0.10, 0.05, 0.0, 0.0, 0.0]
    margins = [0.84, 0.67, 0.66, 0.66, 0.66, 0.55, 0.50, 0.50, 0.45, 0.40, 0.30, 0.30, 0.30]
    return Path(ratios, probes, verified, margins, max_drop=2.0)


def test_issue_scenario_last_round_goes_where_a_pass_is_likely():
    path = issue_path()
    search, best = path.run(rounds=2)
    assert len(search.history) == 2
    # the code before this rule spent both rounds at the edge (21.96x, then 21.38x) and returned nothing
    assert best is not None and best.verification.passed
    assert best.ratio >= 16.0  # the probes at 16-17x measured 0.00: the last round went there, not to the edge
    last = search.history[-1]
    assert last is best and last.chance is not None and last.chance > 0.75
    assert all(r.ratio > 18.0 for r in search.history[:-1])  # the first round may still take the long shot


def test_issue_scenario_spends_rounds_on_the_long_shot_while_a_round_is_left():
    path = issue_path()
    search, best = path.run(rounds=3)
    assert search.history[0].index == 0  # at 88% and with two rounds behind it, the edge is worth a round
    assert best is not None and best.verification.passed and best.ratio >= 16.0


def test_edge_that_is_a_likely_pass_is_taken():
    # probes rise gently and everything verifies well within budget: the most compressed index is the bet
    ratios = [20.0, 16.0, 12.0, 8.0, 4.0, 2.0]
    path = Path(ratios, [1.0, 0.8, 0.5, 0.3, 0.1, 0.0], [0.2, 0.15, 0.1, 0.05, 0.0, 0.0], [0.3] * 6, max_drop=2.0)
    search, best = path.run(rounds=2)
    assert [r.index for r in search.history] == [0]  # a pass at index 0 closes the frontier: no second round
    assert best is not None and best.index == 0
    # and the same on a single, last round
    path = Path(ratios, [1.0, 0.8, 0.5, 0.3, 0.1, 0.0], [0.2, 0.15, 0.1, 0.05, 0.0, 0.0], [0.3] * 6, max_drop=2.0)
    search, best = path.run(rounds=1)
    assert best is not None and best.index == 0


def test_last_round_stays_at_the_edge_when_its_ratio_outweighs_the_risk():
    # round 1 at the edge fails by far; index 1 (20x, about even odds) still beats 15x (also about even) and below
    ratios = [30.0, 20.0, 15.0, 10.0, 5.0, 2.0]
    probes = [6.0, 1.0, 0.8, 0.5, 0.2, 0.0]
    verified = [5.0, 0.3, 0.25, 0.2, 0.1, 0.0]
    path = Path(ratios, probes, verified, [0.2] * 6, max_drop=1.5)
    search, best = path.run(rounds=2)
    assert [r.index for r in search.history] == [0, 1]
    assert best is not None and best.index == 1


def test_single_round_prefers_a_likely_pass_to_an_even_bet():
    # the edge (22x, probe 10: predicted exactly at the budget before any round) is an even bet; 17x is near-sure
    ratios = [22.0, 20.0, 17.0, 10.0, 5.0]
    probes = [10.0, 6.0, 0.0, 0.0, 0.0]
    verified = [1.9, 1.5, 0.3, 0.1, 0.0]
    path = Path(ratios, probes, verified, [0.5] * 5, max_drop=2.0)
    search, best = path.run(rounds=1)
    assert len(search.history) == 1
    assert best is not None and best.ratio == 17.0
    # 1 + 0.5 * 21 = 11.5 expected at 22x, 1 + 0.98 * 16 = 16.6 at 17x
    assert search.history[0].chance == pytest.approx(0.5 * (1 + math.erf(2.0 / SPREAD_PRIOR / math.sqrt(2))))


def test_single_round_on_the_issue_path_is_a_single_round():
    path = issue_path()
    search, best = path.run(rounds=1)
    assert len(search.history) == 1 and search.history[0].chance is not None
    assert all(p.model is None for p in search.probes.values())
    if best is None:  # what the round verified failed: the model it fine-tuned is released too
        assert search.history[0].model is None


def test_plan_rounds_last_round_rule():
    # nothing banked: 17x at 95% (16.2x expected) beats 21x at 45% (10.0x)
    c, expected = plan_rounds([21.0, 17.0], [0.45, 0.95], 1, 1.0)
    assert c == 1 and expected == pytest.approx(1.0 + 0.95 * 16.0)
    # 16.5x banked: a failure costs nothing, so the long shot is worth more (0.45 * 4.5 > 0.95 * 0.5)
    c, expected = plan_rounds([21.0, 17.0], [0.45, 0.95], 1, 16.5)
    assert c == 0 and expected == pytest.approx(16.5 + 0.45 * 4.5)
    # a likely edge is taken
    assert plan_rounds([21.0, 17.0], [0.9, 0.95], 1, 1.0)[0] == 0
    # no candidate adds to what is banked
    assert plan_rounds([], [], 2, 3.0) == (None, 3.0)


def test_plan_rounds_values_a_failure_as_news_for_the_other_candidates():
    # a 30x at 30% then a 10x at 90% on two rounds: if 30x fails, 10x's chance is (0.9 - 0.3) / 0.7 = 86%
    c, expected = plan_rounds([30.0, 10.0], [0.3, 0.9], 2, 1.0)
    assert c == 0
    assert expected == pytest.approx(0.3 * 30.0 + 0.7 * (1.0 + (0.6 / 0.7) * 9.0))
    # a chance lower than a more compressed candidate's is raised to it: a pass there would imply a pass here
    c, expected = plan_rounds([30.0, 10.0], [0.6, 0.4], 1, 1.0)
    assert c == 0 and expected == pytest.approx(1.0 + 0.6 * 29.0)


def test_prediction_spread_pools_left_out_residuals_with_the_prior():
    assert prediction_spread([], 1.0) == pytest.approx(SPREAD_PRIOR)
    # one round: its residual against the prior prediction (RETAINED x probe)
    r = 2.2 - RETAINED * 4.0
    assert prediction_spread([(4.0, 2.2)], 1.16) == pytest.approx(math.sqrt((SPREAD_PRIOR ** 2 + r * r) / 2))
    # two rounds on one proportional line: each predicts the other exactly, the prior alone is left, shrunk
    assert prediction_spread([(4.0, 2.0), (2.0, 1.0)], 1.0) == pytest.approx(SPREAD_PRIOR / math.sqrt(3))
    assert 0.5 < LIKELY < 1.0
    assert probe_threshold([], 2.0, 0.0) == pytest.approx(2.0 / RETAINED)  # the edge's rule is unchanged


@pytest.mark.parametrize("seed", range(60))
def test_invariants_on_random_searches(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 24)
    ratios = sorted((rng.uniform(1.05, 40.0) for _ in range(n)), reverse=True)
    truth = sorted((rng.uniform(0.0, 6.0) for _ in range(n)), reverse=True)  # more compressed, larger drop
    probes = [rng.uniform(0.2, 4.0) * t + rng.gauss(0.0, 0.5) for t in truth]
    verified = [t + rng.gauss(0.0, 0.3) for t in truth]
    margins = [rng.uniform(0.2, 0.9) for _ in range(n)]
    max_drop = rng.choice([0.5, 1.0, 2.0])
    rounds = rng.randint(1, 5)
    path = Path(ratios, probes, verified, margins, max_drop)
    seen_at_finish = []

    def finish(model):
        # no probe outside the range still open holds a model: nothing a later round could use is kept
        s = path.search
        failed = [r.index for r in s.history if not r.verification.passed]
        passed = [r.index for r in s.history if r.verification.passed]
        lo, hi = max(failed, default=-1), min(passed, default=n)
        assert all(p.model is None for p in s.probes.values() if not lo < p.index < hi)
        assert lo < model.index < hi  # never at or beyond a failure, never at or below a pass
        seen_at_finish.append(model.index)
        return Path.finish(path, model)

    path.finish = finish
    search, best = path.run(rounds)
    indices = [r.index for r in search.history]
    assert indices == seen_at_finish and len(indices) <= rounds
    assert len(set(indices)) == len(indices)  # no round repeated
    assert len(set(path.probed)) == len(path.probed)  # no index probed twice
    assert set(indices) <= set(path.probed)
    assert all(p.model is None for p in search.probes.values())  # every probe model released
    for r in search.history:
        if r is not best:
            assert r.model is None
    passing = [r for r in search.history if r.verification.passed]
    if passing:
        assert best is min(passing, key=lambda r: r.index)
        assert best.model is path.models[best.index]
    else:
        assert best is None
    for r in search.history:
        assert r.chance is None or 0.0 <= r.chance <= 1.0
