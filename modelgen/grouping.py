"""Class groups for the sub-models: the paper's contiguous runs, or confusable classes together.

Both are balanced: N groups whose sizes differ by at most one (Alg. 1, lines 3–5). A
sub-model separates its own classes from each other and from "others"; classes the base
model confuses are best separated by one specialist that sees both, so `confusion_groups`
maximises the confusion kept inside groups, under the same sizes.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from edvit.config.recipe import Grouping


def contiguous_groups(num_classes: int, n: int) -> list[list[int]]:
    """Classes 0…C-1 cut into n contiguous runs, the first C mod n one class longer (the paper)."""
    if n < 1:
        raise ValueError(f"the number of groups must be at least 1, got {n}")
    if n > num_classes:
        raise ValueError(f"cannot cut {num_classes} classes into {n} non-empty groups")
    base, extra = divmod(num_classes, n)
    groups: list[list[int]] = []
    start = 0
    for i in range(n):
        size = base + (1 if i < extra else 0)
        groups.append(list(range(start, start + size)))
        start += size
    return groups


def affinity(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Symmetric class affinity: the probability mass each class's samples give the other.

    Soft probabilities rather than argmax counts, so that a well-trained base model with few
    outright errors still tells which classes it finds alike.
    """
    a = np.zeros((num_classes, num_classes))
    for c in range(num_classes):
        rows = probs[labels == c]
        if len(rows):
            a[c] = rows.mean(axis=0)
    a = a + a.T
    np.fill_diagonal(a, 0.0)
    return a


def within_affinity(groups: list[list[int]], a: np.ndarray) -> float:
    """The affinity kept inside groups: what `confusion_groups` maximises."""
    return float(sum(a[np.ix_(g, g)].sum() for g in groups) / 2)


def confusion_groups(a: np.ndarray, n: int) -> list[list[int]]:
    """Balanced groups maximising within-group affinity, by pairwise-swap local search.

    Deterministic: starts from the contiguous groups and takes the best swap each round
    until none improves (ties: first in class order), so the same affinity gives the same
    groups. Groups and their classes come out sorted.
    """
    c = a.shape[0]
    groups = contiguous_groups(c, n)
    while True:
        move: tuple[float, int, int, int, int] | None = None
        for gi, gj in itertools.combinations(range(n), 2):
            for ci, cj in itertools.product(range(len(groups[gi])), range(len(groups[gj]))):
                x, y = groups[gi][ci], groups[gj][cj]
                gain = (
                    a[y, groups[gi]].sum() - a[y, x] - a[x, groups[gi]].sum()
                    + a[x, groups[gj]].sum() - a[x, y] - a[y, groups[gj]].sum()
                )  # fmt: skip
                if gain > 1e-12 and (move is None or gain > move[0]):
                    move = (gain, gi, ci, gj, cj)
        if move is None:
            break
        _, gi, ci, gj, cj = move
        groups[gi][ci], groups[gj][cj] = groups[gj][cj], groups[gi][ci]
    return sorted(sorted(g) for g in groups)


def class_groups(
    probs: np.ndarray, labels: np.ndarray, num_classes: int, n: int, method: Grouping
) -> tuple[list[list[int]], dict[str, Any]]:
    """The groups of `method` from held-out class probabilities, and the affinity each method
    keeps inside its groups (the bundle's `grouping` metrics)."""
    a = affinity(probs, labels, num_classes)
    by_method = {
        Grouping.contiguous: contiguous_groups(num_classes, n),
        Grouping.confusion: confusion_groups(a, n),
    }
    info = {
        "method": method.value,
        "within_affinity": {m.value: within_affinity(g, a) for m, g in by_method.items()},
    }
    return by_method[method], info
