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
from modelgen.planning.groups import group_ids
from modelgen.sizing import BYTES_PER_PARAM, MIB, count_macs, count_params
from modelgen.vit_shape import ViTShape

Solver = Literal["greedy", "optimal"]
EXACT_LIMIT = 16  # the exact solver runs for at most this many sub-models and devices


class PlanError(Exception):
    """No plan satisfies the constraints; the message names the binding one."""


def submodel_outputs(num_groups: int, classes: Sequence[int]) -> int:
    """A sub-model predicts its group's classes plus one "others" output (none when N = 1)."""
    return len(classes) + (1 if num_groups > 1 else 0)


def _size(base: ViTShape, heads: int, outputs: int) -> tuple[int, int]:
    """(bytes, MACs) of the sub-model with `heads` heads."""
    shape = base.with_heads(heads)
    return count_params(shape, outputs) * BYTES_PER_PARAM, count_macs(shape, outputs)[0]


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
        sizes = [_size(base, k, o) for k, o in zip(heads, outputs, strict=True)]
        items = [Item(i, b, m) for i, (b, m) in zip(ids, sizes, strict=True)]
        total = sum(b for b, _ in sizes)
        fits_budget = budget_mib is None or total <= budget_mib * MIB
        found: Assignment | None = None
        used: str = solver
        note: str | None = None
        if fits_budget and devices is not None:
            found, used, note = _assign(items, devices, rate_hz, solver)
        if fits_budget and (devices is None or found is not None):
            break
        largest = max(range(n), key=lambda j: (sizes[j][0], -j))
        if heads[largest] == 1:
            raise PlanError(_explain(items, devices or [], rate_hz, budget_mib))
        heads[largest] -= 1

    subs = [
        SubmodelPlan(
            id=ids[j],
            classes=list(groups[j]),
            heads=heads[j],
            embed_dim=base.head_dim * heads[j],
            outputs=outputs[j],
            params=sizes[j][0] // BYTES_PER_PARAM,
            size_mib=sizes[j][0] / MIB,
            gmacs=sizes[j][1] / 1e9,
        )
        for j in range(n)
    ]
    device_plans = None
    if devices is not None and found is not None:
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
                    latency_s=sum(sizes[ids.index(s.id)][1] for s in mine) / (d.gmacs_per_s * 1e9),
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
