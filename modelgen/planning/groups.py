"""Balanced class groups: N groups whose sizes differ by at most one (Alg. 1, lines 3–5)."""

from __future__ import annotations


def group_ids(n: int) -> list[str]:
    """Sub-model ids `g0 … g{n-1}`, one per group."""
    return [f"g{i}" for i in range(n)]


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
