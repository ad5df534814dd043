"""scikit-learn's handwritten digits: 1,797 real 8×8 grayscale images that ship offline."""

from __future__ import annotations

import numpy as np

from edvit.config.dataset import DigitsDataset
from modelgen.datasets.base import Dataset, select_classes, take_per_class

DIGIT_CLASSES = [str(d) for d in range(10)]


def load_digits(spec: DigitsDataset) -> Dataset:
    """The digits as (8, 8, 1) uint8 images, 0..16 ink levels scaled to 0..255."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.asarray(bunch.images, dtype=np.float64)  # (1797, 8, 8), values 0..16
    pixels = np.clip(np.rint(images * (255 / 16)), 0, 255).astype(np.uint8)
    targets = np.asarray(bunch.target, dtype=np.int64)
    classes = select_classes(DIGIT_CLASSES, spec.classes, "digits")
    label_of = {int(c): i for i, c in enumerate(classes)}
    chosen = [i for i, t in enumerate(targets) if int(t) in label_of]
    labels = [label_of[int(targets[i])] for i in chosen]
    keep = take_per_class(labels, spec.max_per_class)
    idx = [chosen[k] for k in keep]
    return Dataset(
        kind="image",
        classes=classes,
        samples=[pixels[i][:, :, None] for i in idx],
        labels=np.asarray([labels[k] for k in keep], dtype=np.int64),
        sources=[f"digits/{i}" for i in idx],
    )
