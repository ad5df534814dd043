"""The aggregator's inbox: one bounded queue per sender, served in turn.

With one shared queue a flood from one sender (a broken node, or an attacker holding one
node's password) fills it, and every other node's features are lost at the door: whole
ticks vanish without a result. Here each sender (a feature topic) has its own small queue
and the worker takes one message from each sender in turn, so a flood costs only the
flooder's own messages; when a sender's queue is full its oldest message is shed (a newer
tick is worth more than a stale one) and counted. Memory is bounded by senders × depth.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class FairInbox(Generic[T]):
    """Per-key bounded FIFO queues, round-robin `get`; thread-safe (paho puts, worker gets)."""

    def __init__(self, keys: list[str], depth: int) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if not keys or len(set(keys)) != len(keys):
            raise ValueError(f"keys must be non-empty and unique: {keys}")
        self.depth = depth
        self._queues: dict[str, deque[T]] = {k: deque() for k in keys}
        self._ready: deque[str] = deque()  # keys with something queued, in serving order
        self._cond = threading.Condition()
        self.shed: dict[str, int] = dict.fromkeys(keys, 0)

    def __contains__(self, key: str) -> bool:
        return key in self._queues

    def __len__(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def put(self, key: str, item: T) -> bool:
        """Queue `item` for `key` (KeyError for a key the inbox does not serve); False when
        the key's queue was full and its oldest item was shed to make room."""
        with self._cond:
            queue = self._queues[key]
            kept = True
            if len(queue) >= self.depth:
                queue.popleft()
                self.shed[key] += 1
                kept = False
            elif not queue:
                self._ready.append(key)
            queue.append(item)
            self._cond.notify()
            return kept

    def get(self, timeout: float) -> T | None:
        """The next item, taking senders in turn; None after `timeout` seconds with none."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._ready:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            key = self._ready.popleft()
            queue = self._queues[key]
            item = queue.popleft()
            if queue:
                self._ready.append(key)  # back of the line: the others go first
            return item
