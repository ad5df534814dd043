"""Deterministic stratified train/val/test splits, recorded by sample name.

Indices are not a durable record (re-reading a folder that gained a file shifts them), so
a split is recorded as the `sources` of each part. `apply_split` maps the names back to
indices of a freshly loaded dataset, which lets `modelgen eval` repeat the exact test set
of a bundle; a recorded sample that has disappeared is an error naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edvit.config.dataset import SplitRecord, SplitSpec
from modelgen.datasets.base import Dataset, DatasetError, IndexArray

PARTS = ("train", "val", "test")


@dataclass(frozen=True, eq=False)
class Split:
    """Sorted index arrays of the three parts; together a partition of (part of) a dataset."""

    train: IndexArray
    val: IndexArray
    test: IndexArray

    def part(self, name: str) -> IndexArray:
        """The indices of `train`, `val` or `test`."""
        if name not in PARTS:
            raise KeyError(f"no split part {name!r}; parts are {', '.join(PARTS)}")
        indices: IndexArray = getattr(self, name)
        return indices

    def sizes(self) -> dict[str, int]:
        return {p: len(self.part(p)) for p in PARTS}


def round_half_up(x: float) -> int:
    """Rounding that does not depend on parity (Python's round(2.5) is 2)."""
    return math.floor(x + 0.5)


def _allocate(n: int, fraction: float, available: int) -> int:
    """How many of a class's n samples a held-out part takes, out of `available` left.

    The rounded share, but at least one when the fraction is non-zero and the class has
    three or more samples (so every class can be evaluated), and always leaving one
    sample of the class for training.
    """
    if fraction <= 0 or n <= 0:
        return 0
    k = round_half_up(n * fraction)
    if n >= 3:
        k = max(k, 1)
    return max(0, min(k, available - 1))


def stratified_split(
    labels: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    fixed_test: IndexArray | None = None,
    fixed_val: IndexArray | None = None,
) -> Split:
    """Shuffle each class with one seeded generator and cut it into test, val, train.

    Every class contributes its share to each part, so small classes still appear in the
    test set. With `fixed_test` (an official test set) those indices are the test part and
    val_fraction is taken from the remaining samples of each class; with `fixed_val` too,
    the rest is the training part.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= f < 1:
            raise ValueError(f"{name} must be in [0, 1), got {f}")
    if fixed_test is None and val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction + test_fraction must be below 1")
    rng = np.random.default_rng(seed)
    in_test = np.zeros(len(labels), dtype=bool)
    if fixed_test is not None:
        in_test[np.asarray(fixed_test, dtype=np.int64)] = True
    in_val = np.zeros(len(labels), dtype=bool)
    if fixed_val is not None:
        in_val[np.asarray(fixed_val, dtype=np.int64)] = True
    if (in_val & in_test).any():
        raise ValueError("the fixed validation and test parts overlap")
    train: list[IndexArray] = []
    val: list[IndexArray] = [np.flatnonzero(in_val).astype(np.int64)]
    test: list[IndexArray] = [np.flatnonzero(in_test).astype(np.int64)]
    for label in np.unique(labels):
        members = np.flatnonzero((labels == label) & ~in_test & ~in_val).astype(np.int64)
        order = rng.permutation(members)
        n = len(order)
        n_test = 0 if fixed_test is not None else _allocate(n, test_fraction, n)
        n_val = 0 if fixed_val is not None else _allocate(n, val_fraction, n - n_test)
        test.append(order[:n_test])
        val.append(order[n_test : n_test + n_val])
        train.append(order[n_test + n_val :])

    def cat(parts: list[IndexArray]) -> IndexArray:
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    return Split(train=cat(train), val=cat(val), test=cat(test))


def apply_split(record: SplitRecord, dataset: Dataset) -> Split:
    """The recorded split as indices into `dataset` (samples it does not name are left out);
    a recorded sample that `dataset` lacks is an error naming it."""
    index = {source: i for i, source in enumerate(dataset.sources)}
    parts: dict[str, IndexArray] = {}
    for part in PARTS:
        names: list[str] = getattr(record, part)
        missing = [s for s in names if s not in index]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise DatasetError(
                f"the recorded {part} split names sample {missing[0]!r}{more}, which is "
                "not in the dataset (was it moved, deleted, or filtered out by "
                "classes/max_per_class?)"
            )
        parts[part] = np.asarray([index[s] for s in names], dtype=np.int64)
    return Split(**parts)


def record_split(dataset: Dataset, split: Split, spec: SplitSpec) -> SplitRecord:
    """Name the samples of each part of `split`."""
    return SplitRecord(
        seed=spec.seed,
        val_fraction=spec.val_fraction,
        test_fraction=spec.test_fraction,
        official_test=dataset.official_test is not None,
        official_val=dataset.official_val is not None,
        **{p: [dataset.sources[i] for i in split.part(p)] for p in PARTS},
    )


def split_dataset(dataset: Dataset, spec: SplitSpec) -> tuple[Split, SplitRecord]:
    """Split `dataset` as `spec` says (its official parts first if it has them), record it."""
    split = stratified_split(
        dataset.labels,
        spec.val_fraction,
        spec.test_fraction,
        spec.seed,
        dataset.official_test,
        dataset.official_val,
    )
    return split, record_split(dataset, split, spec)
