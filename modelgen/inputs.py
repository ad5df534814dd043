"""Model inputs of one split: a preprocessed array in memory, or made batch by batch.

Small datasets are preprocessed once into a (N, C, H, W) float32 array. A split too big to
hold (CIFAR-10 at 224 px is 36 GB of float32) is a `LazyInputs` instead: indexing it
preprocesses just the samples asked for, so memory stays at one batch and each pass over
the data pays for the preprocessing again. Training and prediction index both alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from edvit.preprocess import AudioPreprocess, FloatArray, ImagePreprocess, preprocess_batch

BYTES_PER_VALUE = 4  # float32


class Inputs(Protocol):
    """What the training loop and `predict` need: a length and batches by index."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: Any, /) -> Any: ...


class LazyInputs:
    """Raw samples that are preprocessed when indexed (a slice or an index array)."""

    def __init__(
        self, spec: ImagePreprocess | AudioPreprocess, samples: Sequence[np.ndarray]
    ) -> None:
        self.spec = spec
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: slice | np.ndarray) -> FloatArray:
        picks = range(len(self))[index] if isinstance(index, slice) else np.asarray(index)
        return preprocess_batch(self.spec, [self.samples[int(i)] for i in picks])


def inputs_nbytes(spec: ImagePreprocess | AudioPreprocess, count: int) -> int:
    """Bytes that `count` preprocessed samples take as one float32 array."""
    h, w = spec.input_size
    return count * spec.in_chans * h * w * BYTES_PER_VALUE
