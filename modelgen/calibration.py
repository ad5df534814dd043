"""Event thresholds from validation data, for a target false-accept rate.

A false accept of class c is a tick on which a sample of another class (a background one
included: silence heard as "go") comes out with c on top at a score that reaches c's
threshold. Per class that fires, the threshold is the lowest score at which at most
`target_far` of the other classes' validation samples are accepted as c, and never below
`floor`: a class the validation data never confuses with another gives no evidence for a
lower one. Thresholds have 6 decimals (what results carry) and lie strictly above the
highest false accept they exclude.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import numpy as np

STEP = 1e-6


def calibrate_thresholds(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    background: Collection[str],
    target_far: float,
    floor: float,
) -> dict[str, float]:
    """Class name → threshold for every non-background class, from fused probabilities
    (N, C) of validation samples with true `labels` (N,)."""
    top, score = probs.argmax(axis=1), probs.max(axis=1)
    out: dict[str, float] = {}
    for c, name in enumerate(classes):
        if name in background:
            continue
        others = labels != c
        allowed = math.floor(target_far * int(others.sum()) + 1e-9)
        accepted = np.sort(score[others & (top == c)])[::-1]
        threshold = 0.0
        if len(accepted) > allowed:  # just above the first false accept beyond the allowance
            threshold = math.floor(float(accepted[allowed]) / STEP + 1) * STEP
        out[name] = round(min(1.0, max(floor, threshold)), 6)
    return out
