"""A long recording played as a live stream: tick k hears the window that ends k·period_s
into it (looping), as a microphone would have heard it at that tick.

With a tick period shorter than the window (1 s windows every 0.25 s) the windows overlap,
so a word is heard whole in some window wherever it falls. Each window is read with a seek
(no decoding of the whole file, so an hour-long file costs what a one-second one does),
mixed down and resampled as `edvit.media` reads any sound file, and fixed to the clip.
Nodes started independently agree on what tick k hears, as with the replay sources.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_node.sources.base import Sample, Source, SourceError
from edvit import media
from edvit.preprocess import fix_length

log = logging.getLogger(__name__)


class RecordingSource(Source):
    """One sound file → the window of `clip_samples` at `sample_rate` ending at k·period_s
    (mod the file's length); `Sample.item` is `file@seconds`, the window's end."""

    kind = "recording"
    delivers = "audio"

    def __init__(
        self, path: str | Path, *, sample_rate: int, clip_samples: int, period_s: float
    ) -> None:
        super().__init__()
        if sample_rate < 1 or clip_samples < 1 or period_s <= 0:
            raise SourceError(
                f"recording {path}: sample_rate, clip_samples and period_s must be positive"
            )
        self.path = Path(path).expanduser()
        self.sample_rate = sample_rate
        self.clip_samples = clip_samples
        self.period_s = period_s
        self._file: Any = None
        self._rate = 0  # the file's own sample rate
        self._frames = 0  # its length in samples
        self._window = 0  # the window's length in the file's samples
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"recording {self.path}"

    @property
    def duration_s(self) -> float:
        """The recording's length (after open)."""
        return self._frames / self._rate if self._rate else 0.0

    def open(self) -> None:
        import soundfile as sf

        if not self.path.is_file():
            raise SourceError(f"{self.path}: no such sound file")
        try:
            f = sf.SoundFile(str(self.path))
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise SourceError(f"{self.path}: not a readable sound file ({exc})") from None
        if f.frames <= 0 or not f.seekable():
            f.close()
            raise SourceError(f"{self.path}: no samples, or a stream that cannot seek")
        self._file, self._rate, self._frames = f, int(f.samplerate), int(f.frames)
        self._window = math.ceil(self.clip_samples * self._rate / self.sample_rate)

    def end_sample(self, tick: int) -> int:
        """Where the window of `tick` ends, in the file's samples (looped)."""
        return round(tick * self.period_s * self._rate) % self._frames

    def read(self, tick: int) -> Sample | None:
        import soundfile as sf

        with self._lock:
            f = self._file
            if f is None:
                raise SourceError(f"{self.path}: not open")
            end = self.end_sample(tick)
            pos, left, chunks = (end - self._window) % self._frames, self._window, []
            try:
                while left > 0:  # across the loop point (or round a file shorter than a window)
                    n = min(left, self._frames - pos)
                    f.seek(pos)
                    chunks.append(f.read(n, dtype="float32", always_2d=True))
                    left, pos = left - n, 0
            except (sf.LibsndfileError, RuntimeError) as exc:
                self._counters.add("errors")
                log.warning("%s: cannot read at sample %d: %s", self.path, pos, exc)
                return self._deliver(None)
        wave = media.resample(media.mono(np.concatenate(chunks)), self._rate, self.sample_rate)
        item = f"{self.path.name}@{end / self._rate:.3f}"
        data = fix_length(wave, self.clip_samples)
        return self._deliver(Sample(tick=tick, ts=time.time(), data=data, item=item))

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
