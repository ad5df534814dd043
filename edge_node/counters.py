"""Thread-safe named counters, for what several threads count and the stats thread reads."""

from __future__ import annotations

import threading
from collections.abc import Iterable


class Counters:
    """Integer counters by name: grab threads, audio and MQTT callbacks and the tick loop
    add to them while the stats thread takes consistent snapshots."""

    def __init__(self, names: Iterable[str]) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(names, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)
