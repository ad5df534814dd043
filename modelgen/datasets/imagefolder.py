"""A folder of images per class, read with OpenCV and returned as RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edvit import media
from edvit.config.dataset import ImageFolderDataset
from modelgen.datasets.base import (
    Dataset,
    DatasetError,
    FolderFormat,
    load_class_folders,
    resolve_root,
)


def read_image(path: Path) -> np.ndarray:
    """An image file as HWC uint8 RGB (edvit.media, as the nodes read it)."""
    try:
        return media.read_image(path)
    except media.MediaError as exc:
        raise DatasetError(str(exc)) from None


IMAGES = FolderFormat(
    kind="image",
    extensions=media.IMAGE_EXTENSIONS,
    read=read_image,
    skip_folder=lambda name: name.startswith("."),
    what="image",
)


def load_imagefolder(spec: ImageFolderDataset, base_dir: Path | None = None) -> Dataset:
    """Every image of the selected class folders, in sorted path order."""
    root = resolve_root(spec.root, base_dir)
    return load_class_folders(root, IMAGES, spec.classes, spec.max_per_class)
