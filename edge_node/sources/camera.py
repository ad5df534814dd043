"""Live cameras through OpenCV: a grab thread keeps the newest frame, reopening on loss."""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from edge_node.sources.base import Sample, Source, SourceError, is_url, parse_device
from edvit import media

log = logging.getLogger(__name__)


class CameraSource(Source):
    """OpenCV VideoCapture (device index, /dev/videoN, file, RTSP/HTTP URL), newest frame only.

    A background thread reads frames as fast as the camera delivers them and keeps only the
    newest one: a tick always sees the current scene, and a slow tick loop never builds a
    backlog of stale frames (OpenCV's and the driver's own queues are drained by the thread).
    A frame overwritten before any read counts as dropped.

    Loss (read failure, end of a file, a URL read timing out) → release, wait, reopen, with the
    wait doubling from `backoff[0]` to `backoff[1]` and reset by the next good frame; each
    successful reopen is counted. A file path is paced at its own frame rate (or `fps`)
    so that it behaves like a live camera, and loops by reopening (which also picks up a
    replaced file). `read` returns None while the newest frame is older than `max_age`.
    `width`, `height`, `fps` are requested from the device (a file: `fps` paces it), None
    leaves the device's own; the site config (`CameraSourceConfig`) validates them.
    """

    kind = "camera"
    delivers = "images"

    def __init__(
        self,
        device: int | str,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        max_age: float = 2.0,
        open_timeout: float = 10.0,
        read_timeout: float = 5.0,
        backoff: tuple[float, float] = (0.5, 10.0),
        pace: bool | None = None,
    ) -> None:
        super().__init__()
        self.device = parse_device(device)
        if not (0 < backoff[0] <= backoff[1]):
            raise SourceError(f"camera {self.device}: backoff must be 0 < min <= max: {backoff}")
        self.width, self.height, self.fps = width, height, fps
        self.max_age = max_age
        self.open_timeout = open_timeout
        self.read_timeout = read_timeout
        self.backoff = backoff
        is_file = isinstance(self.device, str) and not is_url(self.device)
        is_file = is_file and not str(self.device).startswith("/dev/")
        self.is_file = is_file
        self.pace = is_file if pace is None else pace
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None  # newest BGR frame, as grabbed
        self._frame_ts = 0.0
        self._frame_seq = 0
        self._delivered_seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    @property
    def name(self) -> str:
        return f"camera {self.device}"

    def _open_capture(self) -> tuple[cv2.VideoCapture | None, str]:
        """A started VideoCapture, or (None, why it failed)."""
        if self.is_file and not Path(str(self.device)).is_file():
            return None, "no such file"
        if is_url(self.device):
            # Without timeouts a dead RTSP/HTTP server blocks open/read for minutes.
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                int(self.open_timeout * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                int(self.read_timeout * 1000),
            ]
            cap = cv2.VideoCapture(str(self.device), cv2.CAP_FFMPEG, params)
        else:
            cap = cv2.VideoCapture(self.device)
        if not cap.isOpened():
            cap.release()
            if isinstance(self.device, int) or str(self.device).startswith("/dev/"):
                why = "OpenCV cannot open it (is it connected, and is this user in group video?)"
            else:
                why = "OpenCV cannot open it (unreachable, or not a video it can decode)"
            return None, why
        if not self.is_file:
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # where supported (V4L2): less latency
            if self.width is not None:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            if self.height is not None:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            if self.fps is not None:
                cap.set(cv2.CAP_PROP_FPS, self.fps)
        return cap, ""

    def _frame_interval(self, cap: cv2.VideoCapture) -> float:
        fps = self.fps or float(cap.get(cv2.CAP_PROP_FPS))
        if not (math.isfinite(fps) and fps > 0):
            fps = 30.0
        return 1.0 / fps

    def open(self) -> None:
        """Open the capture and wait for its first frame (so the node is ready only when the
        camera really delivers); SourceError naming the device otherwise."""
        if self._thread is not None:
            return
        cap, why = self._open_capture()
        if cap is None:
            self._counters.add("errors")
            raise SourceError(f"{self.name}: {why}")
        # A fresh event per open: a thread stuck in a driver call after close() must not
        # be revived by the next open().
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._grab_loop,
            args=(cap, self._stop),
            name=f"grab-{self.device}",
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

    def _grab_loop(self, cap: cv2.VideoCapture | None, stop: threading.Event) -> None:
        """Runs in the grab thread, which owns `cap` (VideoCapture is not thread-safe)."""
        delay = self.backoff[0]
        interval = self._frame_interval(cap) if cap is not None else 1 / 30
        next_due = time.monotonic()
        try:
            while not stop.is_set():
                if cap is None:
                    if stop.wait(delay):
                        break
                    delay = min(delay * 2, self.backoff[1])
                    cap, why = self._open_capture()
                    if cap is None:
                        self._counters.add("errors")
                        self.last_error = why
                        log.warning("%s: reopen failed: %s", self.name, why)
                        continue
                    self._counters.add("reopens")
                    interval = self._frame_interval(cap)
                    next_due = time.monotonic()
                ok, frame = cap.read()
                if not ok or frame is None:
                    cap.release()
                    cap = None
                    if not self.is_file:  # a file's end is the normal loop, not an error
                        self._counters.add("errors")
                        self.last_error = "read failed (camera lost or stream ended)"
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
                if self.pace:
                    next_due = max(next_due + interval, time.monotonic() - interval)
                    wait = next_due - time.monotonic()
                    if wait > 0 and stop.wait(wait):
                        break
        finally:
            if cap is not None:
                cap.release()

    def read(self, tick: int) -> Sample | None:
        """The newest frame (RGB) and its grab time; None if there is none younger than
        `max_age` (camera lost and not back yet). Never waits for a new frame."""
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
