"""What every source shares: the Source interface, Sample, the counters, the audio ring.

The package docstring (`edge_node.sources`) states the contract of `read`.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import ClassVar, Literal, Self

import numpy as np
import numpy.typing as npt

from edge_node.counters import Counters

FloatArray = npt.NDArray[np.float32]
UInt8Array = npt.NDArray[np.uint8]


class SourceError(Exception):
    """A source that cannot deliver: the message names the device, file or URL."""


class MissingLibraryError(SourceError):
    """A library the source needs is not installed (a restart cannot fix it: exit 2)."""


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


class Source(ABC):
    """One capture source. Use as `with source: ... source.read(k) ...` or open()/close()."""

    kind: ClassVar[str]
    delivers: ClassVar[Literal["images", "audio"]]
    """What `Sample.data` holds: HWC uint8 RGB images, or 1-D float32 mono audio windows."""

    def __init__(self) -> None:
        self._counters = Counters(f.name for f in fields(SourceStats))

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
        return SourceStats(**self._counters.snapshot())

    def read_within(self, tick: int, timeout: float) -> Sample | None:
        """`read` until it gives a sample or `timeout` s pass (a microphone fills its first
        window, a camera may miss a frame): what a check of an open source needs, never the
        tick loop (which must not wait)."""
        deadline = time.monotonic() + timeout
        while (sample := self.read(tick)) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return sample

    def _deliver(self, sample: Sample | None) -> Sample | None:
        self._counters.add("reads" if sample is not None else "misses")
        return sample

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def parse_device(device: int | str) -> int | str:
    """'0' → 0 (a V4L2 index); anything else stays a path or URL."""
    if isinstance(device, str) and device.strip().isdigit():
        return int(device.strip())
    return device


def is_url(target: int | str) -> bool:
    return isinstance(target, str) and "://" in target


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
