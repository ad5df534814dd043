"""How much one class group needs each prunable component of a trained timm ViT.

ED-ViT (§4.3, App. B) ranks three kinds of components by the KL divergence KL(P‖Q) between
the output distribution P of the model and Q of the model without that component, on the
group's samples: residual-stream channels (shared by every block), attention heads (per
block) and FFN hidden neurons (per block).

The distribution is the one the sub-model will be asked to reproduce: the group's classes
plus one "others" entry holding the mass of every other class (`collapse_logits`). How the
mass is spread among the other classes is not the sub-model's business (it never outputs
them, and distillation trains it on exactly this collapsed target), so a component that only
tells two foreign classes apart must not look important to this group.

How the KL is measured:
- heads: exactly, by zeroing the head's output before `attn.proj` (one batched suffix pass
  per block, every head of the block in one batch): depth·h ablations are affordable;
- channels and neurons: by its second-order approximation. Put a mask m = 1 on the component;
  at m = 1 the KL and its gradient are zero (P = Q is the minimum), so the first-order Taylor
  term vanishes and KL(P‖Q_{m_c=0}) ≈ ½ F_cc, with the Fisher information
  F_cc = E_x Σ_y p(y|x) (∂ log p(y|x)/∂m_c)², the sum over the ≤ |group|+1 collapsed
  outputs taken exactly (one backward pass per output, every sample and component at once:
  the masks are per sample, so their gradients are the per-sample gradients).

Each way of scoring is an `Importance` object: `KLImportance` (the above), and the baselines
`MagnitudeImportance` (L2 norm of the component's weights, data-free) and `RandomImportance`
(a seeded permutation).

Everything here leaves the model as it found it: masks are forward hooks removed on exit,
parameters are frozen only during a call, train/eval mode is restored.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, get_args

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

# A timm VisionTransformer (class token, plain Attention/Mlp blocks). Any-typed: timm types
# its submodules as bare `nn.Module`, so `blk.attn.proj` would need a cast at every use; the
# structure is checked at run time instead (`vit_dims`).
ViT: TypeAlias = Any

Component = Literal["channels", "heads", "neurons"]
COMPONENTS: tuple[Component, ...] = get_args(Component)


@dataclass(frozen=True)
class Ranking:
    """Component ids, most important first (ids index the ranked model's own components)."""

    channels: torch.Tensor  # (D,) residual channels
    heads: torch.Tensor  # (depth, h) heads of each block
    neurons: torch.Tensor  # (depth, H) FFN hidden neurons of each block


# ─── the group's view of the output ─────────────────────────────────────────────────────────


def check_group(group_classes: Sequence[int], num_classes: int) -> list[int]:
    """The group as a list, or ValueError: non-empty, distinct, each a class of the model."""
    group = [int(c) for c in group_classes]
    if not group:
        raise ValueError("a class group needs at least one class")
    if len(set(group)) != len(group):
        raise ValueError(f"class group {group} repeats a class")
    if bad := [c for c in group if not 0 <= c < num_classes]:
        raise ValueError(f"class group has ids {bad} outside 0…{num_classes - 1}")
    return group


def collapse_logits(logits: torch.Tensor, group_classes: Sequence[int]) -> torch.Tensor:
    """Log-probabilities (B, |G|+1) of the group's classes (in the group's order) and "others".

    Exactly log of the full softmax with the other classes' mass summed into one entry. When
    the group holds every class there is no "others" entry: (B, |G|).
    """
    num_classes = logits.shape[-1]
    group = check_group(group_classes, num_classes)
    in_group = set(group)
    others = [c for c in range(num_classes) if c not in in_group]
    parts = [logits[:, group]]  # (B, |G|)
    if others:
        parts.append(torch.logsumexp(logits[:, others], dim=1, keepdim=True))  # (B, 1)
    return torch.log_softmax(torch.cat(parts, dim=1), dim=1)


def order_by_importance(scores: torch.Tensor) -> torch.Tensor:
    """Ids sorted by decreasing score along the last dim (stable: ties keep id order)."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


# ─── model plumbing ─────────────────────────────────────────────────────────────────────────


def _check_vit(model: ViT) -> None:
    """Raise ValueError unless `model` has the plain timm ViT layout this module hooks into."""
    needed = ["cls_token", "blocks", "norm_pre", "norm", "head"]
    if missing := [name for name in needed if getattr(model, name, None) is None]:
        raise ValueError(f"not a class-token timm VisionTransformer: no {', '.join(missing)}")
    for i, blk in enumerate(model.blocks):
        attn, mlp = getattr(blk, "attn", None), getattr(blk, "mlp", None)
        if attn is None or not hasattr(attn, "proj") or not hasattr(attn, "num_heads"):
            raise ValueError(f"block {i} has no timm Attention (qkv/proj/num_heads)")
        if mlp is None or not all(hasattr(mlp, n) for n in ("fc1", "act", "fc2")):
            raise ValueError(f"block {i} has no timm Mlp (fc1/act/fc2)")


def vit_dims(model: ViT) -> tuple[int, int, int, int, int]:
    """(embed D, depth, heads h, head dim, FFN hidden H); every block must agree."""
    _check_vit(model)
    blocks = list(model.blocks)
    first = blocks[0]
    h, hd, hidden = int(first.attn.num_heads), int(first.attn.head_dim), first.mlp.fc1.out_features
    for i, blk in enumerate(blocks):
        if (blk.attn.num_heads, blk.attn.head_dim, blk.mlp.fc1.out_features) != (h, hd, hidden):
            raise ValueError(f"block {i} differs from block 0 in heads or FFN width")
    return int(model.cls_token.shape[-1]), len(blocks), h, hd, int(hidden)


def _num_classes(model: ViT) -> int:
    head = model.head
    if not isinstance(head, nn.Linear):
        raise ValueError("the model has no linear classification head")
    return head.out_features


def _check_x(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(
            f"expected a non-empty image batch (B, C, H, W), got shape {tuple(x.shape)}"
        )


@contextmanager
def _inspecting(model: ViT) -> Iterator[None]:
    """Eval mode and frozen parameters for the duration, both restored afterwards."""
    was_training = model.training
    grads = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, g in zip(model.parameters(), grads, strict=True):
            p.requires_grad_(g)
        model.train(was_training)


def _chunks(x: torch.Tensor, size: int, like: torch.Tensor) -> Iterator[torch.Tensor]:
    """Batches of `size` samples on the model's device and in its dtype (numpy gives float64)."""
    for start in range(0, x.shape[0], size):
        yield x[start : start + size].to(device=like.device, dtype=like.dtype)


def _mul_output(mask: torch.Tensor) -> Callable[[nn.Module, Any, torch.Tensor], torch.Tensor]:
    def hook(_module: nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
        return out * mask

    return hook


def _mul_input(mask: torch.Tensor) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], Any]:
    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (inputs[0] * mask, *inputs[1:])

    return hook


def _recorder(into: list[torch.Tensor]) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        into.append(inputs[0])

    return hook


def _channel_sites(model: ViT) -> list[nn.Module]:
    """Modules whose outputs carry the residual channels (masking them all removes a channel).

    The token embedding (patch conv + class token + positions, seen at `norm_pre`), each
    block's branch outputs (attn, mlp) that write into the stream, the LayerNorm outputs
    (norm1, norm2, final norm) that read from it: a removed channel neither flows nor feeds.
    """
    sites: list[nn.Module] = [model.norm_pre]
    for blk in model.blocks:
        sites += [blk.norm1, blk.attn, blk.norm2, blk.mlp]
    sites.append(model.norm)
    return sites


# ─── Fisher (second-order KL) ───────────────────────────────────────────────────────────────

MaskInstaller = Callable[[int, torch.device], tuple[list[torch.Tensor], list[RemovableHandle]]]


def _fisher_kl(
    model: ViT,
    x: torch.Tensor,
    group: list[int],
    batch_size: int,
    install: MaskInstaller,
) -> list[torch.Tensor]:
    """½·diag(Fisher) of each mask installed by `install`, averaged over the samples of `x`.

    `install(B, device)` returns per-sample masks (B, 1, n) of ones with requires_grad and the
    hook handles that apply them. Result: one (n,) tensor per mask, ≈ KL(P‖Q_{m_c=0}).
    """
    totals: list[torch.Tensor] | None = None
    with torch.enable_grad():  # the caller may be under no_grad; the masks need gradients
        for xb in _chunks(x, batch_size, model.cls_token):
            sums = _fisher_chunk(model, xb, group, install)
            totals = sums if totals is None else [t + s for t, s in zip(totals, sums, strict=True)]
    if totals is None:
        raise ValueError("no samples to rank on")
    return [0.5 * t.cpu() / x.shape[0] for t in totals]


def _fisher_chunk(
    model: ViT, xb: torch.Tensor, group: list[int], install: MaskInstaller
) -> list[torch.Tensor]:
    """Σ_b Σ_y p(y|x_b)·(∂ log p(y|x_b)/∂m)² for one chunk: one (n,) tensor per mask."""
    masks, handles = install(xb.shape[0], xb.device)
    try:
        logp = collapse_logits(model(xb), group)  # (B, K)
    finally:
        for handle in handles:
            handle.remove()
    p = logp.detach().exp()  # (B, K)
    sums = [torch.zeros(m.shape[-1], device=xb.device) for m in masks]
    num_outputs = logp.shape[1]
    for y in range(num_outputs):
        grads = torch.autograd.grad(
            logp[:, y].sum(), masks, retain_graph=y < num_outputs - 1
        )  # per mask (B, 1, n): sample b's gradient only reaches its own mask row
        for acc, g in zip(sums, grads, strict=True):
            acc += p[:, y] @ g.flatten(1).square()  # (n,)
    return sums


def _fisher_channels(
    model: ViT, x: torch.Tensor, group: list[int], batch_size: int
) -> torch.Tensor:
    dim = int(model.cls_token.shape[-1])
    sites = _channel_sites(model)

    def install(b: int, device: torch.device) -> tuple[list[torch.Tensor], list[RemovableHandle]]:
        mask = torch.ones(b, 1, dim, device=device, requires_grad=True)  # (B, 1, D)
        return [mask], [s.register_forward_hook(_mul_output(mask)) for s in sites]

    return _fisher_kl(model, x, group, batch_size, install)[0]


def _fisher_neurons(model: ViT, x: torch.Tensor, group: list[int], batch_size: int) -> torch.Tensor:
    acts = [blk.mlp.act for blk in model.blocks]

    def install(b: int, device: torch.device) -> tuple[list[torch.Tensor], list[RemovableHandle]]:
        masks = [
            torch.ones(b, 1, blk.mlp.fc1.out_features, device=device, requires_grad=True)
            for blk in model.blocks
        ]  # each (B, 1, H): zeroing the activation output removes the neuron
        handles = [
            a.register_forward_hook(_mul_output(m)) for a, m in zip(acts, masks, strict=True)
        ]
        return masks, handles

    return torch.stack(_fisher_kl(model, x, group, batch_size, install))  # (depth, H)


# ─── exact ablation KL of heads ─────────────────────────────────────────────────────────────


def _ablation_kl_heads(
    model: ViT, x: torch.Tensor, group: list[int], batch_size: int
) -> torch.Tensor:
    """Mean KL(P‖Q_{-head}) for every head of every block: (depth, h).

    Per chunk, one normal pass records each block's input; then for block l all h ablations
    run together as one (h·B)-batch through blocks l… only (the prefix is shared).
    """
    _, depth, h, hd, _ = vit_dims(model)
    device = model.cls_token.device
    blocks = list(model.blocks)
    keep = 1.0 - torch.kron(torch.eye(h, device=device), torch.ones(1, hd, device=device))
    # keep: (h, h·hd), row j zeroes head j's slice of the attention output
    totals = torch.zeros(depth, h, device=device)
    with torch.no_grad():
        for xb in _chunks(x, max(1, batch_size // h), model.cls_token):
            b = xb.shape[0]
            inputs: list[torch.Tensor] = []
            handles = [blk.register_forward_pre_hook(_recorder(inputs)) for blk in blocks]
            try:
                logp = collapse_logits(model(xb), group)  # (B, K)
            finally:
                for handle in handles:
                    handle.remove()
            p = logp.exp()
            mask = keep.repeat_interleave(b, dim=0).unsqueeze(1)  # (h·B, 1, h·hd)
            for layer in range(depth):
                tokens = inputs[layer].repeat(h, 1, 1)  # (h·B, N, D), replica j = head j ablated
                handle = blocks[layer].attn.proj.register_forward_pre_hook(_mul_input(mask))
                try:
                    for blk in blocks[layer:]:
                        tokens = blk(tokens)
                finally:
                    handle.remove()
                logits = model.forward_head(model.norm(tokens))  # (h·B, C)
                logq = collapse_logits(logits, group).view(h, b, -1)  # (h, B, K)
                totals[layer] += (p * (logp - logq)).sum(dim=(1, 2))  # (h,)
    return totals.cpu() / x.shape[0]


# ─── magnitude and random baselines ─────────────────────────────────────────────────────────


def _sq(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of squares over every dim but `dim`: (t.shape[dim],)."""
    t = t.detach().float().movedim(dim, 0)
    return t.reshape(t.shape[0], -1).square().sum(1).cpu()


def _magnitude_channels(model: ViT) -> torch.Tensor:
    conv = model.patch_embed.proj
    total = _sq(conv.weight, 0) + _sq(model.cls_token, -1) + _sq(model.pos_embed, -1)
    if conv.bias is not None:
        total += _sq(conv.bias, 0)
    for blk in model.blocks:
        for ln in (blk.norm1, blk.norm2):
            total += _sq(ln.weight, 0) + _sq(ln.bias, 0)
        total += _sq(blk.attn.qkv.weight, 1) + _sq(blk.attn.proj.weight, 0)
        total += _sq(blk.attn.proj.bias, 0)
        total += _sq(blk.mlp.fc1.weight, 1) + _sq(blk.mlp.fc2.weight, 0) + _sq(blk.mlp.fc2.bias, 0)
    total += _sq(model.norm.weight, 0) + _sq(model.norm.bias, 0) + _sq(model.head.weight, 1)
    return total.sqrt()


def _magnitude_heads(model: ViT) -> torch.Tensor:
    dim, _, h, hd, _ = vit_dims(model)
    rows = []
    for blk in model.blocks:
        qkv_w = blk.attn.qkv.weight.detach().float().view(3, h, hd, dim)
        total = qkv_w.square().sum(dim=(0, 2, 3))  # (h,)
        if blk.attn.qkv.bias is not None:
            total += blk.attn.qkv.bias.detach().float().view(3, h, hd).square().sum(dim=(0, 2))
        proj_w = blk.attn.proj.weight.detach().float().view(dim, h, hd)
        rows.append((total + proj_w.square().sum(dim=(0, 2))).cpu())
    return torch.stack(rows).sqrt()  # (depth, h)


def _magnitude_neurons(model: ViT) -> torch.Tensor:
    rows = []
    for blk in model.blocks:
        fc1, fc2 = blk.mlp.fc1, blk.mlp.fc2
        total = _sq(fc1.weight, 0) + _sq(fc2.weight, 1)
        if fc1.bias is not None:
            total += _sq(fc1.bias, 0)
        rows.append(total)
    return torch.stack(rows).sqrt()  # (depth, H)


# ─── public: importance objects ─────────────────────────────────────────────────────────────


class Importance(ABC):
    """Scores of one kind of component for a class group, higher = more needed.

    In the manner of Torch-Pruning's `Importance`: one object, chosen once from the recipe's
    `pruning.method`, is called at every pruning stage; a subclass says how each kind is
    scored. Calls leave the model as they found it.
    """

    def __call__(
        self, model: ViT, x: torch.Tensor, group_classes: Sequence[int], component: Component
    ) -> torch.Tensor:
        """(D,) for channels, (depth, h) for heads, (depth, H) for FFN neurons."""
        vit_dims(model)
        _check_x(x)
        group = check_group(group_classes, _num_classes(model))
        score = {"channels": self.channels, "heads": self.heads, "neurons": self.neurons}
        with _inspecting(model):
            return score[component](model, x, group)

    @abstractmethod
    def channels(self, model: ViT, x: torch.Tensor, group: list[int]) -> torch.Tensor:
        """(D,) residual channels."""

    @abstractmethod
    def heads(self, model: ViT, x: torch.Tensor, group: list[int]) -> torch.Tensor:
        """(depth, h) attention heads."""

    @abstractmethod
    def neurons(self, model: ViT, x: torch.Tensor, group: list[int]) -> torch.Tensor:
        """(depth, H) FFN hidden neurons."""


@dataclass(frozen=True)
class KLImportance(Importance):
    """KL(P‖Q) of removing the component: exact ablation for heads, Fisher for the rest.

    `batch_size` bounds the samples in one pass (heads: the h ablations of a block share it).
    """

    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")

    def channels(self, model: ViT, x: torch.Tensor, group: list[int]) -> torch.Tensor:
        return _fisher_channels(model, x, group, self.batch_size)

    def heads(self, model: ViT, x: torch.Tensor, group: list[int]) -> torch.Tensor:
        return _ablation_kl_heads(model, x, group, self.batch_size)

    def neurons(self, model: ViT, x: torch.Tensor, group: list[int]) -> torch.Tensor:
        return _fisher_neurons(model, x, group, self.batch_size)


class MagnitudeImportance(Importance):
    """L2 norm of the component's weights: data-free, the same for every group."""

    def channels(self, model: ViT, x: torch.Tensor, group: list[int]) -> torch.Tensor:
        return _magnitude_channels(model)

    def heads(self, model: ViT, x: torch.Tensor, group: list[int]) -> torch.Tensor:
        return _magnitude_heads(model)

    def neurons(self, model: ViT, x: torch.Tensor, group: list[int]) -> torch.Tensor:
        return _magnitude_neurons(model)


@dataclass(frozen=True)
class RandomImportance(Importance):
    """Uniform random scores, a seeded permutation: the baseline any ranking must beat.

    Each kind draws from its own stream, so one seed gives unrelated permutations of
    channels, heads and neurons.
    """

    seed: int = 0

    def _draw(self, shape: tuple[int, ...], stream: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * len(COMPONENTS) + stream)
        return torch.rand(shape, generator=gen)

    def channels(self, model: ViT, x: torch.Tensor, group: list[int]) -> torch.Tensor:
        dim, _, _, _, _ = vit_dims(model)
        return self._draw((dim,), 0)

    def heads(self, model: ViT, x: torch.Tensor, group: list[int]) -> torch.Tensor:
        _, depth, h, _, _ = vit_dims(model)
        return self._draw((depth, h), 1)

    def neurons(self, model: ViT, x: torch.Tensor, group: list[int]) -> torch.Tensor:
        _, depth, _, _, hidden = vit_dims(model)
        return self._draw((depth, hidden), 2)


def rank_components(
    model: ViT, x: torch.Tensor, group_classes: Sequence[int], importance: Importance
) -> Ranking:
    """All three rankings on the same (unpruned) model: the one-shot, unstaged variant.

    The paper's staged order (heads ranked after channels are cut, neurons after heads) is
    `modelgen.pruning.prune_for_group`.
    """
    order = {c: order_by_importance(importance(model, x, group_classes, c)) for c in COMPONENTS}
    return Ranking(**order)
