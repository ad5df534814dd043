"""The ViT every stage trains, prunes and exports: a plain timm VisionTransformer.

Its `ModelConfig` (shape + number of outputs) travels with the weights in the safetensors
metadata, so a checkpoint says how to rebuild the module that reads it (no pickle).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer

from modelgen.vit_shape import ViTShape

CONFIG_KEY = "edvit.model_config"


@dataclass(frozen=True)
class ModelConfig:
    """What it takes to rebuild a model: its shape and its number of outputs."""

    shape: ViTShape
    num_outputs: int

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        raw = json.loads(text)
        shape = dict(raw["shape"])
        shape["img_size"] = tuple(shape["img_size"])
        return cls(shape=ViTShape(**shape), num_outputs=int(raw["num_outputs"]))


def build_vit(config: ModelConfig) -> VisionTransformer:
    """A timm ViT with the class-token head: `forward_head(pre_logits=True)` is the feature."""
    return VisionTransformer(
        num_classes=config.num_outputs,
        global_pool="token",
        **config.shape.timm_kwargs(),  # type: ignore[arg-type]
    )


def save_model(model: VisionTransformer, config: ModelConfig, path: Path) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={CONFIG_KEY: config.to_json()})


def load_model(path: Path) -> tuple[VisionTransformer, ModelConfig]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if CONFIG_KEY not in meta:
        raise ValueError(f"{path}: no {CONFIG_KEY} in the safetensors metadata")
    config = ModelConfig.from_json(meta[CONFIG_KEY])
    model = build_vit(config)
    model.load_state_dict(load_file(str(path)))
    model.eval()
    return model, config


def features_and_logits(
    model: VisionTransformer, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(CLS pre-logit feature (B, D), logits (B, K)) in one pass."""
    tokens = model.forward_features(x)  # (B, N, D)
    feat = model.forward_head(tokens, pre_logits=True)  # (B, D)
    return feat, model.head(feat)
