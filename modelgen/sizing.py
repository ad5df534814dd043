"""Exact parameter counts and MACs of a ViT shape, computed from the architecture alone.

Conventions (the paper's, §3): `gmacs` counts the linear and convolution layers only;
`gmacs_total` adds the two attention matrix products (QKᵀ and AV), 2·T²·D per block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from modelgen.vit_shape import ViTShape

MIB = 1 << 20
BYTES_PER_PARAM = 4  # fp32 weights


def count_params(shape: ViTShape, num_classes: int) -> int:
    """Parameters of timm's VisionTransformer with this shape and a `num_classes` head."""
    d, hid = shape.embed_dim, shape.mlp_hidden
    patch = shape.in_chans * shape.patch_size**2 * d + d  # conv weight + bias
    tokens = d + shape.num_tokens * d  # class token + position embedding
    block = (
        2 * d  # norm1
        + 3 * d * d + 3 * d  # qkv
        + d * d + d  # proj
        + 2 * d  # norm2
        + d * hid + hid  # fc1
        + hid * d + d  # fc2
    )  # fmt: skip
    head = d * num_classes + num_classes if num_classes > 0 else 0
    return patch + tokens + shape.depth * block + 2 * d + head


def count_macs(shape: ViTShape, num_classes: int) -> tuple[int, int]:
    """(linear + convolution MACs, attention-matrix MACs) for one sample."""
    d, hid, t = shape.embed_dim, shape.mlp_hidden, shape.num_tokens
    patch = shape.num_patches * shape.in_chans * shape.patch_size**2 * d
    block = t * (3 * d * d + d * d + 2 * d * hid)  # qkv, proj, fc1, fc2
    head = d * num_classes  # on the class token only
    attention = shape.depth * 2 * t * t * d  # QKᵀ and AV over all heads
    return patch + shape.depth * block + head, attention


class Sizes(TypedDict):
    """The three figures a plan and a manifest record of every model."""

    params: int
    size_mib: float
    gmacs: float


@dataclass(frozen=True)
class ModelStats:
    """Size and compute of one shape; `to_json` is the JSON contract of `modelgen stats`."""

    arch: str
    heads: int
    embed_dim: int
    depth: int
    params: int
    macs: int  # linear and convolution layers, one sample
    attention_macs: int  # QKᵀ and AV, one sample

    @property
    def size_bytes(self) -> int:
        return self.params * BYTES_PER_PARAM

    @property
    def size_mib(self) -> float:
        return self.size_bytes / MIB

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def gmacs_total(self) -> float:
        return (self.macs + self.attention_macs) / 1e9

    def sizes(self) -> Sizes:
        return {"params": self.params, "size_mib": self.size_mib, "gmacs": self.gmacs}

    def to_json(self) -> dict[str, object]:
        keys = ("arch", "heads", "embed_dim", "depth", "params", "size_mib", "gmacs", "gmacs_total")
        return {k: getattr(self, k) for k in keys}


def vit_stats(shape: ViTShape, num_classes: int) -> ModelStats:
    """Params, fp32 size and MACs of `shape` with a `num_classes`-way head."""
    linear, attention = count_macs(shape, num_classes)
    return ModelStats(
        arch=shape.name,
        heads=shape.num_heads,
        embed_dim=shape.embed_dim,
        depth=shape.depth,
        params=count_params(shape, num_classes),
        macs=linear,
        attention_macs=attention,
    )
