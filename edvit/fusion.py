"""The fusion MLP of §4.5 in numpy, as the aggregator runs it: N·d → λ·N·d → C, λ = 0.5.

Input: the sub-models' CLS (pre-logit) features concatenated in the manifest's `order`.
Layers: `fc1` (Linear in_dim → hidden), GELU (tanh approximation), `fc2` (Linear hidden → C).
`modelgen.fusion_model.TorchFusionMLP` is the torch twin for training, with the same tensor
names and layout.

Why GELU with the tanh approximation: it is the activation of the ViT blocks themselves, and
unlike the exact (erf) form it is an elementary formula that numpy evaluates the same way
torch does (`nn.GELU(approximate="tanh")`), so the two agree to float32 rounding.

Missing sub-models, and how training and inference agree. A sub-model that did not report
(its node is down or late) contributes a block of zeros. Training applies per-sub-model
feature dropout: for each sample, each sub-model's whole block is zeroed with probability p
(at least one block is always kept), and the kept blocks are NOT rescaled by 1/(1-p). So the
MLP is trained on exactly two kinds of block, "the real feature" and "all zeros", which are
exactly what it gets at inference: real features where nodes reported, zeros where they did
not, and no rescaling anywhere (dropout is off at inference). Inverted-dropout scaling would
instead train on features scaled by 1/(1-p) and infer on unscaled ones; avoiding it removes
that train/inference shift, at the cost of nothing (it only matters for expectations of
linear maps, and the MLP is not linear).

Each sample is computed on its own (a matrix-vector product per row), so a sample's logits do
not depend on the batch it came in: the aggregator (one tick at a time) and `modelgen eval`
(batches) produce bit-identical results on the same features. float32 throughout.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from edvit.bundle import Bundle, FusionEntry

HIDDEN_RATIO = 0.5  # λ of the paper
ACTIVATION = "gelu_tanh"
METADATA_KEY = "edvit.fusion"
TENSOR_NAMES = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")

F32 = NDArray[np.float32]
_GELU_C = np.float32(math.sqrt(2.0 / math.pi))
_GELU_K = np.float32(0.044715)


class FusionError(ValueError):
    """Fusion weights that do not fit the manifest, or features that do not fit the MLP."""


def hidden_size(in_dim: int, ratio: float = HIDDEN_RATIO) -> int:
    """Hidden width λ·in_dim, rounded half to even, at least 1."""
    return max(1, round(ratio * in_dim))


def gelu_tanh(x: F32) -> F32:
    """GELU, tanh approximation: what torch's `nn.GELU(approximate="tanh")` computes."""
    half = np.float32(0.5)
    one = np.float32(1.0)
    inner = _GELU_C * (x + _GELU_K * x * x * x)
    out: F32 = (half * x * (one + np.tanh(inner))).astype(np.float32, copy=False)
    return out


def softmax(logits: F32) -> F32:
    """Row-wise softmax, max-subtracted so large logits do not overflow."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: F32 = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32, copy=False)
    return out


def fusion_metadata(
    order: Sequence[str], feature_dims: Sequence[int], hidden: int, out_dim: int
) -> dict[str, str]:
    """The safetensors metadata that makes a fusion file self-describing."""
    meta = {
        "order": list(order),
        "feature_dims": [int(d) for d in feature_dims],
        "hidden": int(hidden),
        "out_dim": int(out_dim),
        "activation": ACTIVATION,
    }
    return {METADATA_KEY: json.dumps(meta, sort_keys=True)}


def _as_f32(name: str, value: Any) -> F32:
    arr = np.asarray(value)
    if arr.dtype != np.float32:
        raise FusionError(f"{name}: dtype {arr.dtype}, expected float32")
    out: F32 = np.ascontiguousarray(arr)
    return out


@dataclass(frozen=True, eq=False)
class NumpyFusionMLP:
    """fc1 → GELU(tanh) → fc2 on concatenated features; weights in torch's (out, in) layout."""

    order: tuple[str, ...]
    feature_dims: tuple[int, ...]
    w1: F32  # (hidden, in_dim)
    b1: F32  # (hidden,)
    w2: F32  # (out_dim, hidden)
    b2: F32  # (out_dim,)

    def __post_init__(self) -> None:
        if len(self.order) != len(self.feature_dims) or not self.order:
            raise FusionError(
                f"order {list(self.order)} and feature_dims {list(self.feature_dims)} "
                "must be non-empty and of equal length"
            )
        if len(set(self.order)) != len(self.order):
            raise FusionError(f"order has duplicates: {list(self.order)}")
        in_dim = sum(self.feature_dims)
        hidden, out = self.b1.shape[0], self.b2.shape[0]
        want = {
            "fc1.weight": (self.w1, (hidden, in_dim)),
            "fc1.bias": (self.b1, (hidden,)),
            "fc2.weight": (self.w2, (out, hidden)),
            "fc2.bias": (self.b2, (out,)),
        }
        for name, (arr, shape) in want.items():
            if arr.dtype != np.float32:
                raise FusionError(f"{name}: dtype {arr.dtype}, expected float32")
            if arr.shape != shape:
                raise FusionError(f"{name}: shape {arr.shape}, expected {shape}")
            if not np.isfinite(arr).all():
                raise FusionError(f"{name}: contains NaN or infinity")

    @property
    def in_dim(self) -> int:
        return sum(self.feature_dims)

    @property
    def hidden(self) -> int:
        return int(self.b1.shape[0])

    @property
    def out_dim(self) -> int:
        return int(self.b2.shape[0])

    @classmethod
    def load(cls, path: str | Path, entry: FusionEntry | None = None) -> NumpyFusionMLP:
        """Read a fusion safetensors file; with `entry`, its dims must match the manifest's.

        Verify the file's sha256 first (`edvit.bundle.load_bundle` does): safetensors holds
        no code, but a swapped file would silently give wrong answers.
        """
        from safetensors import SafetensorError, safe_open
        from safetensors.numpy import load_file

        path = Path(path)
        try:
            with safe_open(str(path), framework="np") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
        except (OSError, SafetensorError) as exc:
            raise FusionError(f"{path}: cannot read as safetensors: {exc}") from None
        if METADATA_KEY not in meta:
            raise FusionError(f"{path}: no {METADATA_KEY} metadata; not a fusion file")
        try:
            info = json.loads(meta[METADATA_KEY])
            order = tuple(str(s) for s in info["order"])
            dims = tuple(int(d) for d in info["feature_dims"])
            hidden, out_dim = int(info["hidden"]), int(info["out_dim"])
            activation = str(info["activation"])
        except (ValueError, KeyError, TypeError) as exc:
            raise FusionError(f"{path}: bad {METADATA_KEY} metadata: {exc}") from None
        if activation != ACTIVATION:
            raise FusionError(f"{path}: activation {activation!r}, this code runs {ACTIVATION!r}")
        if sorted(tensors) != sorted(TENSOR_NAMES):
            raise FusionError(f"{path}: tensors {sorted(tensors)}, expected {sorted(TENSOR_NAMES)}")
        if entry is not None:
            file_dims = {
                "order": list(order),
                "feature_dims": list(dims),
                "in_dim": sum(dims),
                "hidden": hidden,
                "out_dim": out_dim,
            }
            want_dims = {
                "order": entry.order,
                "feature_dims": entry.feature_dims,
                "in_dim": entry.in_dim,
                "hidden": entry.hidden,
                "out_dim": entry.out_dim,
            }
            for key, want in want_dims.items():
                if file_dims[key] != want:
                    raise FusionError(
                        f"{path}: {key} is {file_dims[key]} in the file but {want} in the "
                        f"manifest (fusion.{key})"
                    )
        try:
            mlp = cls(
                order=order,
                feature_dims=dims,
                w1=_as_f32("fc1.weight", tensors["fc1.weight"]),
                b1=_as_f32("fc1.bias", tensors["fc1.bias"]),
                w2=_as_f32("fc2.weight", tensors["fc2.weight"]),
                b2=_as_f32("fc2.bias", tensors["fc2.bias"]),
            )
        except FusionError as exc:
            raise FusionError(f"{path}: {exc}") from None
        if (mlp.hidden, mlp.out_dim) != (hidden, out_dim):
            raise FusionError(
                f"{path}: tensors give hidden {mlp.hidden}, out_dim {mlp.out_dim}; the "
                f"metadata says {hidden}, {out_dim}"
            )
        return mlp

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> NumpyFusionMLP:
        """The fusion MLP of a loaded (verified) bundle, checked against its manifest."""
        return cls.load(bundle.fusion_path, bundle.manifest.fusion)

    def concat(self, features: Mapping[str, NDArray[Any] | None]) -> F32:
        """(B, in_dim) float32: each sub-model's block in `order`, zeros where it is missing.

        A value may be (B, d) or (d,) (one sample); None or an absent key means missing.
        """
        unknown = sorted(set(features) - set(self.order))
        if unknown:
            raise FusionError(f"features for unknown sub-models {unknown}; expected {self.order}")
        present: dict[str, F32] = {}
        batch: int | None = None
        for sub_id, dim in zip(self.order, self.feature_dims, strict=True):
            value = features.get(sub_id)
            if value is None:
                continue
            arr = np.asarray(value)
            if arr.ndim == 1:
                arr = arr[None, :]
            if arr.ndim != 2 or arr.shape[1] != dim:
                raise FusionError(f"{sub_id}: features of shape {arr.shape}, expected (B, {dim})")
            if batch is not None and arr.shape[0] != batch:
                raise FusionError(
                    f"{sub_id}: batch {arr.shape[0]} differs from the other sub-models' {batch}"
                )
            batch = arr.shape[0]
            present[sub_id] = arr.astype(np.float32, copy=False)
        if batch is None:
            raise FusionError("no sub-model features given: nothing to fuse")
        x = np.zeros((batch, self.in_dim), dtype=np.float32)
        start = 0
        for sub_id, dim in zip(self.order, self.feature_dims, strict=True):
            if sub_id in present:
                x[:, start : start + dim] = present[sub_id]
            start += dim
        return x

    def forward_concat(self, x: F32) -> F32:
        """Logits (B, C) of already-concatenated features (B, in_dim), one row at a time."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise FusionError(f"input of shape {x.shape}, expected (B, {self.in_dim})")
        out = np.empty((x.shape[0], self.out_dim), dtype=np.float32)
        for i in range(x.shape[0]):
            h = gelu_tanh(self.w1 @ x[i] + self.b1)
            out[i] = self.w2 @ h + self.b2
        return out

    def forward(self, features: Mapping[str, NDArray[Any] | None]) -> F32:
        """Logits (B, C); a sub-model missing from `features` counts as a block of zeros."""
        return self.forward_concat(self.concat(features))

    def probabilities(self, features: Mapping[str, NDArray[Any] | None]) -> F32:
        """Class probabilities (B, C): softmax of `forward`."""
        return softmax(self.forward(features))
