"""Relayed frames: JPEGs another node captured, published on `edvit/<site>/frame/<camera>`."""

from __future__ import annotations

import logging
import threading
import time

from edge_node.sources.base import Sample, Source, SourceError, UInt8Array
from edge_node.sources.jpeg import decode_jpeg

log = logging.getLogger(__name__)


class RelaySource(Source):
    """Frames another node captured and relayed as JPEG on `edvit/<site>/frame/<camera>`.

    The MQTT layer calls `offer` (or `offer_jpeg`) from its network thread; `read(k)` waits
    at most `wait` seconds for tick k's frame. Only the newest `keep` ticks are held: an
    older frame, or one arriving after its tick was read, is dropped and counted.
    """

    kind = "relay"
    delivers = "images"

    def __init__(self, camera: str, *, wait: float, keep: int = 8) -> None:
        super().__init__()
        if keep < 1:
            raise SourceError(f"relay {camera}: keep must be >= 1, got {keep}")
        self.camera = camera
        self.keep = keep
        self.wait = wait
        self._cond = threading.Condition()
        self._frames: dict[int, tuple[float, UInt8Array]] = {}
        self._last_read: int | None = None
        self._closed = False

    @property
    def name(self) -> str:
        return f"relay {self.camera}"

    def open(self) -> None:
        with self._cond:
            self._closed = False

    def offer(self, tick: int, ts: float, image: UInt8Array) -> bool:
        """Hold `image` (HWC uint8 RGB) for `tick`; False if it was dropped as too old."""
        self._counters.add("frames_in")
        with self._cond:
            if self._last_read is not None and tick <= self._last_read:
                self._counters.add("frames_dropped")  # its tick was already read
                return False
            if tick in self._frames:
                self._counters.add("frames_dropped")  # a resend: the newest copy wins
            self._frames[tick] = (ts, image)
            while len(self._frames) > self.keep:
                oldest = min(self._frames)
                del self._frames[oldest]
                self._counters.add("frames_dropped")
                if oldest == tick:
                    return False
            self._cond.notify_all()
        return True

    def offer_jpeg(self, tick: int, ts: float, jpeg: bytes) -> bool:
        """Decode and offer; an undecodable payload is counted and logged, never raised."""
        try:
            image = decode_jpeg(jpeg)
        except ValueError as exc:
            self._counters.add("errors")
            log.warning("%s: tick %d: %s", self.name, tick, exc)
            return False
        return self.offer(tick, ts, image)

    def read(self, tick: int) -> Sample | None:
        deadline = time.monotonic() + self.wait
        with self._cond:
            while tick not in self._frames and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            got = self._frames.pop(tick, None)
            stale = [t for t in self._frames if t < tick]  # never read now: free them
            for t in stale:
                del self._frames[t]
            if self._last_read is None or tick > self._last_read:
                self._last_read = tick
        if stale:
            self._counters.add("frames_dropped", len(stale))
        if got is None:
            return self._deliver(None)
        return self._deliver(Sample(tick=tick, ts=got[0], data=got[1]))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._frames.clear()
            self._cond.notify_all()
