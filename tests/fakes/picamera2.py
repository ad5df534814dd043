"""A stand-in for picamera2 (Raspberry Pi camera modules through libcamera), for tests on
machines without the hardware: the calls `edge_node.sources.picamera` and
`edge-node devices` make, with frames a test can recognise.

Put this folder first on sys.path (or PYTHONPATH) to use it. Frames are `RGB888` as
libcamera lays it out, B, G, R in memory: pixel (y, x) holds B = `frame number % 256`,
G = 64, R = 200. Module settings a test may change: `CAMERAS` (what libcamera sees; the
environment variable FAKE_PICAMERA2_CAMERAS sets how many at import), `FAIL_AFTER` (the
capture after which every capture raises, as an unplugged camera does; None: never),
`EVENTS` (what was called, in order).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

CAMERAS: list[dict[str, Any]] = [
    {
        "Model": f"imx708-fake{i}",
        "Location": 2,
        "Rotation": 0,
        "Id": f"/base/fake/i2c@{i}",
        "Num": i,
    }
    for i in range(int(os.environ.get("FAKE_PICAMERA2_CAMERAS", "1")))
]
FAIL_AFTER: int | None = None
EVENTS: list[str] = []
FRAME_INTERVAL_S = 0.01


class Picamera2:
    def __init__(self, camera_num: int = 0) -> None:
        if camera_num >= len(CAMERAS):
            raise IndexError("list index out of range")  # what picamera2 raises
        self.camera_num = camera_num
        self.config: dict[str, Any] | None = None
        self.started = False
        self.captured = 0
        EVENTS.append(f"open {camera_num}")

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        return [dict(c) for c in CAMERAS]

    def create_video_configuration(
        self, main: dict[str, Any] | None = None, controls: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        main = {"format": "XBGR8888", "size": (1280, 720), **(main or {})}
        return {"main": main, "controls": dict(controls or {})}

    def configure(self, config: dict[str, Any]) -> None:
        if config["main"]["format"] != "RGB888":
            raise ValueError(f"this fake only makes RGB888, not {config['main']['format']}")
        self.config = config
        EVENTS.append(f"configure {config['main']['size']} {config['controls']}")

    def start(self) -> None:
        if self.config is None:
            raise RuntimeError("Camera has not been configured")
        self.started = True
        EVENTS.append("start")

    def capture_array(self, name: str = "main") -> np.ndarray:
        if not self.started or self.config is None:
            raise RuntimeError("Camera is not running")
        if FAIL_AFTER is not None and self.captured >= FAIL_AFTER:
            raise RuntimeError("Device or resource busy (camera unplugged)")
        time.sleep(FRAME_INTERVAL_S)
        width, height = self.config[name]["size"]
        frame = np.empty((height, width, 3), dtype=np.uint8)
        frame[:, :] = (self.captured % 256, 64, 200)
        self.captured += 1
        return frame

    def stop(self) -> None:
        self.started = False
        EVENTS.append("stop")

    def close(self) -> None:
        EVENTS.append("close")
