"""A folder of images per class, read with OpenCV and returned as RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edvit import media
from edvit.config.dataset import ImageFolderDataset
from modelgen.datasets.base import (
    Dataset,
    DatasetError,
    resolve_root,
    scan_class_folders,
    source_name,
)


def read_image(path: Path) -> np.ndarray:
    """An image file as HWC uint8 RGB (edvit.media, as the nodes read it)."""
    try:
        return media.read_image(path)
    except media.MediaError as exc:
        raise DatasetError(str(exc)) from None


def load_imagefolder(spec: ImageFolderDataset, base_dir: Path | None = None) -> Dataset:
    """Every image of the selected class folders, in sorted path order."""
    root = resolve_root(spec.root, base_dir)
    classes, items = scan_class_folders(
        root,
        media.IMAGE_EXTENSIONS,
        spec.classes,
        spec.max_per_class,
        skip_folder=lambda name: name.startswith("."),
        what="image",
    )
    return Dataset(
        kind="image",
        classes=classes,
        samples=[read_image(path) for _, path in items],
        labels=np.asarray([label for label, _ in items], dtype=np.int64),
        sources=[source_name(path, root) for _, path in items],
    )
