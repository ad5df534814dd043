"""Small statistics every long-running part reports: windowed percentiles and log throttles.

One definition, so that the node's, the aggregator's and the demo's p50/p99 mean the same
thing (linear interpolation, numpy's default) and a flood is logged the same way everywhere.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable

import numpy as np

LOG_EVERY_S = 10.0  # a recurring problem is logged at most this often


def percentiles(values: Iterable[float], scale: float = 1.0) -> dict[str, float | None]:
    """`p50`, `p99` and `max` of `values` × `scale`, to 3 decimals (all None when empty)."""
    arr = np.fromiter(values, dtype=np.float64) * scale
    if arr.size == 0:
        return {"p50": None, "p99": None, "max": None}
    p50, p99 = np.percentile(arr, [50, 99])
    return {
        "p50": round(float(p50), 3),
        "p99": round(float(p99), 3),
        "max": round(float(arr.max()), 3),
    }


class Window:
    """The last `size` values (e.g. durations) and a count of all ever added; thread-safe, so
    a stats publisher may read while the hot loop adds."""

    def __init__(self, size: int = 1024) -> None:
        self._recent: deque[float] = deque(maxlen=size)
        self._count = 0
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        with self._lock:
            self._recent.append(value)
            self._count += 1

    @property
    def count(self) -> int:
        """Values added since construction (not only those in the window)."""
        return self._count

    def percentiles(self, scale: float = 1.0) -> dict[str, float | None]:
        """`percentiles` of the window's values × `scale`."""
        with self._lock:
            recent = list(self._recent)
        return percentiles(recent, scale)


class LogThrottle:
    """Logs a recurring problem at most once per `every_s` per key, with the count of those
    suppressed: a broken camera at 30 ticks/s or a flood of bad messages must not fill the
    journal."""

    def __init__(self, logger: logging.Logger, every_s: float = LOG_EVERY_S) -> None:
        self._log = logger
        self._every_s = every_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warn(self, key: str, message: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._every_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        more = self._suppressed.pop(key, 0)
        suffix = f" (+{more} more since the last report)" if more else ""
        self._log.warning(message + suffix, *args, exc_info=exc_info)
