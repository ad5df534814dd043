"""Live frame sources: a grab thread keeps the newest frame, reopening the device on loss.

`CameraSource` (OpenCV) and `PicameraSource` (picamera2 / libcamera) differ only in how a
device is opened, read and released; the thread, the newest-frame slot, the reopen backoff,
staleness and the counters live here once.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import abstractmethod
from typing import Generic, TypedDict, TypeVar

import numpy as np

from edge_node.sources.base import Sample, Source, SourceError
from edvit import media

log = logging.getLogger(__name__)

Handle = TypeVar("Handle")
"""What `_open_capture` returns and the grab thread owns (a VideoCapture, a Picamera2)."""


class GrabOptions(TypedDict, total=False):
    """What every live camera takes besides its device (the defaults: `GrabSource`)."""

    width: int | None
    height: int | None
    fps: float | None
    max_age: float
    open_timeout: float
    read_timeout: float
    backoff: tuple[float, float]


class GrabSource(Source, Generic[Handle]):
    """Newest frame only, from a background thread that owns the device handle.

    The thread reads frames as fast as the device delivers them and keeps only the newest
    one: a tick always sees the current scene, and a slow tick loop never builds a backlog of
    stale frames (the driver's own queues are drained by the thread). A frame overwritten
    before any read counts as dropped. Frames are held as grabbed, in BGR order (OpenCV's;
    picamera2's `RGB888` is B, G, R in memory) and converted to RGB only when delivered.

    Loss (a failed read) → release, wait, reopen, with the wait doubling from `backoff[0]`
    to `backoff[1]` and reset by the next good frame; each successful reopen is counted.
    `read` returns None while the newest frame is older than `max_age`.
    """

    delivers = "images"
    loops = False
    """True when a failed read is the normal end of a loop (a file), not a lost device."""

    def __init__(
        self,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        max_age: float = 2.0,
        open_timeout: float = 10.0,
        read_timeout: float = 5.0,
        backoff: tuple[float, float] = (0.5, 10.0),
    ) -> None:
        super().__init__()
        if not (0 < backoff[0] <= backoff[1]):
            raise SourceError(f"{self.name}: backoff must be 0 < min <= max: {backoff}")
        self.width, self.height, self.fps = width, height, fps  # None: the device's default
        self.max_age = max_age
        self.open_timeout = open_timeout
        self.read_timeout = read_timeout
        self.backoff = backoff
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None  # newest BGR frame, as grabbed
        self._frame_ts = 0.0
        self._frame_seq = 0
        self._delivered_seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    @abstractmethod
    def _open_capture(self) -> tuple[Handle | None, str]:
        """A started device, or (None, why it failed)."""

    @abstractmethod
    def _grab(self, handle: Handle) -> np.ndarray | None:
        """The next BGR frame (blocking until the device has one); None when it is lost."""

    @abstractmethod
    def _release(self, handle: Handle) -> None:
        """Free the device; never raises (it may already be gone)."""

    def _frame_interval(self, handle: Handle) -> float | None:
        """Seconds between frames to pace the grabs at; None: as fast as the device goes."""
        return None

    def open(self) -> None:
        """Open the device and wait for its first frame (so the node is ready only when the
        device really delivers); SourceError naming the device otherwise."""
        if self._thread is not None:
            return
        handle, why = self._open_capture()
        if handle is None:
            self._counters.add("errors")
            raise SourceError(f"{self.name}: {why}")
        # A fresh event per open: a thread stuck in a driver call after close() must not
        # be revived by the next open().
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._grab_loop,
            args=(handle, self._stop),
            name=f"grab-{self.name}",
            daemon=True,
        )
        self._thread.start()
        with self._cond:
            got = self._cond.wait_for(lambda: self._frame_seq > 0, timeout=self.open_timeout)
        if not got:
            self.close()
            raise SourceError(
                f"{self.name}: opened but delivered no frame within {self.open_timeout:g} s"
                + (f" ({self.last_error})" if self.last_error else "")
            )

    def _grab_loop(self, handle: Handle | None, stop: threading.Event) -> None:
        """Runs in the grab thread, which owns `handle` (neither VideoCapture nor Picamera2
        is thread-safe)."""
        delay = self.backoff[0]
        interval = self._frame_interval(handle) if handle is not None else None
        next_due = time.monotonic()
        try:
            while not stop.is_set():
                if handle is None:
                    if stop.wait(delay):
                        break
                    delay = min(delay * 2, self.backoff[1])
                    handle, why = self._open_capture()
                    if handle is None:
                        self._counters.add("errors")
                        self.last_error = why
                        log.warning("%s: reopen failed: %s", self.name, why)
                        continue
                    self._counters.add("reopens")
                    interval = self._frame_interval(handle)
                    next_due = time.monotonic()
                frame = self._grab(handle)
                if frame is None:
                    self._release(handle)
                    handle = None
                    if not self.loops:
                        self._counters.add("errors")
                        self.last_error = "read failed (device lost or stream ended)"
                        log.warning("%s: %s; reopening", self.name, self.last_error)
                    continue
                delay = self.backoff[0]
                now = time.time()
                with self._cond:
                    if self._frame_seq > self._delivered_seq:
                        self._counters.add("frames_dropped")
                    self._frame = frame
                    self._frame_ts = now
                    self._frame_seq += 1
                    self._cond.notify_all()
                self._counters.add("frames_in")
                if interval is not None:
                    next_due = max(next_due + interval, time.monotonic() - interval)
                    wait = next_due - time.monotonic()
                    if wait > 0 and stop.wait(wait):
                        break
        finally:
            if handle is not None:
                self._release(handle)

    def read(self, tick: int) -> Sample | None:
        """The newest frame (RGB) and its grab time; None if there is none younger than
        `max_age` (device lost and not back yet). Never waits for a new frame."""
        with self._cond:
            frame, ts, seq = self._frame, self._frame_ts, self._frame_seq
            self._delivered_seq = seq
        if frame is None or time.time() - ts > self.max_age:
            return self._deliver(None)
        return self._deliver(Sample(tick=tick, ts=ts, data=media.bgr_to_rgb(frame)))

    def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout=self.read_timeout + 2.0)
        if thread.is_alive():  # stuck in a driver call; it exits when that returns
            log.warning("%s: grab thread did not stop within the read timeout", self.name)
        with self._cond:
            self._frame = None
            self._frame_seq = self._delivered_seq = 0
