"""The in-memory dataset every loader returns, and the helpers the folder loaders share."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

IndexArray = npt.NDArray[np.int64]


class DatasetError(ValueError):
    """A dataset that cannot be loaded as described; the message names the file or key."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Raw samples with labels, before preprocessing.

    `samples` are HWC uint8 RGB images (C = 1 for grayscale) or 1-D float32 waveforms at
    `sample_rate`. `sources` names each sample stably (relative file path, `digits/<i>`,
    `cifar10/<train|test>/<i>`) so that a split can be recorded by name and re-applied
    exactly, even if the dataset is re-read in another order or has grown.
    `official_test` holds the indices of a test set the dataset's publisher defines
    (CIFAR-10's test_batch), else None; `official_val` likewise for validation. Speech
    Commands fixes both while loading (its lists, or the seeded split when they are
    absent), since its silence clips are cut per part from disjoint stretches of noise.
    """

    kind: Literal["image", "audio"]
    classes: list[str]
    samples: list[np.ndarray]
    labels: IndexArray
    sources: list[str]
    sample_rate: int | None = None
    official_test: IndexArray | None = field(default=None)
    official_val: IndexArray | None = field(default=None)

    def __post_init__(self) -> None:
        n = len(self.samples)
        if len(self.labels) != n or len(self.sources) != n:
            raise DatasetError(
                f"{n} samples but {len(self.labels)} labels and {len(self.sources)} sources"
            )
        if self.labels.dtype != np.int64 or self.labels.ndim != 1:
            raise DatasetError(f"labels must be a 1-D int64 array, got {self.labels.dtype}")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise DatasetError(f"labels must lie in 0..{len(self.classes) - 1}")
        if len(set(self.sources)) != n:
            raise DatasetError("sample sources must be unique")
        if self.kind == "audio" and self.sample_rate is None:
            raise DatasetError("an audio dataset needs its sample_rate")

    def __len__(self) -> int:
        return len(self.samples)

    def counts(self) -> dict[str, int]:
        """Samples per class, in class order."""
        bins = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(k) for c, k in zip(self.classes, bins, strict=True)}

    def subset(self, indices: Sequence[int] | IndexArray) -> Dataset:
        """The samples at `indices`, in that order (classes unchanged)."""
        idx = np.asarray(indices, dtype=np.int64)
        return Dataset(
            kind=self.kind,
            classes=list(self.classes),
            samples=[self.samples[i] for i in idx],
            labels=self.labels[idx],
            sources=[self.sources[i] for i in idx],
            sample_rate=self.sample_rate,
        )


def check_preprocess(dataset: Dataset, kind: str, sample_rate: int | None = None) -> None:
    """Refuse a front-end that does not fit the data: an image spec on audio, or an audio
    spec at another sample rate (the log-mel would be computed on mislabelled frequencies
    without any error). Call with `spec.kind` and, for audio, `spec.sample_rate`."""
    if dataset.kind != kind:
        raise DatasetError(f"the dataset holds {dataset.kind} but the preprocessing is {kind}")
    if kind == "audio" and sample_rate != dataset.sample_rate:
        raise DatasetError(
            f"the dataset is loaded at {dataset.sample_rate} Hz but the preprocessing expects "
            f"{sample_rate} Hz: set dataset.sample_rate and preprocess.sample_rate alike"
        )


def select_classes(available: Sequence[str], wanted: Sequence[str] | None, where: str) -> list[str]:
    """The classes to load, in label order; an unknown name is an error listing the known."""
    if wanted is None:
        return list(available)
    missing = [c for c in wanted if c not in available]
    if missing:
        raise DatasetError(
            f"{where}: no class {', '.join(repr(m) for m in missing)}; "
            f"it has {', '.join(available)}"
        )
    return list(wanted)


def take_per_class(labels: Iterable[int], max_per_class: int | None) -> list[int]:
    """Indices of the first `max_per_class` samples of each label (all if None), in order."""
    seen: dict[int, int] = {}
    keep: list[int] = []
    for i, label in enumerate(labels):
        if max_per_class is not None and seen.get(label, 0) >= max_per_class:
            continue
        seen[label] = seen.get(label, 0) + 1
        keep.append(i)
    return keep


def resolve_root(root: Path, base_dir: Path | None) -> Path:
    """`root` with ~ expanded, relative to `base_dir` (the recipe's folder) when given."""
    root = root.expanduser()
    if not root.is_absolute() and base_dir is not None:
        root = base_dir / root
    return root


def _visible(path: Path, top: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(top).parts)


def scan_class_folders(
    root: Path,
    extensions: frozenset[str],
    wanted: Sequence[str] | None,
    max_per_class: int | None,
    skip_folder: Callable[[str], bool],
    what: str,
) -> tuple[list[str], list[tuple[int, Path]]]:
    """Classes and (label, file) pairs of a folder-per-class dataset, in a stable order.

    Class folders are the sorted sub-folders of `root` (minus those `skip_folder` rejects);
    files are found recursively, sorted by relative path, hidden entries and other
    extensions ignored. A selected class without a single file is an error: it would
    silently become a class the model can never predict.
    """
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a folder")
    available = sorted(p.name for p in root.iterdir() if p.is_dir() and not skip_folder(p.name))
    if not available:
        raise DatasetError(f"{root}: no class folders (expected one sub-folder per class)")
    classes = select_classes(available, wanted, str(root))
    items: list[tuple[int, Path]] = []
    for label, name in enumerate(classes):
        folder = root / name
        files = sorted(
            p
            for p in folder.rglob("*")
            if p.suffix.lower() in extensions and p.is_file() and _visible(p, folder)
        )
        if not files:
            raise DatasetError(
                f"class folder {folder} has no {what} files ({', '.join(sorted(extensions))})"
            )
        if max_per_class is not None:
            files = files[:max_per_class]
        items.extend((label, f) for f in files)
    return classes, items


@dataclass(frozen=True)
class FolderFormat:
    """How one kind of folder-per-class dataset is read."""

    kind: Literal["image", "audio"]
    extensions: frozenset[str]
    read: Callable[[Path], np.ndarray]
    skip_folder: Callable[[str], bool]
    what: str  # the files' name in messages
    sample_rate: int | None = None


def load_class_folders(
    root: Path, fmt: FolderFormat, wanted: Sequence[str] | None, max_per_class: int | None
) -> Dataset:
    """Every file of `fmt` in the selected class folders of `root`, in sorted path order."""
    classes, items = scan_class_folders(
        root, fmt.extensions, wanted, max_per_class, skip_folder=fmt.skip_folder, what=fmt.what
    )
    return Dataset(
        kind=fmt.kind,
        classes=classes,
        samples=[fmt.read(path) for _, path in items],
        labels=np.asarray([label for label, _ in items], dtype=np.int64),
        sources=[source_name(path, root) for _, path in items],
        sample_rate=fmt.sample_rate,
    )


def source_name(path: Path, root: Path) -> str:
    """A sample's stable id: its path relative to the dataset root, with forward slashes."""
    return path.relative_to(root).as_posix()
