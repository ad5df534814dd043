"""The shape of a timm VisionTransformer, and of the ED-ViT sub-models cut from it.

A shape is all that sizing and planning need: no weights, no torch. Names follow timm
(`vit_base_patch16_224`, `deit_small_patch16_224`); small custom shapes are written
`vit:img=8,patch=2,chans=1,embed=64,depth=4,heads=4[,mlp=4]` (img may be `HxW`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

# width, depth, heads of timm's ViT/DeiT families (timm/models/vision_transformer.py).
FAMILIES: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}
_TIMM_NAME = re.compile(r"^(vit|deit)_(tiny|small|base|large|huge)_patch(\d+)_(\d+)(\.\w+)?$")
_CUSTOM_KEYS = {"img", "patch", "chans", "embed", "depth", "heads", "mlp"}


class ShapeError(ValueError):
    """An architecture name or shape that is not a ViT we can build."""


@dataclass(frozen=True)
class ViTShape:
    """A plain ViT: patch conv, class token, learned positions, pre-norm blocks, linear head."""

    img_size: tuple[int, int]
    patch_size: int
    in_chans: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    name: str = "custom"

    def __post_init__(self) -> None:
        h, w = self.img_size
        for field, value in [
            ("patch_size", self.patch_size),
            ("in_chans", self.in_chans),
            ("embed_dim", self.embed_dim),
            ("depth", self.depth),
            ("num_heads", self.num_heads),
            ("img_size", min(h, w)),
        ]:
            if value < 1:
                raise ShapeError(f"{field} must be at least 1, got {value}")
        if h % self.patch_size or w % self.patch_size:
            raise ShapeError(f"image {h}x{w} is not a multiple of patch {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ShapeError(
                f"embed_dim {self.embed_dim} is not divisible by {self.num_heads} heads"
            )
        if not (0 < self.mlp_ratio < math.inf) or self.mlp_hidden < 1:
            raise ShapeError(
                f"mlp_ratio must be a positive number giving at least one FFN unit for "
                f"embed_dim {self.embed_dim}, got {self.mlp_ratio}"
            )

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def num_patches(self) -> int:
        return (self.img_size[0] // self.patch_size) * (self.img_size[1] // self.patch_size)

    @property
    def num_tokens(self) -> int:
        return self.num_patches + 1  # + class token

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)  # timm: int(dim * mlp_ratio)

    def with_heads(self, heads: int) -> ViTShape:
        """The ED-ViT sub-model with `heads` heads: head dim kept, same depth and patching."""
        if heads < 1:
            raise ShapeError(f"a sub-model needs at least one head, got {heads}")
        return dataclasses.replace(self, embed_dim=self.head_dim * heads, num_heads=heads)

    def timm_kwargs(self) -> dict[str, object]:
        """Keyword arguments for timm.models.vision_transformer.VisionTransformer."""
        return {
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
        }

    def spec(self) -> str:
        """The custom-spec string that parses back to this shape."""
        h, w = self.img_size
        img = str(h) if h == w else f"{h}x{w}"
        return (
            f"vit:img={img},patch={self.patch_size},chans={self.in_chans},"
            f"embed={self.embed_dim},depth={self.depth},heads={self.num_heads},"
            f"mlp={_float_text(self.mlp_ratio)}"
        )


def _float_text(value: float) -> str:
    """The shortest text that parses back to `value` exactly (`4`, `2.5`, `2.6666666666666665`)."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def _parse_custom(arch: str) -> ViTShape:
    fields: dict[str, str] = {}
    for item in arch.removeprefix("vit:").split(","):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in _CUSTOM_KEYS:
            raise ShapeError(f"{arch!r}: expected key=value with keys {sorted(_CUSTOM_KEYS)}")
        fields[key.strip()] = value.strip()
    required = _CUSTOM_KEYS - {"mlp", "chans"}
    if missing := sorted(required - fields.keys()):
        raise ShapeError(f"{arch!r}: missing {', '.join(missing)}")
    try:
        h, _, w = fields["img"].partition("x")
        return ViTShape(
            img_size=(int(h), int(w or h)),
            patch_size=int(fields["patch"]),
            in_chans=int(fields.get("chans", "3")),
            embed_dim=int(fields["embed"]),
            depth=int(fields["depth"]),
            num_heads=int(fields["heads"]),
            mlp_ratio=float(fields.get("mlp", "4")),
        )
    except ValueError as exc:
        if isinstance(exc, ShapeError):
            raise
        raise ShapeError(f"{arch!r}: {exc}") from None


def parse_arch(arch: str) -> ViTShape:
    """A timm ViT/DeiT name or a `vit:...` custom spec, as a shape."""
    if arch.startswith("vit:"):
        return _parse_custom(arch)
    m = _TIMM_NAME.match(arch)
    if m is None:
        raise ShapeError(
            f"unknown architecture {arch!r}: use a timm name such as vit_base_patch16_224 or "
            "deit_small_patch16_224, or a custom shape vit:img=8,patch=2,embed=64,depth=4,heads=4"
        )
    family, size, patch, img = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
    if family == "deit" and size not in ("tiny", "small", "base"):
        raise ShapeError(f"unknown architecture {arch!r}: DeiT comes in tiny, small and base")
    width, depth, heads = FAMILIES[size]
    return ViTShape(
        img_size=(img, img),
        patch_size=patch,
        in_chans=3,
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        name=m.group(0).split(".")[0],
    )
