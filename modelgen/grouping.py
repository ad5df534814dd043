"""Class groups for the sub-models: the paper's contiguous runs, or confusable classes together.

A sub-model separates its own classes from each other and from "others"; classes the base
model confuses are best separated by one specialist that sees both, so `confusion_groups`
maximises the confusion kept inside groups, under the same balanced sizes (differ by ≤ 1).
"""

from __future__ import annotations

import itertools

import numpy as np

from modelgen.planning import contiguous_groups


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts: row = true class, column = predicted class."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (labels, pred), 1)
    return m


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
