"""Capture sources: one interface for cameras, microphones, replayed files and relayed frames.

The tick loop calls `read(k)` once per tick and gets a `Sample` (or None when nothing usable
is there this tick) that goes straight into `edvit.preprocess.preprocess`:

- images: HWC uint8, **RGB** (C = 3; C = 1 for grayscale files and relayed grayscale JPEGs).
  OpenCV hands out BGR; every source here converts, so a BGR frame never reaches a model;
- audio: 1-D float32 mono in [-1, 1] at the bundle's sample rate, `clip_samples` long.

Contract of `read`: it never blocks longer than the source's own small wait, returns None
for a transient miss (no fresh frame yet, a relayed frame that did not arrive, an unreadable
replay file), and raises `SourceError` only when the source is broken for good (the node
should exit non-zero so that systemd restarts it). Live sources hold only the newest data
(one frame, one audio window, a few relayed ticks): nothing queues without bound.

Replay sources (`images`, `wav`, `video`) map tick k to item k mod M, so nodes started
independently agree on what tick k shows, and `Sample.item` names the item (ground truth
for tests and the demo).

OpenCV is imported at module level (every node needs it for images or JPEG relay);
sounddevice and librosa only where used, so an image node never loads PortAudio or numba.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self

import cv2
import numpy as np
import numpy.typing as npt

from edvit import media
from edvit.preprocess import AudioPreprocess, ImagePreprocess, fix_length

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
UInt8Array = npt.NDArray[np.uint8]

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
IMAGE_KINDS = frozenset({"camera", "video", "images", "relay"})
AUDIO_KINDS = frozenset({"microphone", "wav"})


class SourceError(Exception):
    """A source that cannot deliver: the message names the device, file or URL."""


@dataclass(frozen=True, slots=True)
class Sample:
    """What a source delivers for tick `tick`.

    `data`: the raw image (HWC uint8 RGB) or audio window (1-D float32 mono).
    `ts`: wall-clock capture time in seconds (grab time of a camera frame, time of the newest
    audio sample, the sender's capture time of a relayed frame, read time of a replay item).
    `item`: for replay sources, the item's name (relative path, or `file#frame`); else None.
    """

    tick: int
    ts: float
    data: np.ndarray
    item: str | None = None


@dataclass(frozen=True, slots=True)
class SourceStats:
    """Counters of a source since construction (a snapshot; see `Source.stats`)."""

    reads: int = 0
    """Samples delivered by read()."""
    misses: int = 0
    """read() returned None."""
    frames_in: int = 0
    """Frames (audio: blocks) captured or received."""
    frames_dropped: int = 0
    """Captured or received but never delivered (superseded by a newer frame, evicted, late),
    or audio input overflows (samples the device lost)."""
    reopens: int = 0
    """Successful re-opens after a loss (a camera on a file: also each end of the file)."""
    errors: int = 0
    """Failed opens, reads and decodes."""

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _Counters:
    """Thread-safe counters: grab threads and audio/MQTT callbacks update them concurrently."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys((f.name for f in fields(SourceStats)), 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def snapshot(self) -> SourceStats:
        with self._lock:
            return SourceStats(**self._values)


class Source(ABC):
    """One capture source. Use as `with source: ... source.read(k) ...` or open()/close()."""

    kind: ClassVar[str]

    def __init__(self) -> None:
        self._counters = _Counters()

    @property
    def name(self) -> str:
        """Device, file or topic this source reads, for logs and errors."""
        return self.kind

    @abstractmethod
    def open(self) -> None:
        """Acquire the device or list the files; raise SourceError naming what failed."""

    @abstractmethod
    def read(self, tick: int) -> Sample | None:
        """The sample for tick `tick`, or None for a transient miss (see the module doc)."""

    @abstractmethod
    def close(self) -> None:
        """Release everything; idempotent."""

    @property
    def stats(self) -> SourceStats:
        return self._counters.snapshot()

    def _deliver(self, sample: Sample | None) -> Sample | None:
        self._counters.add("reads" if sample is not None else "misses")
        return sample

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


# --------------------------------------------------------------------------- image helpers


def encode_jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    """An RGB (or grayscale) uint8 image → JPEG bytes, for relay frames on MQTT."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8:
        raise ValueError("encode_jpeg expects a uint8 numpy image")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be 1..100, got {quality}")
    ok, buf = cv2.imencode(".jpg", media.rgb_to_bgr(rgb), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not encode an image of shape {rgb.shape} as JPEG")
    return bytes(np.asarray(buf).tobytes())


def decode_jpeg(data: bytes) -> UInt8Array:
    """JPEG bytes → HWC uint8 RGB (HWx1 for a grayscale JPEG); ValueError if undecodable."""
    return media.decode_image(data, f"relay frame ({len(data)} bytes)")


def read_image(path: Path) -> UInt8Array:
    """An image file as HWC uint8 RGB, read exactly as modelgen's imagefolder reads it."""
    try:
        return media.read_image(path)
    except media.MediaError as exc:
        raise SourceError(str(exc)) from None


def read_wav(path: Path, sample_rate: int, clip_samples: int) -> FloatArray:
    """A sound file → mono float32 at `sample_rate`, centre-cropped/zero-padded to length.

    The same reader as modelgen's audiofolder loader and the same `fix_length` as the
    preprocessing, so a replayed file gives the training tensor.
    """
    try:
        return fix_length(media.read_wav(path, sample_rate), clip_samples)
    except media.MediaError as exc:
        raise SourceError(str(exc)) from None


# --------------------------------------------------------------------------- camera


def _parse_device(device: int | str) -> int | str:
    """'0' → 0 (a V4L2 index); anything else stays a path or URL."""
    if isinstance(device, str) and device.strip().isdigit():
        return int(device.strip())
    return device


def _is_url(target: int | str) -> bool:
    return isinstance(target, str) and "://" in target


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
    """

    kind = "camera"

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
        self.device = _parse_device(device)
        for key, value in (("width", width), ("height", height), ("fps", fps)):
            if value is not None and not value > 0:
                raise SourceError(f"camera {self.device}: {key} must be > 0, got {value}")
        if not (0 < backoff[0] <= backoff[1]):
            raise SourceError(f"camera {self.device}: backoff must be 0 < min <= max: {backoff}")
        self.width, self.height, self.fps = width, height, fps
        self.max_age = max_age
        self.open_timeout = open_timeout
        self.read_timeout = read_timeout
        self.backoff = backoff
        is_file = isinstance(self.device, str) and not _is_url(self.device)
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
        if _is_url(self.device):
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


# --------------------------------------------------------------------------- microphone


class AudioRing:
    """The newest `capacity` samples of a stream, in fixed memory (overwrites the oldest).

    Written from the audio callback thread, read from the tick loop: a lock held only for
    the copies (microseconds), so the real-time callback never waits on inference.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"ring capacity must be >= 1 sample, got {capacity}")
        self.capacity = capacity
        self._buf = np.zeros(capacity, dtype=np.float32)
        self._pos = 0  # next write position
        self._total = 0
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        """Samples written since construction."""
        return self._total

    def write(self, block: np.ndarray) -> None:
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        n = block.shape[0]
        cap = self.capacity
        with self._lock:
            if n >= cap:
                self._buf[:] = block[n - cap :]
                self._pos = 0
            else:
                first = min(n, cap - self._pos)
                self._buf[self._pos : self._pos + first] = block[:first]
                self._buf[: n - first] = block[first:]
                self._pos = (self._pos + n) % cap
            self._total += n

    def latest(self, n: int | None = None) -> FloatArray | None:
        """A copy of the newest `n` samples (default: capacity), oldest first; None until
        that many have been written (a half-empty window would be classified as silence)."""
        n = self.capacity if n is None else n
        if not 1 <= n <= self.capacity:
            raise ValueError(f"window of {n} samples does not fit the ring ({self.capacity})")
        with self._lock:
            if self._total < n:
                return None
            start = (self._pos - n) % self.capacity
            if start + n <= self.capacity:
                return self._buf[start : start + n].copy()
            return np.concatenate((self._buf[start:], self._buf[: (start + n) - self.capacity]))


def _import_sounddevice(device: object) -> Any:
    try:
        import sounddevice as sd
    except OSError as exc:  # the PortAudio library itself is missing
        raise SourceError(
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

    def __init__(
        self,
        device: int | str | None = None,
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
        self.device = _parse_device(device) if device is not None else None
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


# --------------------------------------------------------------------------- replay


class ReplaySource(Source):
    """Tick k → item k mod M of a fixed, sorted list (the same on every node)."""

    def __init__(self) -> None:
        super().__init__()
        self._items: list[str] = []
        self._opened = False

    @property
    def items(self) -> list[str]:
        """Item names in replay order (after open)."""
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def index(self, tick: int) -> int:
        """The item shown at `tick`."""
        if not self._items:
            raise SourceError(f"{self.name}: not open")
        return tick % len(self._items)

    @abstractmethod
    def _load(self, index: int) -> np.ndarray: ...

    def read(self, tick: int) -> Sample | None:
        i = self.index(tick)
        try:
            data = self._load(i)
        except SourceError as exc:  # one bad file must not stop the node
            self._counters.add("errors")
            log.warning("%s", exc)
            return self._deliver(None)
        return self._deliver(Sample(tick=tick, ts=time.time(), data=data, item=self._items[i]))

    def close(self) -> None:
        self._opened = False


def _list_files(folder: Path, pattern: str, extensions: frozenset[str], what: str) -> list[Path]:
    if not folder.is_dir():
        raise SourceError(f"{folder}: not a folder (it does not exist or is a file)")
    found = sorted(
        (p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in extensions),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    found = [p for p in found if not any(s.startswith(".") for s in p.relative_to(folder).parts)]
    if not found:
        raise SourceError(
            f"{folder}: no {what} files matching {pattern!r} "
            f"(extensions {', '.join(sorted(extensions))})"
        )
    return found


class ImagesSource(ReplaySource):
    """A folder of images in sorted relative-path order; `pattern` may recurse (`**/*.png`)."""

    kind = "images"

    def __init__(self, folder: str | Path, pattern: str = "*") -> None:
        super().__init__()
        self.folder = Path(folder).expanduser()
        self.pattern = pattern
        self._paths: list[Path] = []

    @property
    def name(self) -> str:
        return f"images {self.folder}"

    def open(self) -> None:
        self._paths = _list_files(self.folder, self.pattern, IMAGE_EXTENSIONS, "image")
        self._items = [p.relative_to(self.folder).as_posix() for p in self._paths]
        self._opened = True

    def _load(self, index: int) -> np.ndarray:
        return read_image(self._paths[index])


class WavSource(ReplaySource):
    """A folder of sound files (sorted), each mixed down, resampled and fixed to the clip."""

    kind = "wav"
    EXTENSIONS = frozenset({".wav", ".flac", ".ogg"})

    def __init__(
        self, folder: str | Path, *, sample_rate: int, clip_samples: int, pattern: str = "**/*"
    ) -> None:
        super().__init__()
        self.folder = Path(folder).expanduser()
        self.pattern = pattern
        self.sample_rate = sample_rate
        self.clip_samples = clip_samples
        self._paths: list[Path] = []

    @property
    def name(self) -> str:
        return f"wav {self.folder}"

    def open(self) -> None:
        self._paths = _list_files(self.folder, self.pattern, self.EXTENSIONS, "sound")
        self._items = [p.relative_to(self.folder).as_posix() for p in self._paths]
        self._opened = True

    def _load(self, index: int) -> np.ndarray:
        return read_wav(self._paths[index], self.sample_rate, self.clip_samples)


class VideoSource(ReplaySource):
    """A video file: tick k → frame k mod frame_count (RGB).

    Short videos (decoded size ≤ `cache_mib`) are decoded once at open: the frame count is
    then exact (container headers can be wrong) and a tick costs no decoding. Longer ones
    are read on demand, seeking with CAP_PROP_POS_FRAMES only when the wanted frame is not
    the next one.
    """

    kind = "video"

    def __init__(self, path: str | Path, *, cache_mib: float = 64.0) -> None:
        super().__init__()
        self.path = Path(path).expanduser()
        self.cache_mib = cache_mib
        self._frames: list[UInt8Array] | None = None
        self._cap: cv2.VideoCapture | None = None
        self._next = 0
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"video {self.path}"

    def open(self) -> None:
        if not self.path.is_file():
            raise SourceError(f"{self.path}: no such video file")
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.path}: OpenCV cannot open it as a video")
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if count <= 0 or max(count, 0) * w * h * 3 <= self.cache_mib * 2**20:
            frames = self._decode_all(cap)
            if frames is not None:
                cap.release()
                if not frames:
                    raise SourceError(f"{self.path}: no decodable frames")
                self._frames = frames
                count = len(frames)
            else:  # longer than the cache allows (the header lied): stream instead
                count = self._count_frames(cap) if count <= 0 else count
        if self._frames is None:
            if count <= 0:
                cap.release()
                raise SourceError(f"{self.path}: no decodable frames")
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self._cap = cap
            self._next = 0
        self._items = [f"{self.path.name}#{i}" for i in range(count)]
        self._opened = True

    def _decode_all(self, cap: cv2.VideoCapture) -> list[UInt8Array] | None:
        """Every frame as RGB, or None (rewound) once they exceed `cache_mib`."""
        frames: list[UInt8Array] = []
        size, limit = 0, self.cache_mib * 2**20
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                return frames
            size += frame.nbytes
            if size > limit:
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                return None
            frames.append(media.bgr_to_rgb(frame))

    @staticmethod
    def _count_frames(cap: cv2.VideoCapture) -> int:
        """Count by grabbing (the header has no count); grab() skips the colour conversion."""
        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        count = 0
        while cap.grab():
            count += 1
        return count

    def _load(self, index: int) -> np.ndarray:
        if self._frames is not None:
            return self._frames[index]
        with self._lock:
            cap = self._cap
            if cap is None:
                raise SourceError(f"{self.path}: not open")
            if index != self._next:
                cap.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = cap.read()
            self._next = index + 1 if ok else -1
        if not ok or frame is None:
            raise SourceError(f"{self.path}: cannot decode frame {index}")
        return media.bgr_to_rgb(frame)

    def close(self) -> None:
        with self._lock:
            if self._cap is not None:
                self._cap.release()
                self._cap = None
        self._frames = None
        super().close()


# --------------------------------------------------------------------------- relay


class RelaySource(Source):
    """Frames another node captured and relayed as JPEG on `edvit/<site>/frame/<camera>`.

    The MQTT layer calls `offer` (or `offer_jpeg`) from its network thread; `read(k)` waits
    at most `wait` seconds for tick k's frame. Only the newest `keep` ticks are held: an
    older frame, or one arriving after its tick was read, is dropped and counted.
    """

    kind = "relay"

    def __init__(self, camera: str, *, keep: int = 8, wait: float = 0.2) -> None:
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


# --------------------------------------------------------------------------- factory

# kind → (required option keys, optional option keys)
OPTIONS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "camera": (frozenset({"device"}), frozenset({"width", "height", "fps"})),
    "microphone": (frozenset(), frozenset({"device"})),
    "video": (frozenset({"path"}), frozenset()),
    "images": (frozenset({"folder"}), frozenset({"pattern"})),
    "wav": (frozenset({"folder"}), frozenset({"pattern"})),
    "relay": (frozenset({"camera"}), frozenset({"wait"})),
}


class SourceConfig(Protocol):
    """What the site config hands over: a pydantic model with `kind` and the options."""

    @property
    def kind(self) -> str: ...

    def model_dump(self) -> dict[str, Any]: ...


def _path(value: Any, base_dir: Path | None) -> Path:
    path = Path(str(value)).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def _opt_int(opts: Mapping[str, Any], key: str) -> int | None:
    return int(opts[key]) if key in opts else None


def make_source(
    kind: str,
    options: Mapping[str, Any] | SourceConfig,
    *,
    sample_rate: int | None = None,
    clip_samples: int | None = None,
    base_dir: Path | None = None,
) -> Source:
    """A source from a site config entry: a plain mapping of options, or the config's
    pydantic source model itself (its `kind` key must then equal `kind`).
    Options per kind (None values count as absent):

    - camera: `device` (index, /dev/videoN, video file or rtsp://…/http://… URL), optional
      `width`, `height`, `fps` (requested from the device; for a file, its pacing rate);
    - microphone: optional `device` (index or part of a name; default input if absent);
    - video: `path` (it wraps: tick k shows frame k mod M, as ticks count wall-clock time);
    - images: `folder`, optional `pattern` (glob, default `*`; `**/*.png` recurses);
    - wav: `folder`, optional `pattern` (glob, default `**/*`: .wav, .flac, .ogg);
    - relay: `camera` (the relaying camera's id), optional `wait` (s to wait for a frame).

    `sample_rate` / `clip_samples` (from the bundle's audio spec) are required by the audio
    kinds. Relative paths are taken relative to `base_dir` (the config file's folder).
    """
    if not isinstance(options, Mapping):
        options = options.model_dump()
    if kind not in OPTIONS:
        raise SourceError(f"unknown source kind {kind!r}; expected one of {sorted(OPTIONS)}")
    required, optional = OPTIONS[kind]
    opts = {k: v for k, v in options.items() if v is not None}
    if opts.pop("kind", kind) != kind:
        raise SourceError(f"{kind} source: options say kind {options['kind']!r}")
    unknown = sorted(set(opts) - required - optional)
    if unknown:
        raise SourceError(
            f"{kind} source: unknown option(s) {unknown}; known: {sorted(required | optional)}"
        )
    missing = sorted(required - set(opts))
    if missing:
        raise SourceError(f"{kind} source: missing option(s) {missing}")
    if kind in AUDIO_KINDS:
        if sample_rate is None or clip_samples is None:
            raise SourceError(f"{kind} source needs the bundle's sample_rate and clip_samples")
        if kind == "microphone":
            return MicrophoneSource(
                opts.get("device"), sample_rate=sample_rate, clip_samples=clip_samples
            )
        return WavSource(
            _path(opts["folder"], base_dir),
            sample_rate=sample_rate,
            clip_samples=clip_samples,
            pattern=str(opts.get("pattern", "**/*")),
        )
    if kind == "camera":
        device = _parse_device(opts["device"])
        if isinstance(device, str) and not _is_url(device) and not device.startswith("/dev/"):
            device = str(_path(device, base_dir))  # a video file standing in for a camera
        return CameraSource(
            device,
            width=_opt_int(opts, "width"),
            height=_opt_int(opts, "height"),
            fps=float(opts["fps"]) if "fps" in opts else None,
        )
    if kind == "video":
        return VideoSource(_path(opts["path"], base_dir))
    if kind == "images":
        return ImagesSource(_path(opts["folder"], base_dir), str(opts.get("pattern", "*")))
    return RelaySource(str(opts["camera"]), wait=float(opts.get("wait", 0.2)))


def source_for_spec(
    kind: str,
    options: Mapping[str, Any] | SourceConfig,
    spec: ImagePreprocess | AudioPreprocess,
    *,
    base_dir: Path | None = None,
) -> Source:
    """`make_source` for a bundle's preprocessing spec, refusing a camera on an audio model
    (and a microphone on an image model) before anything is opened."""
    if isinstance(spec, AudioPreprocess):
        if kind not in AUDIO_KINDS:
            raise SourceError(
                f"the bundle's model takes audio; a {kind!r} source delivers images "
                f"(use one of {sorted(AUDIO_KINDS)})"
            )
        return make_source(
            kind,
            options,
            sample_rate=spec.sample_rate,
            clip_samples=spec.clip_samples,
            base_dir=base_dir,
        )
    if kind not in IMAGE_KINDS:
        raise SourceError(
            f"the bundle's model takes images; a {kind!r} source delivers audio "
            f"(use one of {sorted(IMAGE_KINDS)})"
        )
    return make_source(kind, options, base_dir=base_dir)
