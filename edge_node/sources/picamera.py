"""The Raspberry Pi camera module through picamera2 (libcamera): newest frame only.

picamera2 is imported at open, never at import: it exists only on Raspberry Pi OS (apt
`python3-picamera2`, or the `pi-camera` extra), and a node without this source must not
need it.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Unpack

import numpy as np

from edge_node.sources.base import MissingLibraryError
from edge_node.sources.grab import GrabOptions, GrabSource

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "on Raspberry Pi OS: `sudo apt install python3-picamera2` and a venv made with "
    "--system-site-packages (`edvit install` does both), or `pip install 'edvit[pi-camera]'`"
)


def import_picamera2(name: str) -> Any:
    """The picamera2 module; MissingLibraryError saying how to install it."""
    try:
        import picamera2
    except ImportError as exc:
        raise MissingLibraryError(
            f"{name}: picamera2 is not installed ({exc}); {INSTALL_HINT}"
        ) from None
    return picamera2


class PicameraSource(GrabSource[Any]):
    """A libcamera camera (`camera`: its number, as `edge-node devices` lists them), captured
    by the grab thread of `GrabSource` as `RGB888` video frames (B, G, R in memory).

    `width` and `height` ask for the frame size (None: picamera2's video default);
    `fps` sets the sensor's frame rate (None: its default).
    """

    kind = "picamera"

    def __init__(self, camera: int = 0, **options: Unpack[GrabOptions]) -> None:
        self.camera = camera
        super().__init__(**options)
        self._module: Any = None

    @property
    def name(self) -> str:
        return f"picamera {self.camera}"

    def open(self) -> None:
        if self._module is None:
            self._module = import_picamera2(self.name)
        super().open()

    def _open_capture(self) -> tuple[Any, str]:
        main: dict[str, Any] = {"format": "RGB888"}
        if self.width is not None and self.height is not None:
            main["size"] = (self.width, self.height)
        controls = {} if self.fps is None else {"FrameRate": self.fps}
        cam = None
        try:  # libcamera raises whatever it likes: IndexError, RuntimeError, OSError...
            cam = self._module.Picamera2(self.camera)
            cam.configure(cam.create_video_configuration(main=main, controls=controls))
            cam.start()
        except Exception as exc:
            if cam is not None:
                self._release(cam)
            return None, (
                f"libcamera cannot open it ({type(exc).__name__}: {exc}); is the camera "
                "connected and enabled? `edge-node devices` lists the cameras it sees"
            )
        return cam, ""

    def _grab(self, handle: Any) -> np.ndarray | None:
        try:
            frame = handle.capture_array("main")
        except Exception as exc:  # a camera that went away
            log.warning("%s: capture failed: %s: %s", self.name, type(exc).__name__, exc)
            return None
        return np.asarray(frame)

    def _release(self, handle: Any) -> None:
        with contextlib.suppress(Exception):  # the device may already be gone
            handle.stop()
        with contextlib.suppress(Exception):
            handle.close()
