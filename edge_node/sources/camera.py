"""Live cameras through OpenCV: a grab thread keeps the newest frame, reopening on loss."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Unpack

import cv2
import numpy as np

from edge_node.sources.base import is_url, parse_device
from edge_node.sources.grab import GrabOptions, GrabSource


class CameraSource(GrabSource[cv2.VideoCapture]):
    """OpenCV VideoCapture (device index, /dev/videoN, file, RTSP/HTTP URL), newest frame only
    (the grab thread, reopen and staleness of `GrabSource`).

    A file path is paced at its own frame rate (or `fps`) so that it behaves like a live
    camera, and loops by reopening at its end (which also picks up a replaced file).
    `width`, `height`, `fps` are requested from the device (a file: `fps` paces it), None
    leaves the device's own; the site config (`CameraSourceConfig`) validates them.
    """

    kind = "camera"

    def __init__(
        self, device: int | str, *, pace: bool | None = None, **options: Unpack[GrabOptions]
    ) -> None:
        self.device = parse_device(device)
        super().__init__(**options)
        is_file = isinstance(self.device, str) and not is_url(self.device)
        is_file = is_file and not str(self.device).startswith("/dev/")
        self.is_file = is_file
        self.loops = is_file  # a file's end is the normal loop, not an error
        self.pace = is_file if pace is None else pace

    @property
    def name(self) -> str:
        return f"camera {self.device}"

    def _open_capture(self) -> tuple[cv2.VideoCapture | None, str]:
        if self.is_file and not Path(str(self.device)).is_file():
            return None, "no such file"
        if str(self.device).startswith("/dev/") and not Path(str(self.device)).exists():
            return None, "no such device (`edge-node devices` lists the cameras)"
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

    def _grab(self, handle: cv2.VideoCapture) -> np.ndarray | None:
        ok, frame = handle.read()
        return frame if ok and frame is not None else None

    def _release(self, handle: cv2.VideoCapture) -> None:
        handle.release()

    def _frame_interval(self, handle: cv2.VideoCapture) -> float | None:
        if not self.pace:
            return None
        fps = self.fps or float(handle.get(cv2.CAP_PROP_FPS))
        if not (math.isfinite(fps) and fps > 0):
            fps = 30.0
        return 1.0 / fps
