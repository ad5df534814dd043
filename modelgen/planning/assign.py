"""Assigning sub-models to devices under memory and rate limits (the paper's Eq. 1, Alg. 3).

A device's latency is the sum of its sub-models' MACs over its MAC/s; at a sampling rate of
R Hz a device can host sub-models while R·ΣMACs ≤ MAC/s (E_i ≥ L·e_j). `assign_greedy` is
Alg. 3; `assign_optimal` minimises the largest latency (makespan) exactly by branch and bound.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_REL_TOL = 1e-12  # MACs are exact integers; capacities come from floats in YAML


@dataclass(frozen=True)
class Item:
    """A sub-model as the assigner sees it."""

    id: str
    size_bytes: int
    macs: int


@dataclass(frozen=True)
class DeviceCapacity:
    """A device as the assigner sees it."""

    id: str
    memory_bytes: float
    macs_per_s: float


@dataclass(frozen=True)
class Assignment:
    """Which device hosts each sub-model; `exact` when proven to minimise the makespan."""

    mapping: dict[str, str]
    makespan_s: float
    exact: bool


def _fits(limit: float, used: float) -> bool:
    return used <= limit * (1 + _REL_TOL)


def _makespan(items: Sequence[Item], devices: Sequence[DeviceCapacity], m: dict[str, str]) -> float:
    loads = dict.fromkeys((d.id for d in devices), 0)
    for it in items:
        loads[m[it.id]] += it.macs
    return max((loads[d.id] / d.macs_per_s for d in devices), default=0.0)


def _prefix_sums(values: Iterable[int]) -> list[int]:
    """[0, smallest, smallest two, …]: sums of the k smallest values."""
    return list(itertools.accumulate(sorted(values), initial=0))


def _by_macs(items: Sequence[Item]) -> list[Item]:
    return sorted(items, key=lambda it: (-it.macs, -it.size_bytes))


def assign_greedy(
    items: Sequence[Item], devices: Sequence[DeviceCapacity], rate_hz: float
) -> Assignment | None:
    """Alg. 3: heaviest sub-model first, each to the device with the most remaining compute
    that can still hold it; a device too small for one sub-model stays open for the next."""
    mem = [d.memory_bytes for d in devices]
    compute = [d.macs_per_s for d in devices]  # remaining MAC/s at the given rate
    mapping: dict[str, str] = {}
    for it in _by_macs(items):
        need = rate_hz * it.macs
        best = -1
        for j in range(len(devices)):
            if _fits(mem[j], it.size_bytes) and _fits(compute[j], need):  # noqa: SIM102
                if best < 0 or compute[j] > compute[best]:
                    best = j
        if best < 0:
            return None
        mem[best] -= it.size_bytes
        compute[best] -= need
        mapping[it.id] = devices[best].id
    return Assignment(mapping, _makespan(items, devices, mapping), exact=False)


class _Search:
    """Depth-first branch and bound over items (heaviest first) and devices."""

    def __init__(
        self,
        items: Sequence[Item],
        devices: Sequence[DeviceCapacity],
        rate_hz: float,
        deadline: float,
    ) -> None:
        self.items = _by_macs(items)
        self.devices = list(devices)
        self.speed = [d.macs_per_s for d in devices]
        self.mem_cap = [d.memory_bytes for d in devices]
        self.macs_cap = [d.macs_per_s / rate_hz for d in devices]
        # Devices alike in every limit are interchangeable: states are compared up to them.
        sig = [(d.memory_bytes, d.macs_per_s) for d in devices]
        self.twins = [[k for k in range(len(devices)) if sig[k] == sig[j]] for j in range(len(sig))]
        self.total_speed = sum(self.speed)
        self.suffix_macs = [
            sum(it.macs for it in self.items[i:]) for i in range(len(self.items) + 1)
        ]
        # Sums of the k smallest MACs / sizes among items[i:], k = 0 … n-i (for the count bound).
        self.small_macs = [
            _prefix_sums(it.macs for it in self.items[i:]) for i in range(len(self.items) + 1)
        ]
        self.small_sizes = [
            _prefix_sums(it.size_bytes for it in self.items[i:]) for i in range(len(self.items) + 1)
        ]
        self.load = [0] * len(devices)
        self.used = [0] * len(devices)
        self.choice = [0] * len(self.items)
        self.best = math.inf
        self.best_choice: list[int] | None = None
        self.deadline = deadline
        self.timed_out = False
        self.nodes = 0
        self.seen: set[tuple[int, tuple[tuple[int, int], ...]]] = set()

    def _state(self, i: int) -> tuple[int, tuple[tuple[int, int], ...]]:
        # Canonical up to twin devices: sort each twin class's (load, used) pairs.
        classes: dict[int, list[tuple[int, int]]] = {}
        for j in range(len(self.devices)):
            classes.setdefault(self.twins[j][0], []).append((self.load[j], self.used[j]))
        return i, tuple(p for key in sorted(classes) for p in sorted(classes[key]))

    def _room_for_rest(self, i: int) -> bool:
        """Whether the devices may still take all n - i remaining items: device j takes at most
        the largest k for which even the k smallest of them fit its memory and rate and keep
        its latency below the incumbent."""
        need = len(self.items) - i
        macs, sizes = self.small_macs[i], self.small_sizes[i]
        room = 0
        for j in range(len(self.devices)):
            k = 0
            while (
                k < need
                and _fits(self.mem_cap[j], self.used[j] + sizes[k + 1])
                and _fits(self.macs_cap[j], self.load[j] + macs[k + 1])
                and (self.load[j] + macs[k + 1]) / self.speed[j] < self.best
            ):
                k += 1
            room += k
            if room >= need:
                return True
        return False

    def run(self, incumbent: float, incumbent_choice: list[int] | None) -> None:
        self.best, self.best_choice = incumbent, incumbent_choice
        self._dfs(0, 0.0)

    def _dfs(self, i: int, cur: float) -> None:
        if self.timed_out:
            return
        self.nodes += 1
        if self.nodes % 2048 == 0 and time.monotonic() > self.deadline:
            self.timed_out = True
            return
        if i == len(self.items):
            if cur < self.best:
                self.best, self.best_choice = cur, list(self.choice)
            return
        done = sum(self.load)
        if (done + self.suffix_macs[i]) / self.total_speed >= self.best:
            return  # even perfectly spread work cannot beat the incumbent
        if not self._room_for_rest(i):
            return  # the devices cannot take that many more sub-models under the incumbent
        state = self._state(i)
        if state in self.seen:
            return
        self.seen.add(state)
        it = self.items[i]
        tried: set[tuple[int, int, int]] = set()
        options: list[tuple[float, int]] = []
        for j in range(len(self.devices)):
            if not (
                _fits(self.mem_cap[j], self.used[j] + it.size_bytes)
                and _fits(self.macs_cap[j], self.load[j] + it.macs)
            ):
                continue
            twin_state = (self.twins[j][0], self.load[j], self.used[j])
            if twin_state in tried:
                continue
            tried.add(twin_state)
            lat = (self.load[j] + it.macs) / self.speed[j]
            if max(cur, lat) < self.best:
                options.append((lat, j))
        for lat, j in sorted(options):
            if max(cur, lat) >= self.best:
                break
            self.load[j] += it.macs
            self.used[j] += it.size_bytes
            self.choice[i] = j
            self._dfs(i + 1, max(cur, lat))
            self.load[j] -= it.macs
            self.used[j] -= it.size_bytes


def assign_optimal(
    items: Sequence[Item],
    devices: Sequence[DeviceCapacity],
    rate_hz: float,
    time_limit_s: float = 10.0,
) -> Assignment | None:
    """The assignment with the smallest makespan under memory and rate, or None if none exists.

    Seeded with the greedy plan. If the time limit ends the search first, the best plan found
    (never worse than greedy) is returned with `exact=False`; None then means none was found.
    """
    search = _Search(items, devices, rate_hz, time.monotonic() + time_limit_s)
    greedy = assign_greedy(items, devices, rate_hz)
    index = {d.id: j for j, d in enumerate(devices)}
    seed = None
    if greedy is not None:
        seed = [index[greedy.mapping[it.id]] for it in search.items]
        # Strictly better plans only: nudge the bound up by the float noise of one division.
        search.run(greedy.makespan_s * (1 + 1e-12), seed)
    else:
        search.run(math.inf, None)
    if search.best_choice is None:
        return None
    mapping = {it.id: devices[j].id for it, j in zip(search.items, search.best_choice, strict=True)}
    return Assignment(mapping, _makespan(items, devices, mapping), exact=not search.timed_out)
