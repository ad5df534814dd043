"""One training loop for every stage: AdamW, linear warm-up then cosine decay, random shifts.

The base model, the distilled sub-models and the fusion MLP differ only in their targets
and loss, so they share `fit`; `predict` runs any model over inputs in batches. Both run
where the model's parameters are (CPU or GPU): batches are made on the CPU and moved there.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edvit.config.recipe import TrainSpec
from modelgen.inputs import Inputs

LossFn = Callable[[torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor]


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a generator for the loop's own draws."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def random_shift(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each sample by up to `shift` pixels along H and W, zero-filled (the mean)."""
    if shift == 0:
        return x
    b, _, h, w = x.shape
    padded = nn.functional.pad(x, (shift, shift, shift, shift))  # (B, C, H+2s, W+2s)
    dy = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]  # (B, 1, 1, W)
    bidx = torch.arange(b)[:, None, None, None]
    cidx = torch.arange(x.shape[1])[None, :, None, None]
    return padded[bidx, cidx, rows, cols]


def random_mask(x: torch.Tensor, width: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """SpecAugment's masking: per sample, one span of 0..`width` rows (dim 2) or columns
    (dim 3) set to 0, the mean of a normalized input."""
    if width == 0:
        return x
    b, size = x.shape[0], x.shape[dim]
    span = torch.randint(0, min(width, size) + 1, (b,), generator=gen)
    start = (torch.rand(b, generator=gen) * (size - span + 1)).long()
    pos = torch.arange(size)[None, :]  # (1, S)
    masked = (pos >= start[:, None]) & (pos < (start + span)[:, None])  # (B, S)
    shape = [b, 1, 1, 1]
    shape[dim] = size
    return x.masked_fill(masked.view(shape), 0.0)


def _lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def device_of(model: nn.Module) -> torch.device:
    """Where the model's parameters live (its inputs must go there too)."""
    return next(model.parameters()).device


def fit(
    model: nn.Module,
    x: Inputs,
    targets: Mapping[str, np.ndarray],
    loss_fn: LossFn,
    spec: TrainSpec,
    seed: int,
    desc: str,
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
) -> list[float]:
    """Train `model` on inputs `x` (N, ...) with per-sample `targets`; returns epoch losses."""
    gen = seed_everything(seed)
    n = len(x)
    steps_per_epoch = math.ceil(n / spec.batch_size)
    total = steps_per_epoch * spec.epochs
    warmup = round(spec.warmup_epochs * steps_per_epoch)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    device = device_of(model)
    tt = {k: torch.from_numpy(v) for k, v in targets.items()}
    run = forward or (lambda m, inp: m(inp))
    losses: list[float] = []
    step = 0
    model.train()
    for _ in tqdm(range(spec.epochs), desc=desc, leave=False, disable=None):
        order = torch.randperm(n, generator=gen)
        total_loss = 0.0
        for start in range(0, n, spec.batch_size):
            idx = order[start : start + spec.batch_size]
            xb = torch.from_numpy(np.ascontiguousarray(x[idx.numpy()]))
            if spec.augment and xb.ndim == 4:
                xb = random_shift(xb, spec.shift, gen)
                xb = random_mask(xb, spec.freq_mask, 2, gen)
                xb = random_mask(xb, spec.time_mask, 3, gen)
            xb = xb.to(device, non_blocking=True)
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, warmup, spec.lr)
            loss = loss_fn(run(model, xb), {k: v[idx].to(device) for k, v in tt.items()})
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total_loss += float(loss.detach()) * len(idx)
            step += 1
        losses.append(total_loss / n)
    model.eval()
    return losses


@torch.no_grad()
def predict(
    model: nn.Module,
    x: Inputs,
    batch_size: int = 256,
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """Model outputs over `x` in batches, as float32 numpy."""
    model.eval()
    device = device_of(model)
    run = forward or (lambda m, inp: m(inp))
    outs = [
        run(model, torch.from_numpy(x[i : i + batch_size]).to(device)).float().cpu().numpy()
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean()) if len(labels) else 0.0


def cross_entropy_loss(label_smoothing: float) -> LossFn:
    """Hard-label loss on the `label` target."""

    def loss(logits: torch.Tensor, t: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, t["label"], label_smoothing=label_smoothing)

    return loss
