"""Cut a class-group sub-model out of a trained timm ViT: structured slicing of real weights.

The result is a standard, smaller timm VisionTransformer (`build_vit` of
`shape.with_heads(k)`), so every exporter and runtime takes it as is: residual width
head_dim·k, k whole heads per block (the head dim is kept), FFN mlp_ratio·width, same depth
and patching, and a head over the group's classes plus, optionally, one "others" output.

Staged as the paper does (§4.3, Alg. 2): rank residual channels on the base model and cut
them; rank heads on that channel-cut model and cut them; rank FFN neurons on the result and
cut them (`prune_for_group`). Every stage's model keeps the base model's ids for the
components it has not cut yet, so the kept ids (`Kept`) are all in base coordinates and the
final sub-model is one slice of the base weights.

Heads are kept whole. The paper instead prunes q/k/v dims inside every head and merges the
survivors into fewer new heads; a merged head would mix dims trained under different attention
softmaxes, whereas a whole head keeps its attention pattern exactly and its importance can be
measured exactly (ablation KL), so we keep whole heads (the head dim, as planned, is kept).

Each stage ranks against its own starting model (P = the model it cuts from): that is the
reference at which the Fisher expansion holds (P = Q at mask 1) and it measures what the cut
of this stage costs, on top of what earlier stages already cut.

LayerNorm over fewer channels is not the same function (its mean and variance now run over
the kept channels only), so a cut model only approximates the base; it is retrained by
distillation afterwards. Cutting nothing reproduces the base exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from timm.layers.attention import Attention
from timm.layers.mlp import Mlp
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from modelgen.importance import Importance, ViT, check_group, order_by_importance, vit_dims
from modelgen.model import ModelConfig, build_vit
from modelgen.vit_shape import ViTShape


@dataclass(frozen=True)
class Kept:
    """Which components of the source model survive, each tuple in increasing id order."""

    channels: tuple[int, ...]  # residual channels
    heads: tuple[tuple[int, ...], ...]  # per block
    neurons: tuple[tuple[int, ...], ...]  # per block

    @classmethod
    def everything(cls, model: ViT) -> Kept:
        dim = int(model.cls_token.shape[-1])
        blocks = list(model.blocks)
        return cls(
            channels=tuple(range(dim)),
            heads=tuple(tuple(range(int(b.attn.num_heads))) for b in blocks),
            neurons=tuple(tuple(range(int(b.mlp.fc1.out_features))) for b in blocks),
        )


@dataclass(frozen=True)
class PruneResult:
    """A group's sub-model before retraining, how to rebuild it, and what it kept of the base."""

    model: ViT
    config: ModelConfig
    kept: Kept


def keep_top(order: torch.Tensor, n: int) -> tuple[int, ...]:
    """The first `n` ids of an importance order, back in their original (increasing) order.

    Sorting back keeps the sliced weights in the base's layout, so cutting nothing is the
    identity and position-dependent structure (head blocks of qkv) stays intact.
    """
    if not 1 <= n <= order.numel():
        raise ValueError(f"cannot keep {n} of {order.numel()} components")
    return tuple(sorted(int(i) for i in order[:n]))


# ─── slicing ────────────────────────────────────────────────────────────────────────────────


def others_row_weights(model: ViT, x: torch.Tensor, group: Sequence[int]) -> torch.Tensor:
    """π over the non-group classes (increasing id): the base's mean softmax mass on `x`.

    Used to initialise the "others" logit (see `slice_vit`); (C-|G|,), sums to 1.
    """
    num_classes = model.head.out_features
    in_group = set(group)
    others = [c for c in range(num_classes) if c not in in_group]
    if not others:
        raise ValueError("the group holds every class: there is no 'others' output")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = model.cls_token.device
            mass = torch.zeros(len(others))
            for start in range(0, x.shape[0], 64):
                xb = x[start : start + 64].to(device=device, dtype=model.cls_token.dtype)
                probs = model(xb).softmax(dim=1)  # (B, C)
                mass += probs[:, others].sum(0).cpu()
    finally:
        model.train(was_training)
    return mass / mass.sum()


def _target_module(
    shape: ViTShape, dim: int, heads: int, head_dim: int, hidden: int, num_outputs: int
) -> VisionTransformer:
    """An empty timm ViT of these widths: `build_vit` when it is a standard shape, else the same
    with each block's Attention/Mlp swapped for wider ones (only between pruning stages)."""
    if dim % head_dim:
        raise ValueError(f"residual width {dim} is not a multiple of the head dim {head_dim}")
    if head_dim != shape.head_dim:
        raise ValueError(
            f"the model's head dim {head_dim} differs from the shape's {shape.head_dim}"
        )
    standard = shape.with_heads(dim // head_dim)
    model = build_vit(ModelConfig(standard, num_outputs))
    if heads != standard.num_heads or hidden != standard.mlp_hidden:
        for blk in model.blocks:
            blk.attn = Attention(dim, num_heads=heads, attn_head_dim=head_dim, qkv_bias=True)
            blk.mlp = Mlp(in_features=dim, hidden_features=hidden, act_layer=nn.GELU)
    return model


def _head_rows(
    weight: torch.Tensor,  # (C, D)
    bias: torch.Tensor,  # (C,)
    group: list[int],
    with_others: bool,
    others_prior: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    rows_w, rows_b = weight[group], bias[group]  # (|G|, D), (|G|,)
    if not with_others:
        return rows_w, rows_b
    in_group = set(group)
    others = [c for c in range(weight.shape[0]) if c not in in_group]
    if not others:
        raise ValueError("the group holds every class: there is no 'others' output to add")
    pi = torch.full((len(others),), 1.0 / len(others)) if others_prior is None else others_prior
    pi = pi.to(weight.dtype).to(weight.device)
    if (
        pi.shape != (len(others),)
        or (pi < 0).any()
        or not torch.isclose(pi.sum(), pi.new_tensor(1.0))
    ):
        raise ValueError(
            f"others_prior must be a distribution over the {len(others)} other classes"
        )
    # Gibbs: logsumexp_j z_j ≥ Σ π_j z_j + H(π), tight when π = softmax(z). With π the mass the
    # base puts on each other class, z_others = π·W x + π·b + H(π) starts as that lower bound
    # of the base's collapsed "others" logit (uniform π: mean row and bias + log M).
    entropy = -torch.xlogy(pi, pi).sum()
    w_o = pi @ weight[others]  # (D,)
    b_o = pi @ bias[others] + entropy
    return torch.cat([rows_w, w_o[None]]), torch.cat([rows_b, b_o[None]])


def slice_vit(
    model: ViT,
    shape: ViTShape,
    kept: Kept,
    group_classes: Sequence[int] | None = None,
    num_outputs: int | None = None,
    others_prior: torch.Tensor | None = None,
) -> VisionTransformer:
    """A new timm ViT holding `kept` of `model`'s weights (ids index `model`'s components).

    `shape` is the base shape (patching, depth, mlp_ratio, head dim). The head keeps the rows of
    `group_classes` in that order (default: every class), plus one "others" row when
    `num_outputs` is one more (initialised from `others_prior`, default uniform; see
    `_head_rows`). The result is a standard `build_vit(shape.with_heads(k))` model when every
    block keeps k heads and mlp_ratio·head_dim·k neurons, as `prune_for_group` does.
    """
    num_classes = model.head.out_features
    group = (
        list(range(num_classes))
        if group_classes is None
        else check_group(group_classes, num_classes)
    )
    outputs = len(group) if num_outputs is None else num_outputs
    if outputs not in (len(group), len(group) + 1):
        raise ValueError(
            f"num_outputs must be the group size {len(group)} or {len(group) + 1} (with 'others'), "
            f"got {outputs}"
        )
    blocks = list(model.blocks)
    if len(kept.heads) != len(blocks) or len(kept.neurons) != len(blocks):
        raise ValueError(f"kept heads/neurons must list {len(blocks)} blocks")
    if len({len(h) for h in kept.heads}) != 1 or len({len(n) for n in kept.neurons}) != 1:
        raise ValueError("every block must keep the same number of heads and of neurons")
    head_dim = int(blocks[0].attn.head_dim)
    src_heads = int(blocks[0].attn.num_heads)
    src_attn = src_heads * head_dim
    src_dim, src_hidden = int(model.cls_token.shape[-1]), int(blocks[0].mlp.fc1.out_features)
    for name, ids, bound in [
        ("channel", kept.channels, src_dim),
        *[("head", h, src_heads) for h in kept.heads],
        *[("neuron", n, src_hidden) for n in kept.neurons],
    ]:
        if not ids or list(ids) != sorted(set(ids)) or ids[0] < 0 or ids[-1] >= bound:
            raise ValueError(
                f"kept {name} ids must be increasing, distinct and within 0…{bound - 1}"
            )

    target = _target_module(
        shape, len(kept.channels), len(kept.heads[0]), head_dim, len(kept.neurons[0]), outputs
    )
    src = {k: v.detach() for k, v in model.state_dict().items()}
    expected = set(target.state_dict())
    if extra := sorted(set(src) - expected):
        raise ValueError(f"unsupported ViT variant, cannot slice parameters {extra[:5]}")

    ch = torch.tensor(kept.channels)
    out: dict[str, torch.Tensor] = {
        "cls_token": src["cls_token"][..., ch],  # (1, 1, D')
        "pos_embed": src["pos_embed"][..., ch],  # (1, N, D')
        "patch_embed.proj.weight": src["patch_embed.proj.weight"][ch],  # (D', C, p, p)
        "patch_embed.proj.bias": src["patch_embed.proj.bias"][ch],
        "norm.weight": src["norm.weight"][ch],
        "norm.bias": src["norm.bias"][ch],
    }
    for i, (heads, neurons) in enumerate(zip(kept.heads, kept.neurons, strict=True)):
        pre = f"blocks.{i}."
        cols = torch.cat([torch.arange(j * head_dim, (j + 1) * head_dim) for j in heads])  # (A',)
        rows = torch.cat([part * src_attn + cols for part in range(3)])  # q, k, v rows: (3A',)
        nn_ids = torch.tensor(neurons)
        for ln in ("norm1", "norm2"):
            out[pre + ln + ".weight"] = src[pre + ln + ".weight"][ch]
            out[pre + ln + ".bias"] = src[pre + ln + ".bias"][ch]
        out[pre + "attn.qkv.weight"] = src[pre + "attn.qkv.weight"][rows][:, ch]  # (3A', D')
        out[pre + "attn.qkv.bias"] = src[pre + "attn.qkv.bias"][rows]
        out[pre + "attn.proj.weight"] = src[pre + "attn.proj.weight"][ch][:, cols]  # (D', A')
        out[pre + "attn.proj.bias"] = src[pre + "attn.proj.bias"][ch]
        out[pre + "mlp.fc1.weight"] = src[pre + "mlp.fc1.weight"][nn_ids][:, ch]  # (H', D')
        out[pre + "mlp.fc1.bias"] = src[pre + "mlp.fc1.bias"][nn_ids]
        out[pre + "mlp.fc2.weight"] = src[pre + "mlp.fc2.weight"][ch][:, nn_ids]  # (D', H')
        out[pre + "mlp.fc2.bias"] = src[pre + "mlp.fc2.bias"][ch]
    head_w, head_b = _head_rows(
        src["head.weight"][:, ch], src["head.bias"], group, outputs == len(group) + 1, others_prior
    )
    out["head.weight"], out["head.bias"] = head_w, head_b  # (K, D'), (K,)
    if missing := sorted(expected - set(out)):
        raise ValueError(f"unsupported ViT variant, no source for parameters {missing[:5]}")
    target.load_state_dict({k: v.contiguous().clone() for k, v in out.items()})
    target.to(device=src["cls_token"].device, dtype=src["cls_token"].dtype)
    target.train(model.training)
    return target


# ─── the staged pipeline ────────────────────────────────────────────────────────────────────


def _check_matches(model: ViT, shape: ViTShape) -> None:
    dim, depth, heads, head_dim, hidden = vit_dims(model)
    got = (dim, depth, heads, head_dim, hidden)
    want = (shape.embed_dim, shape.depth, shape.num_heads, shape.head_dim, shape.mlp_hidden)
    if got != want:
        raise ValueError(
            f"model (embed, depth, heads, head dim, FFN) {got} does not match the shape's {want}"
        )


def prune_for_group(
    model: ViT,
    shape: ViTShape,
    heads_k: int,
    x_group: torch.Tensor,
    group_classes: Sequence[int],
    importance: Importance,
    num_outputs: int | None = None,
) -> PruneResult:
    """The group's k-head sub-model cut from the trained base `model` (of `shape`).

    Stages (each ranked by `importance` on the model the previous stage left, on the group's
    samples `x_group` (B, C, H, W)): residual channels → head_dim·k, heads → k per block, FFN
    neurons → mlp_ratio·head_dim·k. `num_outputs` defaults to |group|+1 (group classes + "others",
    initialised from the base's mass on the other classes over `x_group`). The base model is
    left unchanged.
    """
    _check_matches(model, shape)
    if not 1 <= heads_k <= shape.num_heads:
        raise ValueError(f"heads_k must be within 1…{shape.num_heads}, got {heads_k}")
    group = check_group(group_classes, model.head.out_features)
    outputs = len(group) + 1 if num_outputs is None else num_outputs
    if outputs not in (len(group), len(group) + 1):
        raise ValueError(
            f"num_outputs must be the group size {len(group)} or {len(group) + 1} (with 'others'), "
            f"got {outputs}"
        )
    with_others = outputs == len(group) + 1
    if with_others and len(group) == model.head.out_features:
        raise ValueError("the group holds every class: use num_outputs = the number of classes")
    final_shape = shape.with_heads(heads_k)
    everything = Kept.everything(model)

    # Stage 1: residual channels, ranked on the base.
    channel_order = order_by_importance(importance(model, x_group, group, "channels"))
    channels = keep_top(channel_order, final_shape.embed_dim)
    stage = Kept(channels, everything.heads, everything.neurons)
    cut = slice_vit(model, shape, stage)  # every class kept: the ranking's view needs them

    # Stage 2: heads, ranked on the channel-cut model (head ids are still the base's).
    head_order = order_by_importance(importance(cut, x_group, group, "heads"))
    heads = tuple(keep_top(row, heads_k) for row in head_order)
    stage = Kept(channels, heads, everything.neurons)
    cut = slice_vit(model, shape, stage)

    # Stage 3: FFN neurons, ranked on the channel- and head-cut model.
    neuron_order = order_by_importance(importance(cut, x_group, group, "neurons"))
    neurons = tuple(keep_top(row, final_shape.mlp_hidden) for row in neuron_order)
    kept = Kept(channels, heads, neurons)

    prior = others_row_weights(model, x_group, group) if with_others else None
    sub = slice_vit(model, shape, kept, group, outputs, prior)
    return PruneResult(model=sub, config=ModelConfig(final_shape, outputs), kept=kept)
