"""Sub-model training: distillation from the base model onto a group's view of the classes.

The student predicts its group's classes plus one "others" output; its soft target is the
teacher's distribution collapsed the same way (the group's probabilities, then the mass of
every other class), mixed with cross-entropy on the collapsed hard label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from edvit.config.recipe import DistillSpec
from modelgen.inputs import Inputs
from modelgen.train import LossFn, fit


def collapse_labels(labels: np.ndarray, group: Sequence[int], outputs: int) -> np.ndarray:
    """Label index in the student's outputs: its position in the group, else "others"."""
    lookup = np.full(max(int(labels.max(initial=0)) + 1, max(group) + 1), len(group))
    lookup[list(group)] = np.arange(len(group))
    out: np.ndarray = lookup[labels]
    if outputs == len(group) and (out == len(group)).any():
        raise ValueError("a label outside the group, but the sub-model has no others output")
    return out.astype(np.int64)


def collapse_probs(probs: torch.Tensor, group: Sequence[int], outputs: int) -> torch.Tensor:
    """(B, C) teacher probabilities → (B, outputs): the group's, then "others" if present."""
    mine = probs[:, list(group)]  # (B, G)
    if outputs == len(group):
        return mine
    rest = (1.0 - mine.sum(dim=1, keepdim=True)).clamp_min(0.0)  # (B, 1)
    return torch.cat([mine, rest], dim=1)


def distill_loss(spec: DistillSpec, group: Sequence[int], outputs: int) -> LossFn:
    t = spec.temperature

    def loss(logits: torch.Tensor, tg: Mapping[str, torch.Tensor]) -> torch.Tensor:
        soft = collapse_probs(torch.softmax(tg["teacher"] / t, dim=1), group, outputs)
        log_q = torch.log_softmax(logits / t, dim=1)
        kl = nn.functional.kl_div(log_q, soft, reduction="batchmean") * t * t
        hard = nn.functional.cross_entropy(
            logits, tg["label"], label_smoothing=spec.label_smoothing
        )
        return spec.alpha * kl + (1 - spec.alpha) * hard

    return loss


def distill(
    student: nn.Module,
    x: Inputs,
    labels: np.ndarray,
    teacher_logits: np.ndarray,
    group: Sequence[int],
    outputs: int,
    spec: DistillSpec,
    seed: int,
    desc: str,
) -> list[float]:
    """Train `student` on all training data toward the teacher's collapsed distribution."""
    targets = {
        "teacher": teacher_logits.astype(np.float32),
        "label": collapse_labels(labels, group, outputs),
    }
    return fit(student, x, targets, distill_loss(spec, group, outputs), spec, seed, desc)
