"""The fusion MLP in torch, for training: the twin of `edvit.fusion.NumpyFusionMLP`.

Same layers and tensor names (`fc1`, GELU tanh, `fc2`), so `save_fusion` writes a file the
aggregator loads without torch. Training adds per-sub-model feature dropout: each sample's
whole block of one sub-model is zeroed with probability `feature_dropout`, at least one
block is kept, and kept blocks are not rescaled; `edvit.fusion` explains why this makes a
missing node at inference look exactly like a case seen in training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from edvit.fusion import TENSOR_NAMES, fusion_metadata, hidden_size


class TorchFusionMLP(nn.Module):
    """fc1 (in_dim → hidden) → GELU(tanh) → fc2 (hidden → classes) on concatenated features."""

    _block_of_column: torch.Tensor  # column → index of its sub-model block (a buffer)

    def __init__(
        self,
        order: Sequence[str],
        feature_dims: Sequence[int],
        num_classes: int,
        hidden: int | None = None,
        feature_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(order) != len(feature_dims) or not order or len(set(order)) != len(order):
            raise ValueError(
                f"order {list(order)} and feature_dims {list(feature_dims)} must be non-empty, "
                "of equal length, without duplicate ids"
            )
        if not 0.0 <= feature_dropout < 1.0:
            raise ValueError(f"feature_dropout must be in [0, 1), got {feature_dropout}")
        self.order = list(order)
        self.feature_dims = [int(d) for d in feature_dims]
        self.in_dim = sum(self.feature_dims)
        self.hidden = hidden if hidden is not None else hidden_size(self.in_dim)
        self.num_classes = num_classes
        self.feature_dropout = feature_dropout
        self.fc1 = nn.Linear(self.in_dim, self.hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(self.hidden, num_classes)
        block = torch.repeat_interleave(
            torch.arange(len(self.feature_dims)), torch.tensor(self.feature_dims)
        )
        self.register_buffer("_block_of_column", block, persistent=False)

    def block_mask(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, N) float mask of kept sub-model blocks: each dropped with p, one always kept."""
        n = len(self.order)
        keep = torch.rand(batch, n, generator=generator) >= self.feature_dropout
        none_kept = ~keep.any(dim=1)
        if none_kept.any():
            pick = torch.randint(n, (int(none_kept.sum()),), generator=generator)
            keep[none_kept.nonzero(as_tuple=True)[0], pick] = True
        return keep.float()

    def drop_blocks(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Zero whole sub-model blocks of (B, in_dim) features; no rescaling of the rest."""
        mask = self.block_mask(x.shape[0], generator).to(x.device, x.dtype)
        return x * mask[:, self._block_of_column.to(x.device)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) of concatenated features (B, in_dim); block dropout when training."""
        if self.training and self.feature_dropout > 0:
            x = self.drop_blocks(x)
        out: torch.Tensor = self.fc2(self.act(self.fc1(x)))
        return out

    def concat(self, features: Mapping[str, torch.Tensor | None]) -> torch.Tensor:
        """(B, in_dim) in `order`, zeros for a sub-model that is absent or None."""
        unknown = sorted(set(features) - set(self.order))
        if unknown:
            raise ValueError(f"features for unknown sub-models {unknown}; expected {self.order}")
        given = [f for f in (features.get(s) for s in self.order) if f is not None]
        if not given:
            raise ValueError("no sub-model features given: nothing to fuse")
        ref = given[0]
        blocks = []
        for sub_id, dim in zip(self.order, self.feature_dims, strict=True):
            value = features.get(sub_id)
            if value is None:
                value = torch.zeros(ref.shape[0], dim, dtype=ref.dtype, device=ref.device)
            elif value.ndim != 2 or value.shape[1] != dim:
                raise ValueError(f"{sub_id}: features {tuple(value.shape)}, expected (B, {dim})")
            blocks.append(value)
        return torch.cat(blocks, dim=1)

    def forward_features(self, features: Mapping[str, torch.Tensor | None]) -> torch.Tensor:
        """Logits (B, C) from per-sub-model features, like `edvit.fusion.NumpyFusionMLP.forward`."""
        out: torch.Tensor = self(self.concat(features))
        return out


def save_fusion(module: TorchFusionMLP, path: Path) -> None:
    """Write the weights as float32 safetensors with the metadata `edvit.fusion` checks."""
    state = {
        k: v.detach().to(torch.float32).contiguous().cpu() for k, v in module.state_dict().items()
    }
    if sorted(state) != sorted(TENSOR_NAMES):
        raise ValueError(f"fusion state {sorted(state)} != expected tensors {sorted(TENSOR_NAMES)}")
    meta = fusion_metadata(module.order, module.feature_dims, module.hidden, module.num_classes)
    save_file(state, str(path), metadata=meta)


def load_fusion(path: Path) -> TorchFusionMLP:
    """Rebuild the torch module from a fusion file (e.g. to evaluate or fine-tune it)."""
    from edvit.fusion import NumpyFusionMLP

    mlp = NumpyFusionMLP.load(path)
    module = TorchFusionMLP(mlp.order, mlp.feature_dims, mlp.out_dim, hidden=mlp.hidden)
    state = {
        "fc1.weight": torch.from_numpy(mlp.w1.copy()),
        "fc1.bias": torch.from_numpy(mlp.b1.copy()),
        "fc2.weight": torch.from_numpy(mlp.w2.copy()),
        "fc2.bias": torch.from_numpy(mlp.b2.copy()),
    }
    module.load_state_dict(state)
    module.eval()
    return module
