"""Replayed files (a folder of images or sound files, a video): tick k shows item k mod M.

Nodes started independently agree on what tick k shows, and `Sample.item` names the item
(ground truth for tests and the demo). Files are read by `edvit.media`, as the training
loaders read them, so a replayed file gives the training sample.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import abstractmethod
from pathlib import Path

import cv2
import numpy as np

from edge_node.sources.base import Sample, Source, SourceError, UInt8Array
from edvit import media
from edvit.preprocess import fix_length

log = logging.getLogger(__name__)


class ReplaySource(Source):
    """Tick k → item k mod M of a fixed, sorted list (the same on every node)."""

    def __init__(self) -> None:
        super().__init__()
        self._items: list[str] = []

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
        except (SourceError, media.MediaError) as exc:  # one bad file must not stop the node
            self._counters.add("errors")
            log.warning("%s", exc)
            return self._deliver(None)
        return self._deliver(Sample(tick=tick, ts=time.time(), data=data, item=self._items[i]))

    def close(self) -> None:
        """A list of files holds nothing open (VideoSource releases its capture)."""


class FolderSource(ReplaySource):
    """The files of `folder` matching `pattern` with one of `extensions`, sorted by relative
    path (hidden entries skipped); `pattern` may recurse (`**/*.png`)."""

    extensions: frozenset[str]

    def __init__(self, folder: str | Path, pattern: str) -> None:
        super().__init__()
        self.folder = Path(folder).expanduser()
        self.pattern = pattern
        self._paths: list[Path] = []

    @property
    def name(self) -> str:
        return f"{self.kind} {self.folder}"

    def open(self) -> None:
        folder, pattern, extensions = self.folder, self.pattern, self.extensions
        if not folder.is_dir():
            raise SourceError(f"{folder}: not a folder (it does not exist or is a file)")
        found = sorted(
            (p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in extensions),
            key=lambda p: p.relative_to(folder).as_posix(),
        )
        found = [
            p for p in found if not any(s.startswith(".") for s in p.relative_to(folder).parts)
        ]
        if not found:
            what = "image" if self.delivers == "images" else "sound"
            raise SourceError(
                f"{folder}: no {what} files matching {pattern!r} "
                f"(extensions {', '.join(sorted(extensions))})"
            )
        self._paths = found
        self._items = [p.relative_to(folder).as_posix() for p in found]


class ImagesSource(FolderSource):
    """A folder of images, each read as HWC uint8 RGB."""

    kind = "images"
    delivers = "images"
    extensions = media.IMAGE_EXTENSIONS

    def _load(self, index: int) -> np.ndarray:
        return media.read_image(self._paths[index])


class WavSource(FolderSource):
    """A folder of sound files, each mixed down, resampled and fixed to the clip (centre-crop
    or zero-pad, the same `fix_length` as the preprocessing)."""

    kind = "wav"
    delivers = "audio"
    extensions = media.SOUND_EXTENSIONS

    def __init__(
        self, folder: str | Path, *, sample_rate: int, clip_samples: int, pattern: str
    ) -> None:
        super().__init__(folder, pattern)
        self.sample_rate = sample_rate
        self.clip_samples = clip_samples

    def _load(self, index: int) -> np.ndarray:
        return fix_length(media.read_wav(self._paths[index], self.sample_rate), self.clip_samples)


class VideoSource(ReplaySource):
    """A video file: tick k → frame k mod frame_count (RGB).

    Short videos (decoded size ≤ `cache_mib`) are decoded once at open: the frame count is
    then exact (container headers can be wrong) and a tick costs no decoding. Longer ones
    are read on demand, seeking with CAP_PROP_POS_FRAMES only when the wanted frame is not
    the next one.
    """

    kind = "video"
    delivers = "images"

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
