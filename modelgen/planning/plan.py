"""Alg. 1: heads per sub-model under the memory budget, then an assignment to devices.

Every sub-model starts at k = ceil(h / N) heads; while the sub-models together exceed the
budget, or no assignment fits the devices, the largest sub-model loses one head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from edvit.config import Device
from edvit.plan import DevicePlan, Plan, SubmodelPlan
from modelgen.planning.assign import (
    Assignment,
    DeviceCapacity,
    Item,
    assign_greedy,
    assign_optimal,
)
from modelgen.sizing import MIB, vit_stats
from modelgen.vit_shape import ViTShape

Solver = Literal["greedy", "optimal"]
EXACT_LIMIT = 16  # the exact solver runs for at most this many sub-models and devices


class PlanError(Exception):
    """No plan satisfies the constraints; the message names the binding one."""


def group_ids(n: int) -> list[str]:
    """Sub-model ids `g0 … g{n-1}`, one per group."""
    return [f"g{i}" for i in range(n)]


def submodel_outputs(num_groups: int, classes: Sequence[int]) -> int:
    """A sub-model predicts its group's classes plus one "others" output (none when N = 1)."""
    return len(classes) + (1 if num_groups > 1 else 0)


def submodel_plan(
    sub_id: str, classes: Sequence[int], base: ViTShape, heads: int, outputs: int
) -> SubmodelPlan:
    """The sub-model of `base` with `heads` heads and `outputs` outputs, sized."""
    stats = vit_stats(base.with_heads(heads), outputs)
    return SubmodelPlan(
        id=sub_id,
        classes=list(classes),
        heads=stats.heads,
        embed_dim=stats.embed_dim,
        outputs=outputs,
        **stats.sizes(),
    )


def _explain(
    items: Sequence[Item], devices: Sequence[Device], rate_hz: float, budget_mib: float | None
) -> str:
    """The binding constraint of a plan that failed with one head per sub-model, in words."""
    total = sum(it.size_bytes for it in items) / MIB
    if budget_mib is not None and total > budget_mib:
        return (
            f"the {len(items)} sub-models need {total:.1f} MiB together even at one head each; "
            f"the budget is {budget_mib:g} MiB"
        )
    max_mem = max(d.memory_mib for d in devices)
    max_gmacs = max(d.gmacs_per_s for d in devices)
    for it in sorted(items, key=lambda i: -i.size_bytes):
        need_mib, need_gmacs = it.size_bytes / MIB, rate_hz * it.macs / 1e9
        if need_mib > max_mem:
            return (
                f"sub-model {it.id} needs {need_mib:.1f} MiB; "
                f"the largest free device memory is {max_mem:.1f} MiB"
            )
        if need_gmacs > max_gmacs:
            return (
                f"sub-model {it.id} needs {it.macs / 1e9:.3f} GMAC per sample × {rate_hz:g} Hz = "
                f"{need_gmacs:.3f} GMAC/s; the fastest device gives {max_gmacs:g} GMAC/s"
            )
        if not any(d.memory_mib >= need_mib and d.gmacs_per_s >= need_gmacs for d in devices):
            return (
                f"sub-model {it.id} needs {need_mib:.1f} MiB and {need_gmacs:.3f} GMAC/s at "
                f"{rate_hz:g} Hz; no device has both"
            )
    mem = sum(d.memory_mib for d in devices)
    if total > mem:
        return f"the sub-models need {total:.1f} MiB together; the devices have {mem:.1f} MiB"
    need = rate_hz * sum(it.macs for it in items) / 1e9
    have = sum(d.gmacs_per_s for d in devices)
    if need > have:
        return (
            f"the sub-models need {need:.3f} GMAC/s together at {rate_hz:g} Hz; "
            f"the devices give {have:g} GMAC/s"
        )
    return (
        f"the {len(items)} sub-models ({total:.1f} MiB, {need:.3f} GMAC/s at {rate_hz:g} Hz) "
        f"cannot be packed into the {len(devices)} devices' memory and compute"
    )


def _assign(
    items: list[Item], devices: Sequence[Device], rate_hz: float, solver: Solver
) -> tuple[Assignment | None, str, str | None]:
    caps = [DeviceCapacity(d.id, d.memory_mib * MIB, d.gmacs_per_s * 1e9) for d in devices]
    if solver == "greedy":
        return assign_greedy(items, caps, rate_hz), "greedy", None
    if len(items) > EXACT_LIMIT or len(caps) > EXACT_LIMIT:
        note = (
            f"{len(items)} sub-models × {len(caps)} devices is beyond the exact solver's "
            f"{EXACT_LIMIT} × {EXACT_LIMIT}: greedy assignment used"
        )
        return assign_greedy(items, caps, rate_hz), "greedy", note
    found = assign_optimal(items, caps, rate_hz)
    if found is not None and not found.exact:
        note = "the exact search reached its time limit: best assignment found (≤ greedy) used"
        return found, "search-limit", note
    return found, "optimal", None


def make_plan(
    base: ViTShape,
    num_classes: int,
    groups: Sequence[Sequence[int]],
    devices: Sequence[Device] | None = None,
    budget_mib: float | None = None,
    rate_hz: float = 1.0,
    solver: Solver = "optimal",
) -> Plan:
    """Alg. 1 over the given class groups; raises PlanError when no head count fits."""
    if not (0 < rate_hz < math.inf):
        raise PlanError(f"the rate must be a positive number, got {rate_hz:g} Hz")
    if budget_mib is not None and not (0 < budget_mib < math.inf):
        raise PlanError(f"the memory budget must be a positive number, got {budget_mib:g} MiB")
    if devices is not None and not devices:
        raise PlanError("there are no devices to assign the sub-models to")
    n = len(groups)
    if n < 1 or sorted(c for g in groups for c in g) != list(range(num_classes)):
        raise PlanError(f"the class groups must partition the classes 0…{num_classes - 1}")
    ids = group_ids(n)
    outputs = [submodel_outputs(n, g) for g in groups]
    heads = [math.ceil(base.num_heads / n)] * n
    while True:
        stats = [vit_stats(base.with_heads(k), o) for k, o in zip(heads, outputs, strict=True)]
        items = [Item(i, s.size_bytes, s.macs) for i, s in zip(ids, stats, strict=True)]
        total = sum(s.size_bytes for s in stats)
        fits_budget = budget_mib is None or total <= budget_mib * MIB
        found: Assignment | None = None
        used: str = solver
        note: str | None = None
        if fits_budget and devices is not None:
            found, used, note = _assign(items, devices, rate_hz, solver)
        if fits_budget and (devices is None or found is not None):
            break
        largest = max(range(n), key=lambda j: (stats[j].size_bytes, -j))
        if heads[largest] == 1:
            raise PlanError(_explain(items, devices or [], rate_hz, budget_mib))
        heads[largest] -= 1

    subs = [submodel_plan(ids[j], groups[j], base, heads[j], outputs[j]) for j in range(n)]
    device_plans = None
    if devices is not None and found is not None:
        macs = {it.id: it.macs for it in items}
        device_plans = []
        for d in devices:
            mine = [s for s in subs if found.mapping[s.id] == d.id]
            device_plans.append(
                DevicePlan(
                    id=d.id,
                    memory_mib=d.memory_mib,
                    gmacs_per_s=d.gmacs_per_s,
                    submodels=[s.id for s in mine],
                    used_mib=sum(s.size_mib for s in mine),
                    latency_s=sum(macs[s.id] for s in mine) / (d.gmacs_per_s * 1e9),
                )
            )
    return Plan(
        arch=base.name,
        num_classes=num_classes,
        budget_mib=budget_mib,
        rate_hz=rate_hz,
        solver_used=used if devices is not None else "none",
        solver_note=note,
        submodels=subs,
        total_mib=total / MIB,
        devices=device_plans,
        assignment=dict(found.mapping) if found is not None else None,
        makespan_s=found.makespan_s if found is not None else None,
    )
