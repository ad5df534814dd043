"""A folder of images per class, read with OpenCV and returned as RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edvit.config.dataset import ImageFolderDataset
from modelgen.datasets.base import (
    Dataset,
    DatasetError,
    resolve_root,
    scan_class_folders,
    source_name,
)

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


def read_image(path: Path) -> np.ndarray:
    """An image file as HWC uint8 RGB (C = 1 for grayscale files; alpha dropped).

    Read via np.fromfile + cv2.imdecode rather than cv2.imread, which fails silently on
    non-ASCII paths on some platforms; 16-bit files are reduced to 8 bits.
    """
    import cv2

    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror}") from None
    image = cv2.imdecode(raw, cv2.IMREAD_ANYCOLOR) if raw.size else None
    if image is None:
        raise DatasetError(f"{path}: not a readable image (OpenCV cannot decode it)")
    if image.ndim == 2:
        return np.ascontiguousarray(image[:, :, None])
    rgb: np.ndarray = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return rgb


def load_imagefolder(spec: ImageFolderDataset, base_dir: Path | None = None) -> Dataset:
    """Every image of the selected class folders, in sorted path order."""
    root = resolve_root(spec.root, base_dir)
    classes, items = scan_class_folders(
        root,
        IMAGE_EXTENSIONS,
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
