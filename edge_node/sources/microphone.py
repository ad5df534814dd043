"""Live microphones through sounddevice (PortAudio): the newest window from a ring buffer."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any

import numpy as np

from edge_node.sources.base import (
    AudioRing,
    MissingLibraryError,
    Sample,
    Source,
    SourceError,
    parse_device,
)
from edvit import media
from edvit.preprocess import fix_length

log = logging.getLogger(__name__)


def _import_sounddevice(device: object) -> Any:
    try:
        import sounddevice as sd
    except OSError as exc:  # the PortAudio library itself is missing
        raise MissingLibraryError(
            f"microphone {device}: PortAudio is not available ({exc}); "
            "install the libportaudio2 package"
        ) from None
    return sd


class MicrophoneSource(Source):
    """sounddevice InputStream → mono ring buffer holding the last window.

    `read` returns the newest `clip_samples` at `sample_rate` (None until a whole window has
    been heard). If the device does not support the bundle's rate, it is captured at the
    device's default rate and each window resampled (soxr_hq, as in training). `callback`
    is the plain stream callback: tests feed it synthetic blocks without any hardware.
    `device`: None (the system default input), an index, or part of a device name
    (`python -m sounddevice` lists them). After `stall_timeout` s without audio from an
    open stream (device unplugged), `read` raises SourceError: PortAudio only rescans
    devices at start-up, so restarting the process is the reliable way back.
    """

    kind = "microphone"
    delivers = "audio"

    def __init__(
        self,
        device: int | str | None,
        *,
        sample_rate: int,
        clip_samples: int,
        channels: int | None = None,
        blocksize: int = 0,
        stall_timeout: float = 5.0,
    ) -> None:
        super().__init__()
        if sample_rate < 1 or clip_samples < 1:
            raise SourceError(
                f"microphone {device}: sample_rate and clip_samples must be >= 1, "
                f"got {sample_rate} and {clip_samples}"
            )
        self.device = parse_device(device) if device is not None else None
        self.sample_rate = sample_rate
        self.clip_samples = clip_samples
        self.channels = channels
        self.blocksize = blocksize
        self.stall_timeout = stall_timeout
        self.capture_rate = sample_rate
        self.ring = AudioRing(clip_samples)
        self._last_ts = 0.0
        self._stream: Any = None
        self._opened_at = 0.0

    @property
    def name(self) -> str:
        return f"microphone {self.device if self.device is not None else '(default input)'}"

    def callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio's callback: mix the block (frames, channels) down to mono, append it.

        Runs on the real-time audio thread: no allocation beyond the mix, no logging.
        """
        if getattr(status, "input_overflow", False):
            self._counters.add("frames_dropped")
        if indata.ndim == 1 or indata.shape[1] == 1:
            self.ring.write(indata.reshape(-1))
        else:
            self.ring.write(indata.mean(axis=1, dtype=np.float32))
        self._last_ts = time.time()
        self._counters.add("frames_in")

    def open(self) -> None:
        if self._stream is not None:
            return
        sd = _import_sounddevice(self.device)
        try:
            info = sd.query_devices(self.device, kind="input")
        except (sd.PortAudioError, ValueError) as exc:
            self._counters.add("errors")
            raise SourceError(
                f"{self.name}: no such audio input device ({exc}); list the devices with "
                "`python -m sounddevice`"
            ) from None
        max_in = int(info["max_input_channels"])
        if max_in < 1:
            self._counters.add("errors")
            raise SourceError(f"{self.name}: device {info['name']!r} has no input channels")
        channels = self.channels or min(2, max_in)
        rate = self.sample_rate
        try:
            sd.check_input_settings(
                device=self.device, channels=channels, samplerate=rate, dtype="float32"
            )
        except (sd.PortAudioError, ValueError):
            rate = int(info["default_samplerate"])  # resampled per window in read()
        self.capture_rate = rate
        self.ring = AudioRing(math.ceil(self.clip_samples * rate / self.sample_rate))
        try:
            stream = sd.InputStream(
                device=self.device,
                channels=channels,
                samplerate=rate,
                dtype="float32",
                blocksize=self.blocksize,
                callback=self.callback,
            )
            stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            self._counters.add("errors")
            raise SourceError(
                f"{self.name}: cannot start capture at {rate} Hz, {channels} channel(s): {exc}"
            ) from None
        self._stream = stream
        self._opened_at = time.time()
        log.info("%s: %s, %d Hz, %d channel(s)", self.name, info["name"], rate, channels)

    def read(self, tick: int) -> Sample | None:
        window = self.ring.latest()
        if self._stream is not None:
            last = self._last_ts or self._opened_at
            if time.time() - last > self.stall_timeout:
                raise SourceError(
                    f"{self.name}: no audio for {self.stall_timeout:g} s (device lost?)"
                )
        if window is None:
            return self._deliver(None)
        if self.capture_rate != self.sample_rate:
            window = fix_length(
                media.resample(window, self.capture_rate, self.sample_rate), self.clip_samples
            )
        return self._deliver(Sample(tick=tick, ts=self._last_ts, data=window))

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):  # the device may already be gone
                stream.stop()
            with contextlib.suppress(Exception):
                stream.close()
