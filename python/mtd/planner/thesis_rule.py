"""The thesis' own per-layer rule (Liang 2020, Sec. 4.1-4.2), as a reproducible planner mode.

Per layer, start from the full-rank end and lower the rank step by step while the accuracy drop of
the network with only that layer decomposed stays within ``tolerance``; do this along the CP path
(rank R) and along the Tucker-2 path (R1/S = R2/T shrinking together), and switch to the other
decomposition when it reaches a better compression ratio within the same tolerance. The layer stays
dense when neither decomposition meets the tolerance at its largest rank.
"""
from __future__ import annotations

from .select import Assignment, Scored


def _lowest_within(path: list[Scored], tolerance: float) -> Scored | None:
    """Walk ``path`` (decreasing rank) and return the last candidate before the drop exceeds ``tolerance``."""
    last_ok = None
    for s in path:
        if s.accuracy > tolerance:
            break
        last_ok = s
    return last_ok


def tucker_diagonal(options: list[Scored], in_ch: int, out_ch: int) -> list[Scored]:
    """Tucker candidates whose two ranks shrink together (R1/S == R2/T), largest first."""
    tucker = [s for s in options if s.method == "tucker"]
    diag = [s for s in tucker if abs(s.candidate.ranks[0] / in_ch - s.candidate.ranks[1] / out_ch) < 1e-6 or
            (s.candidate.ranks[0] * out_ch == s.candidate.ranks[1] * in_ch)]
    path = diag or tucker
    return sorted(path, key=lambda s: -s.params)


def thesis_layer_choice(options: list[Scored], in_ch: int, out_ch: int, tolerance: float) -> Scored:
    """The thesis rule for one layer: best ratio among the CP and Tucker paths within ``tolerance``."""
    dense = next(s for s in options if s.method == "dense")
    cp_path = sorted((s for s in options if s.method == "cp"), key=lambda s: -s.params)
    svd_path = sorted((s for s in options if s.method == "svd"), key=lambda s: -s.params)
    finals = [f for f in (_lowest_within(cp_path, tolerance),
                          _lowest_within(tucker_diagonal(options, in_ch, out_ch), tolerance),
                          _lowest_within(svd_path, tolerance)) if f is not None]
    # "switch when the other gives a better ratio at that error": the fewer parameters wins,
    # ties go to the smaller accuracy drop.
    return min(finals, key=lambda s: (s.params, s.accuracy)) if finals else dense


def thesis_assignment(options: dict[str, list[Scored]], shapes: dict[str, tuple[int, int]],
                      tolerance: float) -> Assignment:
    """Apply :func:`thesis_layer_choice` to every layer. ``shapes[name] = (in_ch, out_ch)``."""
    return {name: thesis_layer_choice(opts, *shapes[name], tolerance) for name, opts in options.items()}
