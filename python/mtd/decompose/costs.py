"""Parameter and multiply-accumulate (MAC) counts of each decomposition, written once.

A conv kernel has shape (T, S, kh, kw) (out, in, kernel), a Linear weight (out, in). Parameter counts are the
weights of the factors; the bias, which a decomposed layer keeps from the dense one, is not counted. MACs are
for one sample: ``in_hw`` is the (H, W) of the layer's input and ``out_hw`` that of its output (they differ by
stride, padding and dilation, which the kernel shape does not hold); a Linear ignores both.

Used by the rank caps (:mod:`.ranks`), the layers' ``macs`` and the method registry (:mod:`mtd.methods`).
"""
from __future__ import annotations

from typing import Sequence

Shape = Sequence[int]
Ranks = Sequence[int]
HW = Sequence[int]


def cp3_params(shape: Shape, ranks: Ranks) -> int:
    """R * (S + kh*kw + T): 1x1 (S->R), depthwise kh x kw, 1x1 (R->T)."""
    t, s, kh, kw = shape
    return ranks[0] * (s + kh * kw + t)


def cp4_params(shape: Shape, ranks: Ranks) -> int:
    """R * (S + kh + kw + T): 1x1, depthwise kh x 1, depthwise 1 x kw, 1x1."""
    t, s, kh, kw = shape
    return ranks[0] * (s + kh + kw + t)


def tucker2_params(shape: Shape, ranks: Ranks) -> int:
    """S*R1 + R1*R2*kh*kw + R2*T: 1x1 (S->R1), dense kh x kw core (R1->R2), 1x1 (R2->T)."""
    t, s, kh, kw = shape
    r1, r2 = ranks
    return s * r1 + r1 * r2 * kh * kw + r2 * t


def svd_params(shape: Shape, ranks: Ranks) -> int:
    """R * (in + out): Linear (in->R), Linear (R->out)."""
    out_features, in_features = shape
    return ranks[0] * (in_features + out_features)


def cp3_macs(shape: Shape, ranks: Ranks, in_hw: HW, out_hw: HW) -> int:
    """The first 1x1 runs at the input size, the depthwise conv and the last 1x1 at the output size."""
    t, s, kh, kw = shape
    (h, w), (ho, wo) = in_hw, out_hw
    return ranks[0] * (s * h * w + kh * kw * ho * wo + t * ho * wo)


def cp4_macs(shape: Shape, ranks: Ranks, in_hw: HW, out_hw: HW) -> int:
    """As CP3, but the kh x 1 conv makes an (Ho, W) map before the 1 x kw conv makes (Ho, Wo)."""
    t, s, kh, kw = shape
    (h, w), (ho, wo) = in_hw, out_hw
    return ranks[0] * (s * h * w + kh * ho * w + kw * ho * wo + t * ho * wo)


def tucker2_macs(shape: Shape, ranks: Ranks, in_hw: HW, out_hw: HW) -> int:
    """First 1x1 at the input size, the core and the last 1x1 at the output size."""
    t, s, kh, kw = shape
    r1, r2 = ranks
    (h, w), (ho, wo) = in_hw, out_hw
    return s * r1 * h * w + r1 * r2 * kh * kw * ho * wo + r2 * t * ho * wo


def svd_macs(shape: Shape, ranks: Ranks, in_hw: HW = (), out_hw: HW = ()) -> int:
    """One input row: the same as the parameter count."""
    return svd_params(shape, ranks)
