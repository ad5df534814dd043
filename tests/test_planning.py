"""Planning: class groups, Alg. 1 (heads under a budget), Alg. 3 (greedy) and the exact solver.

The expectations are derived independently of `modelgen.planning`: a plain re-implementation
of the issue's Alg. 1 and Alg. 3, brute-force enumeration of every assignment on small cases,
an exact dynamic programme over sub-model types on 16 × 16 cases, hand-worked examples, and
the paper's Appendix E case studies. Sizes come from `modelgen.sizing`, which
tests/test_sizing.py checks against timm.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from edvit.config import Device, DevicesFile, load_config
from edvit.config.recipe import Grouping
from modelgen.grouping import class_groups, contiguous_groups
from modelgen.planning import (
    DeviceCapacity,
    Item,
    Plan,
    PlanError,
    assign_greedy,
    assign_optimal,
    group_ids,
    make_plan,
)
from modelgen.planning.plan import Solver
from modelgen.sizing import count_macs, count_params
from modelgen.vit_shape import ViTShape, parse_arch

MIB = 2**20
REPO = Path(__file__).resolve().parent.parent
VIT_BASE = parse_arch("vit_base_patch16_224")
# Capacities come from YAML floats; a check this much over a limit is float noise, not a breach.
SLACK = 1e-9
# The solvers' own tolerance for "fits" (modelgen.planning.assign: exact integers vs floats).
FIT_TOL = 1e-12


# --- independent references -----------------------------------------------------------------


def fits(limit: float, used: float) -> bool:
    return used <= limit * (1 + FIT_TOL)


def ref_greedy(
    items: Sequence[Item], devices: Sequence[DeviceCapacity], rate_hz: float
) -> dict[str, str] | None:
    """Alg. 3 as the issue words it. Ties: equal-MACs sub-models keep their (larger first)
    size order then input order; equally free devices are taken in file order."""
    order = sorted(range(len(items)), key=lambda i: (-items[i].macs, -items[i].size_bytes, i))
    mem = [d.memory_bytes for d in devices]
    compute = [d.macs_per_s for d in devices]
    mapping: dict[str, str] = {}
    for i in order:
        it = items[i]
        need = rate_hz * it.macs
        able = [j for j in range(len(devices)) if fits(mem[j], it.size_bytes)]
        able = [j for j in able if fits(compute[j], need)]
        if not able:
            return None
        best = max(able, key=lambda j: (compute[j], -j))
        mem[best] -= it.size_bytes
        compute[best] -= need
        mapping[it.id] = devices[best].id
    return mapping


def feasible(
    m: dict[str, str], items: Sequence[Item], devices: Sequence[DeviceCapacity], rate: float
) -> bool:
    for d in devices:
        mine = [it for it in items if m[it.id] == d.id]
        if not fits(d.memory_bytes, sum(it.size_bytes for it in mine)):
            return False
        if not fits(d.macs_per_s, rate * sum(it.macs for it in mine)):
            return False
    return True


def makespan(m: dict[str, str], items: Sequence[Item], devices: Sequence[DeviceCapacity]) -> float:
    return max(
        (sum(it.macs for it in items if m[it.id] == d.id) / d.macs_per_s for d in devices),
        default=0.0,
    )


def brute_force(
    items: Sequence[Item], devices: Sequence[DeviceCapacity], rate: float
) -> float | None:
    """The smallest makespan over every one of the |D|^|I| assignments, None if none fits."""
    best = None
    for choice in itertools.product(range(len(devices)), repeat=len(items)):
        m = {it.id: devices[j].id for it, j in zip(items, choice, strict=True)}
        if feasible(m, items, devices, rate):
            span = makespan(m, items, devices)
            best = span if best is None else min(best, span)
    return best


def any_assignment(items: Sequence[Item], devices: Sequence[DeviceCapacity], rate: float) -> bool:
    """Plain backtracking: does any assignment fit memory and rate?"""
    mem = [d.memory_bytes for d in devices]
    mac = [d.macs_per_s / rate for d in devices]
    used = [0] * len(devices)
    load = [0] * len(devices)

    def place(i: int) -> bool:
        if i == len(items):
            return True
        for j in range(len(devices)):
            if fits(mem[j], used[j] + items[i].size_bytes) and fits(
                mac[j], load[j] + items[i].macs
            ):
                used[j] += items[i].size_bytes
                load[j] += items[i].macs
                if place(i + 1):
                    return True
                used[j] -= items[i].size_bytes
                load[j] -= items[i].macs
        return False

    return place(0)


def dp_by_types(
    items: Sequence[Item], devices: Sequence[DeviceCapacity], rate: float
) -> float | None:
    """Exact minimum makespan when sub-models come in a few (size, MACs) types: a dynamic
    programme over devices whose state is how many of each type are placed so far."""
    types = Counter((it.size_bytes, it.macs) for it in items)
    keys = list(types)
    counts = tuple(types[k] for k in keys)
    states: dict[tuple[int, ...], float] = {(0,) * len(keys): 0.0}
    for d in devices:
        options = []
        for v in itertools.product(*(range(c + 1) for c in counts)):
            size = sum(n * k[0] for n, k in zip(v, keys, strict=True))
            macs = sum(n * k[1] for n, k in zip(v, keys, strict=True))
            if fits(d.memory_bytes, size) and fits(d.macs_per_s, rate * macs):
                options.append((v, macs / d.macs_per_s))
        nxt: dict[tuple[int, ...], float] = {}
        for s, span in states.items():
            for v, lat in options:
                t = tuple(a + b for a, b in zip(s, v, strict=True))
                if all(a <= c for a, c in zip(t, counts, strict=True)):
                    val = max(span, lat)
                    if val < nxt.get(t, math.inf):
                        nxt[t] = val
        states = nxt
    return states.get(counts)


def outputs_of(groups: Sequence[Sequence[int]]) -> list[int]:
    """Group classes plus one "others" output (DESIGN.md); a single group has no "others"."""
    return [len(g) + (1 if len(groups) > 1 else 0) for g in groups]


def items_for(base: ViTShape, heads: Sequence[int], outputs: Sequence[int]) -> list[Item]:
    out = []
    for i, (k, o) in enumerate(zip(heads, outputs, strict=True)):
        shape = base.with_heads(k)
        out.append(Item(f"g{i}", count_params(shape, o) * 4, count_macs(shape, o)[0]))
    return out


def caps_of(devices: Sequence[Device]) -> list[DeviceCapacity]:
    return [DeviceCapacity(d.id, d.memory_mib * MIB, d.gmacs_per_s * 1e9) for d in devices]


def ref_heads(
    base: ViTShape,
    groups: Sequence[Sequence[int]],
    devices: Sequence[Device] | None,
    budget_mib: float | None,
    rate: float,
    solver: str,
) -> list[int] | None:
    """Alg. 1 as the issue words it: start at ceil(h/N); while over budget or unassignable,
    the largest sub-model (ties: lowest id) loses a head; None when it would reach zero."""
    n = len(groups)
    outputs = outputs_of(groups)
    heads = [math.ceil(base.num_heads / n)] * n
    while True:
        items = items_for(base, heads, outputs)
        ok = budget_mib is None or sum(it.size_bytes for it in items) <= budget_mib * MIB
        if ok and devices is not None:
            caps = caps_of(devices)
            if solver == "greedy":
                ok = ref_greedy(items, caps, rate) is not None
            else:
                ok = any_assignment(items, caps, rate)
        if ok:
            return heads
        largest = max(range(n), key=lambda j: (items[j].size_bytes, -j))
        if heads[largest] == 1:
            return None
        heads[largest] -= 1


def check_plan(
    plan: Plan,
    base: ViTShape,
    groups: Sequence[Sequence[int]],
    devices: Sequence[Device] | None,
    budget_mib: float | None,
    rate: float,
) -> None:
    """Every invariant a plan must satisfy, checked from exact integer sizes and MACs."""
    n = len(groups)
    assert [s.id for s in plan.submodels] == [f"g{i}" for i in range(n)]
    assert [s.classes for s in plan.submodels] == [list(g) for g in groups]
    items = items_for(base, [s.heads for s in plan.submodels], outputs_of(groups))
    by_id = {it.id: it for it in items}
    for s, it in zip(plan.submodels, items, strict=True):
        assert 1 <= s.heads <= math.ceil(base.num_heads / n)
        assert s.embed_dim == base.head_dim * s.heads
        assert s.outputs == outputs_of(groups)[int(s.id[1:])]
        assert s.params * 4 == it.size_bytes
        assert s.size_mib == pytest.approx(it.size_bytes / MIB, rel=1e-12)
        assert s.gmacs == pytest.approx(it.macs / 1e9, rel=1e-12)
    total = sum(it.size_bytes for it in items)
    assert plan.total_mib == pytest.approx(total / MIB, rel=1e-12)
    if budget_mib is not None:
        assert total <= budget_mib * MIB * (1 + SLACK)
    if devices is None:
        assert plan.devices is None
        assert plan.assignment is None
        assert plan.makespan_s is None
        assert plan.solver_used == "none"
        return
    assert plan.assignment is not None
    assert plan.devices is not None
    assert plan.makespan_s is not None
    assert set(plan.assignment) == set(by_id)
    assert [d.id for d in plan.devices] == [d.id for d in devices]
    latencies = []
    for dp, dev in zip(plan.devices, devices, strict=True):
        mine = [by_id[sid] for sid in dp.submodels]
        assert dp.submodels == [s for s in by_id if plan.assignment[s] == dev.id]
        size = sum(it.size_bytes for it in mine)
        macs = sum(it.macs for it in mine)
        assert size <= dev.memory_mib * MIB * (1 + SLACK), "device memory exceeded"
        assert rate * macs <= dev.gmacs_per_s * 1e9 * (1 + SLACK), "device rate exceeded"
        assert dp.used_mib == pytest.approx(size / MIB, rel=1e-9, abs=1e-12)
        assert dp.latency_s == pytest.approx(macs / (dev.gmacs_per_s * 1e9), rel=1e-9, abs=1e-15)
        assert (dp.memory_mib, dp.gmacs_per_s) == (dev.memory_mib, dev.gmacs_per_s)
        latencies.append(dp.latency_s)
    assert plan.makespan_s == pytest.approx(max(latencies), rel=1e-9)


# --- groups ---------------------------------------------------------------------------------


@given(num_classes=st.integers(1, 300), data=st.data())
def test_groups_partition_and_balance(num_classes: int, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, num_classes))
    groups = contiguous_groups(num_classes, n)
    assert len(groups) == n
    assert [c for g in groups for c in g] == list(range(num_classes))  # contiguous, in order
    sizes = [len(g) for g in groups]
    assert min(sizes) >= 1
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the paper: the first C mod N one longer
    assert group_ids(n) == [f"g{i}" for i in range(n)]


@pytest.mark.parametrize(("num_classes", "n"), [(3, 4), (5, 0), (5, -1), (0, 1)])
def test_groups_reject_impossible_counts(num_classes: int, n: int) -> None:
    with pytest.raises(ValueError, match="group"):
        contiguous_groups(num_classes, n)


def test_confusion_grouping_keeps_confused_classes_together() -> None:
    """Six classes, each confused only with its partner three ids away (0↔3, 1↔4, 2↔5):
    contiguous runs split every pair, confusion grouping keeps each pair in one group."""
    labels = [c for c in range(6) for _ in range(4)]
    probs = [
        [0.8 if j == c else 0.2 if j == (c + 3) % 6 else 0.0 for j in range(6)] for c in labels
    ]
    for method, want, kept in [
        (Grouping.contiguous, [[0, 1], [2, 3], [4, 5]], 0.0),
        (Grouping.confusion, [[0, 3], [1, 4], [2, 5]], 1.2),
    ]:
        groups, info = class_groups(
            np.array(probs), np.array(labels), num_classes=6, n=3, method=method
        )
        assert groups == want
        assert info["method"] == method.value
        assert info["within_affinity"][method.value] == pytest.approx(kept)


# --- Alg. 3 (greedy) by hand ----------------------------------------------------------------


def test_greedy_takes_device_with_most_remaining_compute() -> None:
    # A: 10 MAC/s, B: 8. Heaviest first: X(5) → A (10 > 8), A has 5 left; Y(4) → B (8 > 5),
    # B has 4 left; Z(3) → A (5 > 4).
    items = [Item("Y", 1, 4), Item("X", 1, 5), Item("Z", 1, 3)]
    devices = [DeviceCapacity("A", 100, 10), DeviceCapacity("B", 100, 8)]
    got = assign_greedy(items, devices, 1.0)
    assert got is not None
    assert got.mapping == {"X": "A", "Y": "B", "Z": "A"}
    assert got.makespan_s == pytest.approx(max(8 / 10, 4 / 8))


def test_greedy_device_too_small_for_one_stays_open_for_the_next() -> None:
    # X (heaviest) does not fit A's memory: A is passed over for X, not dropped. The paper's
    # literal "D ← D − j" would drop A, leave Y nowhere to go (B is full) and fail.
    items = [Item("X", 20, 10), Item("Y", 5, 5)]
    devices = [DeviceCapacity("A", 10, 100), DeviceCapacity("B", 20, 50)]
    got = assign_greedy(items, devices, 1.0)
    assert got is not None
    assert got.mapping == {"X": "B", "Y": "A"}
    # The rate works the same way: A is too slow for X at 2 Hz, yet takes Y.
    devices = [DeviceCapacity("A", 100, 15), DeviceCapacity("B", 100, 20)]
    got = assign_greedy([Item("X", 1, 10), Item("Y", 1, 4)], devices, 2.0)
    assert got is not None
    assert got.mapping == {"X": "B", "Y": "A"}


def test_greedy_and_optimal_none_when_nothing_fits() -> None:
    items = [Item("X", 20, 10)]
    devices = [DeviceCapacity("A", 10, 100)]
    assert assign_greedy(items, devices, 1.0) is None
    assert assign_optimal(items, devices, 1.0) is None


def test_optimal_beats_greedy_where_greedy_is_poor() -> None:
    # Greedy puts 3 and 3 on the two equal devices, then 2, 2, 2 → loads 7 / 5 (makespan 7);
    # the optimum is 3+3 / 2+2+2 = 6 / 6.
    items = [Item(f"i{k}", 1, m) for k, m in enumerate([3, 3, 2, 2, 2])]
    devices = [DeviceCapacity("A", 100, 1), DeviceCapacity("B", 100, 1)]
    greedy = assign_greedy(items, devices, 1e-9)
    best = assign_optimal(items, devices, 1e-9)
    assert greedy is not None
    assert best is not None
    assert greedy.makespan_s == 7
    assert best.makespan_s == 6
    assert best.exact


# --- random assignments: greedy = Alg. 3, optimal = brute force ------------------------------


@st.composite
def small_instances(draw: st.DrawFn) -> tuple[list[Item], list[DeviceCapacity], float]:
    """≤ 6 sub-models × ≤ 4 devices in exact binary arithmetic (ties are real ties)."""
    n_items = draw(st.integers(1, 6))
    n_dev = draw(st.integers(1, 4))
    items = [
        Item(f"s{i}", draw(st.integers(1, 12)), draw(st.integers(1, 12))) for i in range(n_items)
    ]
    devices = [
        DeviceCapacity(f"d{j}", draw(st.integers(1, 30)), draw(st.integers(1, 40)))
        for j in range(n_dev)
    ]
    rate = draw(st.sampled_from([0.25, 0.5, 1.0, 2.0]))
    return items, devices, rate


@settings(max_examples=300)
@given(small_instances())
def test_greedy_is_alg_3(inst: tuple[list[Item], list[DeviceCapacity], float]) -> None:
    items, devices, rate = inst
    got = assign_greedy(items, devices, rate)
    want = ref_greedy(items, devices, rate)
    assert (got.mapping if got else None) == want
    if got is not None:
        assert feasible(got.mapping, items, devices, rate)
        assert got.makespan_s == pytest.approx(makespan(got.mapping, items, devices))


@settings(max_examples=300)
@given(small_instances())
def test_optimal_equals_brute_force(inst: tuple[list[Item], list[DeviceCapacity], float]) -> None:
    items, devices, rate = inst
    want = brute_force(items, devices, rate)
    got = assign_optimal(items, devices, rate)
    if want is None:
        assert got is None
        return
    assert got is not None
    assert got.exact
    assert set(got.mapping) == {it.id for it in items}
    assert feasible(got.mapping, items, devices, rate)
    assert got.makespan_s == pytest.approx(makespan(got.mapping, items, devices), rel=1e-12)
    assert got.makespan_s == pytest.approx(want, rel=1e-12)
    greedy = assign_greedy(items, devices, rate)
    if greedy is not None:
        assert got.makespan_s <= greedy.makespan_s * (1 + 1e-12)


@settings(max_examples=60)
@given(
    st.lists(st.tuples(st.integers(1, 10**7), st.integers(1, 10**9)), min_size=1, max_size=10),
    st.lists(st.tuples(st.floats(1e6, 5e7), st.floats(1e8, 1e10)), min_size=1, max_size=8),
    st.floats(0.1, 4.0),
)
def test_optimal_never_worse_than_greedy(
    its: list[tuple[int, int]], devs: list[tuple[float, float]], rate: float
) -> None:
    items = [Item(f"s{i}", s, m) for i, (s, m) in enumerate(its)]
    devices = [DeviceCapacity(f"d{j}", mem, sp) for j, (mem, sp) in enumerate(devs)]
    greedy = assign_greedy(items, devices, rate)
    # Even when the time limit stops the search, the answer is never worse than greedy.
    best = assign_optimal(items, devices, rate, time_limit_s=2.0)
    if greedy is not None:
        assert best is not None
        assert best.makespan_s <= greedy.makespan_s * (1 + 1e-12)
    if best is not None:
        assert feasible(best.mapping, items, devices, rate)


# --- make_plan over random architectures and device sets -------------------------------------


@dataclass(frozen=True)
class PlanCase:
    base: ViTShape
    num_classes: int
    groups: list[list[int]]
    devices: list[Device] | None
    budget_mib: float | None
    rate_hz: float

    def plan(self, solver: Solver) -> Plan:
        return make_plan(
            self.base,
            self.num_classes,
            self.groups,
            devices=self.devices,
            budget_mib=self.budget_mib,
            rate_hz=self.rate_hz,
            solver=solver,
        )


@st.composite
def plan_cases(draw: st.DrawFn, max_n: int = 6, max_devices: int = 4) -> PlanCase:
    """A random ViT, class count, N, budget, rate and device set scaled to its sub-models."""
    patch = draw(st.integers(1, 4))
    heads = draw(st.integers(1, 12))
    base = ViTShape(
        img_size=(patch * draw(st.integers(1, 4)), patch * draw(st.integers(1, 4))),
        patch_size=patch,
        in_chans=draw(st.integers(1, 3)),
        embed_dim=heads * draw(st.integers(1, 24)),
        depth=draw(st.integers(1, 6)),
        num_heads=heads,
        mlp_ratio=draw(st.sampled_from([2.0, 4.0])),
    )
    n = draw(st.integers(1, max_n))
    num_classes = draw(st.integers(n, 3 * n + 2))
    groups = contiguous_groups(num_classes, n)
    # Scale limits to a mid-sized sub-model so that budgets, memory and rate all bind sometimes.
    mid = base.with_heads(max(1, math.ceil(heads / n) // 2 + 1))
    unit_mib = count_params(mid, 3) * 4 / MIB
    unit_gmacs = count_macs(mid, 3)[0] / 1e9
    factor = st.floats(0.2, 4.0)
    devices = None
    if draw(st.integers(0, 3)):  # devices in three cases out of four
        devices = [
            Device(
                id=f"dev-{j}",
                memory_mib=unit_mib * draw(factor),
                gmacs_per_s=unit_gmacs * draw(factor),
            )
            for j in range(draw(st.integers(1, max_devices)))
        ]
    budget = draw(st.none() | st.floats(0.5, 2.0 * n).map(lambda f: f * unit_mib))
    rate = draw(st.sampled_from([0.5, 1.0, 2.0]))
    return PlanCase(base, num_classes, groups, devices, budget, rate)


@settings(max_examples=200)
@given(case=plan_cases(), solver=st.sampled_from(["greedy", "optimal"]))
def test_plan_properties(case: PlanCase, solver: Solver) -> None:
    c = case
    want = ref_heads(c.base, c.groups, c.devices, c.budget_mib, c.rate_hz, solver)
    plan, error = None, ""
    try:
        plan = c.plan(solver)
    except PlanError as exc:
        error = str(exc)
    event("infeasible" if plan is None else "planned")
    if plan is None:
        assert want is None, f"a plan exists (heads {want}) but make_plan said: {error}"
        assert "MiB" in error or "GMAC" in error
        return
    start = math.ceil(c.base.num_heads / len(c.groups))
    event("heads reduced" if min(want) < start else "heads kept")

    assert want is not None, "make_plan found a plan the reference Alg. 1 did not"
    assert [s.heads for s in plan.submodels] == want
    check_plan(plan, c.base, c.groups, c.devices, c.budget_mib, c.rate_hz)
    if c.devices is None:
        return
    event(f"{len(c.devices)} devices, {sum(bool(d.submodels) for d in plan.devices or [])} used")
    assert plan.solver_used == solver
    items = items_for(c.base, want, outputs_of(c.groups))
    if solver == "greedy":
        assert plan.assignment == ref_greedy(items, caps_of(c.devices), c.rate_hz)
    else:
        best = brute_force(items, caps_of(c.devices), c.rate_hz)
        assert plan.makespan_s == pytest.approx(best, rel=1e-9)


@settings(max_examples=100)
@given(case=plan_cases(max_n=8, max_devices=6))
def test_optimal_plan_keeps_at_least_greedy_heads(case: PlanCase) -> None:
    plans: dict[str, Plan | None] = {}
    for solver in ("greedy", "optimal"):
        try:
            plans[solver] = case.plan(solver)
        except PlanError:
            plans[solver] = None
    greedy, best = plans["greedy"], plans["optimal"]
    if greedy is None:
        return
    # Optimal finds an assignment whenever greedy does, so Alg. 1 stops no later.
    assert best is not None
    gh = [s.heads for s in greedy.submodels]
    bh = [s.heads for s in best.submodels]
    assert all(b >= g for b, g in zip(bh, gh, strict=True))
    if gh == bh and greedy.makespan_s is not None:
        assert best.makespan_s is not None
        assert best.makespan_s <= greedy.makespan_s * (1 + 1e-12)


# --- the paper ------------------------------------------------------------------------------


def example_devices() -> list[Device]:
    return load_config(REPO / "config" / "devices.example.yaml", DevicesFile).devices


def test_appendix_e3_heterogeneous_devices() -> None:
    """ViT-Base, 10 classes, budget 100 MB, one 30 MB / 1.6 GFLOP/s device and nine
    10 MB / 0.5 GFLOP/s ones: ten 2-head sub-models, 3 on the big device, 7 on single
    small ones, 2 idle (Alg. 3)."""
    devices = example_devices()
    assert len(devices) == 10
    plan = make_plan(
        VIT_BASE, 10, contiguous_groups(10, 10), devices, budget_mib=100, solver="greedy"
    )
    check_plan(plan, VIT_BASE, contiguous_groups(10, 10), devices, 100, 1.0)
    assert [s.heads for s in plan.submodels] == [2] * 10
    assert plan.total_mib <= 100
    assert plan.devices is not None
    counts = {d.id: len(d.submodels) for d in plan.devices}
    big = max(devices, key=lambda d: d.gmacs_per_s).id
    assert counts[big] == 3
    assert sorted(c for dev, c in counts.items() if dev != big) == [0, 0] + [1] * 7
    # The exact solver cannot beat it: every small device that runs one sub-model takes
    # gmacs / 0.5 s, and the big device cannot hold the other seven.
    best = make_plan(VIT_BASE, 10, contiguous_groups(10, 10), devices, budget_mib=100)
    assert best.solver_used == "optimal"
    assert [s.heads for s in best.submodels] == [2] * 10
    assert best.makespan_s == pytest.approx(best.submodels[0].gmacs / 0.5)
    assert plan.makespan_s == pytest.approx(best.makespan_s)


def test_appendix_e2_heterogeneous_submodels() -> None:
    """ViT-Base on three devices with a 100 MB budget: two 4-head sub-models (37.16 MB) and
    one 3-head (21.13 MB), 95.45 MB together."""
    plan = make_plan(VIT_BASE, 10, contiguous_groups(10, 3), budget_mib=100)
    assert sorted(s.heads for s in plan.submodels) == [3, 4, 4]
    assert plan.total_mib == pytest.approx(95.45, rel=0.01)
    # The one that lost a head is the largest at the start: the 4-class group (5 outputs).
    assert plan.submodels[0].classes == [0, 1, 2, 3]
    assert plan.submodels[0].heads == 3


@pytest.mark.parametrize(
    ("n", "heads", "gmacs"), [(2, 6, 4.25), (3, 4, 1.90), (4, 3, 1.08), (10, 2, 0.48)]
)
def test_table_4_heads_per_device_count(n: int, heads: int, gmacs: float) -> None:
    plan = make_plan(VIT_BASE, 10, contiguous_groups(10, n))
    assert [s.heads for s in plan.submodels] == [heads] * n == [math.ceil(12 / n)] * n
    for s in plan.submodels:
        assert s.gmacs == pytest.approx(gmacs, rel=0.015)


# --- infeasible inputs ----------------------------------------------------------------------


def one_head_mib(outputs: int) -> float:
    shape = VIT_BASE.with_heads(1)
    return count_params(shape, outputs) * 4 / MIB


def test_error_names_memory_binding() -> None:
    devices = [Device(id=f"d{j}", memory_mib=2.0, gmacs_per_s=10.0) for j in range(4)]
    groups = contiguous_groups(10, 4)  # 3, 3, 2, 2 classes: g0 and g1 are the largest
    with pytest.raises(PlanError) as err:
        make_plan(VIT_BASE, 10, groups, devices)
    need = one_head_mib(4)
    assert need > 2.0
    assert str(err.value) == (
        f"sub-model g0 needs {need:.1f} MiB; the largest free device memory is 2.0 MiB"
    )


def test_error_names_rate_binding() -> None:
    devices = [Device(id="slow", memory_mib=1000, gmacs_per_s=0.05)]
    with pytest.raises(PlanError) as err:
        make_plan(VIT_BASE, 10, [list(range(10))], devices, rate_hz=2)
    msg = str(err.value)
    assert "g0" in msg
    assert "GMAC" in msg
    assert "0.05" in msg
    assert "2 Hz" in msg


def test_error_names_budget_binding() -> None:
    with pytest.raises(PlanError) as err:
        make_plan(VIT_BASE, 10, contiguous_groups(10, 2), budget_mib=1)
    msg = str(err.value)
    assert "budget" in msg
    assert "1 MiB" in msg
    assert f"{(one_head_mib(6) * 2):.1f} MiB" in msg


def test_error_names_total_memory_binding() -> None:
    # Each 1-head sub-model fits one device, but four of them do not fit in two devices.
    room = one_head_mib(2) * 1.5
    devices = [Device(id=f"d{j}", memory_mib=room, gmacs_per_s=100.0) for j in range(2)]
    with pytest.raises(PlanError) as err:
        make_plan(VIT_BASE, 4, contiguous_groups(4, 4), devices)
    assert "together" in str(err.value)
    assert "MiB" in str(err.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate_hz": 0.0},
        {"rate_hz": -1.0},
        {"rate_hz": math.nan},
        {"rate_hz": math.inf},
        {"budget_mib": 0.0},
        {"budget_mib": -5.0},
        {"budget_mib": math.nan},
        {"budget_mib": math.inf},
        {"devices": []},
    ],
)
def test_bad_requests_raise_plan_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(PlanError):
        make_plan(VIT_BASE, 10, contiguous_groups(10, 2), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("groups", [[[0, 1], [2]], [[0, 1], [1, 2, 3]], [], [[0, 1, 2], [3, 4]]])
def test_groups_must_partition(groups: list[list[int]]) -> None:
    with pytest.raises(PlanError, match="partition"):
        make_plan(VIT_BASE, 4, groups)


# --- 16 sub-models × 16 devices, exactly ----------------------------------------------------

SEEDS_16 = list(range(12))


def random_devices_16(seed: int) -> tuple[list[Device], int, float | None, float]:
    rng = random.Random(seed)
    devices = [
        Device(
            id=f"d{i}",
            memory_mib=rng.choice([8, 10, 12, 16, 20, 30, 64]),
            gmacs_per_s=round(rng.uniform(0.2, 5.0), 2),
        )
        for i in range(16)
    ]
    return (
        devices,
        rng.randint(16, 100),
        rng.choice([None, 400.0, 1000.0]),
        rng.choice([0.1, 0.5, 1.0]),
    )


@pytest.mark.parametrize("seed", SEEDS_16)
def test_16_by_16_solved_exactly(seed: int) -> None:
    devices, num_classes, budget, rate = random_devices_16(seed)
    base = parse_arch("vit_large_patch16_224")  # 16 heads: one head each
    groups = contiguous_groups(num_classes, 16)
    start = time.perf_counter()
    plan = make_plan(base, num_classes, groups, devices, budget_mib=budget, rate_hz=rate)
    elapsed = time.perf_counter() - start
    assert plan.solver_used == "optimal", plan.solver_note
    assert elapsed < 5.0, f"seed {seed}: {elapsed:.1f} s"
    check_plan(plan, base, groups, devices, budget, rate)
    items = items_for(base, [s.heads for s in plan.submodels], outputs_of(groups))
    want = dp_by_types(items, caps_of(devices), rate)
    assert want is not None
    assert plan.makespan_s == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_16_by_16_mixed_heads_solved_exactly(seed: int) -> None:
    """A 32-head custom ViT: 2 heads each to start, a budget that forces some down to one."""
    rng = random.Random(1000 + seed)
    base = ViTShape(
        img_size=(32, 32), patch_size=4, in_chans=3, embed_dim=32 * 32, depth=6, num_heads=32
    )
    one, two = (count_params(base.with_heads(k), 3) * 4 / MIB for k in (1, 2))
    budget = (one + two) * 8 + rng.uniform(-0.4, 0.4) * (two - one) * 4
    devices = [
        Device(
            id=f"d{i}",
            memory_mib=rng.choice([1.0, 1.5, 2.0, 3.0]) * two,
            gmacs_per_s=rng.uniform(0.5, 5.0) * count_macs(base.with_heads(2), 3)[0] / 1e9,
        )
        for i in range(16)
    ]
    groups = contiguous_groups(32, 16)  # two classes each: sub-models differ only by heads
    start = time.perf_counter()
    plan = make_plan(base, 32, groups, devices, budget_mib=budget)
    elapsed = time.perf_counter() - start
    assert plan.solver_used == "optimal", plan.solver_note
    assert elapsed < 5.0, f"seed {seed}: {elapsed:.1f} s"
    assert {s.heads for s in plan.submodels} == {1, 2}
    check_plan(plan, base, groups, devices, budget, 1.0)
    items = items_for(base, [s.heads for s in plan.submodels], outputs_of(groups))
    want = dp_by_types(items, caps_of(devices), 1.0)
    assert want is not None
    assert plan.makespan_s == pytest.approx(want, rel=1e-9)


def test_beyond_16_falls_back_to_greedy_and_says_so() -> None:
    devices = [Device(id=f"d{i}", memory_mib=100, gmacs_per_s=1.0 + i % 3) for i in range(17)]
    plan = make_plan(VIT_BASE, 17, contiguous_groups(17, 17), devices)
    assert plan.solver_used == "greedy"
    assert plan.solver_note is not None
    assert "17" in plan.solver_note
    items = items_for(
        VIT_BASE, [s.heads for s in plan.submodels], outputs_of(contiguous_groups(17, 17))
    )
    assert plan.assignment == ref_greedy(items, caps_of(devices), 1.0)
