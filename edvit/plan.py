"""The plan contract: which sub-models exist, their shapes and costs, and where each runs.

`modelgen plan --json` prints it, `modelgen build` follows it and records it in the
manifest, and the site tools read the assignment from there; one typed model for all three.
"""

from __future__ import annotations

from pydantic import Field

from edvit.config.base import StrictModel


class SubmodelPlan(StrictModel):
    """One sub-model of the plan: its class group and shape (ED-ViT §3: heads × 64 channels)."""

    id: str = Field(description="Sub-model id, e.g. g0.")
    classes: list[int] = Field(description="Class indices of its group.")
    heads: int = Field(description="Attention heads (embed = head_dim × heads).")
    embed_dim: int = Field(description="Residual width.")
    outputs: int = Field(description="Logits: the group's classes plus 'others' when N > 1.")
    params: int = Field(description="Exact parameter count.")
    size_mib: float = Field(description="fp32 weight size in MiB.")
    gmacs: float = Field(description="Linear MACs per sample × 1e-9 (the paper's GFLOPs).")


class DevicePlan(StrictModel):
    """One device and what the plan puts on it."""

    id: str = Field(description="Device id (the node id that runs on it).")
    memory_mib: float = Field(description="Memory it offers for weights.")
    gmacs_per_s: float = Field(description="Its sustained compute.")
    submodels: list[str] = Field(description="Sub-model ids assigned to it.")
    used_mib: float = Field(description="Their total size.")
    latency_s: float = Field(description="Σ GMACs / GMAC/s of its sub-models per sample.")


class Plan(StrictModel):
    """The JSON contract of `modelgen plan`; `modelgen build` follows the same plan."""

    arch: str = Field(description="Base architecture name.")
    num_classes: int = Field(description="Classes of the task.")
    budget_mib: float | None = Field(description="Total memory budget (None: none).")
    rate_hz: float = Field(description="Samples per second every device must sustain.")
    solver_used: str = Field(description="optimal, greedy, search-limit or none.")
    solver_note: str | None = Field(description="Why a fallback happened, else None.")
    submodels: list[SubmodelPlan] = Field(description="The sub-models, in id order.")
    total_mib: float = Field(description="Sum of the sub-model sizes.")
    devices: list[DevicePlan] | None = Field(description="Per device (None without devices).")
    assignment: dict[str, str] | None = Field(
        description="Sub-model id → device id (None without devices)."
    )
    makespan_s: float | None = Field(description="The largest device latency.")

    def submodel(self, sub_id: str) -> SubmodelPlan:
        return next(s for s in self.submodels if s.id == sub_id)
