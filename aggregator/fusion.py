"""Fusion on the aggregator: the bundle's MLP in numpy, fed exactly as `modelgen eval` feeds it.

Nodes send fp16 vectors; they are widened to float32 (exact) and passed one sample at a time
through `edvit.fusion.NumpyFusionMLP`, the same code and the same rounding `modelgen eval`
uses on its fp16-rounded ONNX Runtime features, so a tick's label equals eval's prediction
for the same sample. A missing sub-model is a block of zeros, as in training's feature dropout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edvit.bundle import Bundle
from edvit.fusion import NumpyFusionMLP, softmax


@dataclass(frozen=True)
class Fused:
    """One fused prediction."""

    index: int
    label: str
    score: float
    scores: dict[str, float]


class Fuser:
    """The fusion MLP of a bundle and its class names."""

    def __init__(self, mlp: NumpyFusionMLP, classes: Sequence[str]) -> None:
        if len(classes) != mlp.out_dim:
            raise ValueError(f"{len(classes)} class names for {mlp.out_dim} fusion outputs")
        self.mlp = mlp
        self.classes = tuple(classes)

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> Fuser:
        """Load the (already sha256-verified) bundle's fusion weights, checked against it."""
        return cls(NumpyFusionMLP.from_bundle(bundle), bundle.manifest.classes)

    def fuse(self, features: Mapping[str, NDArray[Any]]) -> Fused:
        """Fuse one tick: {sub-model id: (d,) fp16 vector}; absent sub-models are zeros."""
        widened = {sub: np.asarray(v).astype(np.float32) for sub, v in features.items()}
        logits = self.mlp.forward(widened)[0]
        index = int(logits.argmax())  # what eval takes: argmax of the logits
        probs = softmax(logits[None, :])[0]
        return Fused(
            index=index,
            label=self.classes[index],
            score=float(probs[index]),
            scores={name: float(p) for name, p in zip(self.classes, probs, strict=True)},
        )
