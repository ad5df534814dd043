"""The alignment buffer: collect each tick's sub-model features, decide when a tick is done.

A tick is emitted
- `complete` as soon as every expected sub-model has reported,
- at its deadline, k·period_s + deadline_s on the (injected) wall clock, with what came:
  `complete: false` and the `missing` sub-models,
- `evicted` early when the buffer is full and a newer tick arrives (the oldest goes first).

After a tick is emitted, further messages for it are `late` and dropped, never fused into
another tick. A message for a tick whose deadline has already passed is late as well, even
if the tick was never seen: emitting it would only produce a stale one-sub-model answer.

Memory is bounded whatever arrives: at most `buffer_ticks` ticks of at most one vector per
sub-model, plus a record of at most `record_ticks` recently emitted ticks (when that record
overflows, every tick up to the one forgotten is treated as emitted). Deadlines follow the
nominal tick time, not the `ts` a message claims, so no sender can hold a tick open.

Pure logic: no threads, no clock, no MQTT — the caller passes `now`, so it is tested alone.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

Cause = Literal["complete", "deadline", "evicted"]
Vector = NDArray[np.float16]


@dataclass(frozen=True, eq=False)
class Emitted:
    """A tick leaving the buffer: what to fuse and how to flag the result."""

    tick: int
    ts: float  # the earliest capture time its messages reported
    features: dict[str, Vector]
    missing: tuple[str, ...]
    cause: Cause
    last_received: float  # caller's receive time of the newest message (for overhead)

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass
class _Entry:
    tick: int
    ts: float
    last_received: float
    features: dict[str, Vector] = field(default_factory=dict)


class Aligner:
    """Aligns feature vectors by tick; see the module docstring for the rules."""

    def __init__(
        self,
        expected: Sequence[str],
        *,
        period_s: float,
        deadline_s: float,
        buffer_ticks: int,
        record_ticks: int | None = None,
    ) -> None:
        if not expected or len(set(expected)) != len(expected):
            raise ValueError(f"expected sub-models must be non-empty and unique: {expected}")
        if period_s <= 0 or deadline_s <= 0 or buffer_ticks < 1:
            raise ValueError("period_s and deadline_s must be > 0 and buffer_ticks ≥ 1")
        self.expected = tuple(expected)
        self._expected_set = frozenset(expected)
        self.period_s = period_s
        self.deadline_s = deadline_s
        self.buffer_ticks = buffer_ticks
        self.record_ticks = record_ticks if record_ticks is not None else 4 * buffer_ticks + 16
        self._buffer: dict[int, _Entry] = {}
        self._heap: list[int] = []  # ticks of the buffer, lazily cleaned
        self._done: set[int] = set()  # emitted ticks whose deadline has not passed yet
        self._done_heap: list[int] = []
        self._floor = -1  # every tick ≤ floor counts as emitted
        # counters
        self.accepted = 0
        self.duplicate = 0
        self.late = 0
        self.overflow = 0
        self.complete = 0
        self.partial = 0
        self.evicted = 0

    # --- queries ------------------------------------------------------------------------------

    def deadline(self, tick: int) -> float:
        """Wall-clock time at which `tick` is emitted with whatever has arrived."""
        return tick * self.period_s + self.deadline_s

    @property
    def pending(self) -> int:
        """Ticks held now (never more than buffer_ticks)."""
        return len(self._buffer)

    @property
    def recorded(self) -> int:
        """Emitted ticks remembered for late detection (never more than record_ticks)."""
        return len(self._done)

    def next_deadline(self) -> float | None:
        """When `expire` has something to do next, or None with nothing pending."""
        oldest = self._oldest()
        return None if oldest is None else self.deadline(oldest)

    # --- updates ------------------------------------------------------------------------------

    def add(
        self,
        tick: int,
        sub: str,
        ts: float,
        feat: Vector,
        now: float,
        received: float | None = None,
    ) -> list[Emitted]:
        """Take one validated message; returns the ticks that are done now (expired first)."""
        if sub not in self._expected_set:
            raise ValueError(f"sub-model {sub!r} is not expected ({self.expected})")
        out = self.expire(now)
        arrived = now if received is None else received
        entry = self._buffer.get(tick)
        if entry is not None:
            if sub in entry.features:
                self.duplicate += 1
                return out
            self._put(entry, sub, ts, feat, arrived)
            if len(entry.features) == len(self.expected):
                out.append(self._emit(self._buffer.pop(tick), "complete", now))
            return out
        if tick <= self._floor or tick in self._done or now >= self.deadline(tick):
            self.late += 1
            return out
        if len(self._buffer) >= self.buffer_ticks:
            oldest = self._oldest()
            if oldest is not None and tick < oldest:
                self.overflow += 1  # older than everything held: it would be evicted at once
                return out
            if oldest is not None:
                self.evicted += 1
                out.append(self._emit(self._buffer.pop(oldest), "evicted", now))
        entry = _Entry(tick=tick, ts=ts, last_received=arrived)
        self._buffer[tick] = entry
        heapq.heappush(self._heap, tick)
        self._put(entry, sub, ts, feat, arrived)
        if len(entry.features) == len(self.expected):
            out.append(self._emit(self._buffer.pop(tick), "complete", now))
        self._compact()
        return out

    def expire(self, now: float) -> list[Emitted]:
        """Emit (partial) every tick whose deadline has passed, oldest first."""
        out = []
        while True:
            oldest = self._oldest()
            if oldest is None or self.deadline(oldest) > now:
                break
            heapq.heappop(self._heap)
            out.append(self._emit(self._buffer.pop(oldest), "deadline", now))
        while self._done_heap and self.deadline(self._done_heap[0]) <= now:
            self._done.discard(heapq.heappop(self._done_heap))
        return out

    # --- internals ----------------------------------------------------------------------------

    def _put(self, entry: _Entry, sub: str, ts: float, feat: Vector, arrived: float) -> None:
        self.accepted += 1
        entry.features[sub] = feat
        entry.ts = min(entry.ts, ts)
        entry.last_received = max(entry.last_received, arrived)

    def _emit(self, entry: _Entry, cause: Cause, now: float) -> Emitted:
        missing = tuple(s for s in self.expected if s not in entry.features)
        if missing:
            self.partial += 1
        else:
            self.complete += 1
        if self.deadline(entry.tick) > now:  # late messages may still come: remember it
            self._done.add(entry.tick)
            heapq.heappush(self._done_heap, entry.tick)
            while len(self._done) > self.record_ticks:
                forgotten = heapq.heappop(self._done_heap)
                self._done.discard(forgotten)
                self._floor = max(self._floor, forgotten)
        return Emitted(
            tick=entry.tick,
            ts=entry.ts,
            features=entry.features,
            missing=missing,
            cause=cause,
            last_received=entry.last_received,
        )

    def _oldest(self) -> int | None:
        while self._heap and self._heap[0] not in self._buffer:
            heapq.heappop(self._heap)
        return self._heap[0] if self._heap else None

    def _compact(self) -> None:
        """Drop stale heap entries (ticks emitted out of order) so the heap stays bounded."""
        if len(self._heap) > 2 * len(self._buffer) + 64:
            self._heap = list(self._buffer)
            heapq.heapify(self._heap)
