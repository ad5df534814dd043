"""The site clock as a node sees it: which tick is due when, and what an overrun skips.

Tick k is due at k·period on the wall clock (time.time(), kept in step across the site by
NTP/chrony), so nodes started at different moments agree on what "tick k" is without ever
talking to each other. A node never catches up on ticks it missed: features of a past
instant are worth nothing to a live site, and catching up would delay every later tick too.
Instead the missed ticks are counted (`skipped`) and the node goes on with the next one due.

Pure arithmetic on times the caller passes in: tested without threads, sleeps or MQTT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TickSchedule:
    """Tick arithmetic for one period (seconds)."""

    period_s: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.period_s) and self.period_s > 0):
            raise ValueError(
                f"tick period must be a positive number of seconds, got {self.period_s}"
            )

    def due(self, tick: int) -> float:
        """When tick `tick` is due (Unix seconds)."""
        return tick * self.period_s

    def latest(self, now: float) -> int:
        """The newest tick due at `now` (due time ≤ now, up to float rounding)."""
        return math.floor(now / self.period_s)

    def first(self, now: float) -> int:
        """The first tick a node started at `now` runs: the next one due after `now`."""
        return self.latest(now) + 1

    def after(self, tick: int, finished: float) -> tuple[int, int]:
        """(next tick to run, ticks skipped) once the work of `tick` ended at `finished`.

        If that work ended after tick+1 was due (an overrun), every tick already due is
        skipped and the next one is the first still in the future.
        """
        if finished <= self.due(tick + 1):
            return tick + 1, 0
        nxt = max(tick + 1, self.latest(finished) + 1)
        return nxt, nxt - (tick + 1)

    def catch_up(self, tick: int, now: float) -> tuple[int, int]:
        """(tick to run, ticks skipped) when waking at `now` for `tick`.

        Normally `tick` itself; if the process was stalled (suspended, starved of CPU) past
        later due times, the newest due tick instead, so the capture is as fresh as it can be.
        """
        newest = self.latest(now)
        if newest > tick:
            return newest, newest - tick
        return tick, 0
