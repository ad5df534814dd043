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
for tests and the demo); `recording` plays one long sound file as a stream, tick k hearing
the window that ends k·period_s into it (`file@seconds`).

One module per concern: `base` (the interface, Sample, counters, the audio ring), `grab`
(the newest-frame grab thread of live cameras), `camera` (OpenCV), `picamera` (picamera2),
`microphone`, `replay` (files), `recording` (a long sound file as a stream), `relay`,
`jpeg`, and `build` (a source from its site config model). OpenCV is imported at module
level (every node needs it for images or JPEG relay); sounddevice, soxr and picamera2
only where used, so an image node never loads PortAudio or a resampler.
"""

from edge_node.sources.base import (
    AudioRing,
    MissingLibraryError,
    Sample,
    Source,
    SourceError,
    SourceStats,
)
from edge_node.sources.build import SOURCE_KEYS, SOURCES, build_source, source_key
from edge_node.sources.camera import CameraSource
from edge_node.sources.grab import GrabSource
from edge_node.sources.jpeg import decode_jpeg, encode_jpeg
from edge_node.sources.microphone import MicrophoneSource
from edge_node.sources.picamera import PicameraSource
from edge_node.sources.recording import RecordingSource
from edge_node.sources.relay import RelaySource
from edge_node.sources.replay import (
    FolderSource,
    ImagesSource,
    ReplaySource,
    VideoSource,
    WavSource,
)

__all__ = [
    "SOURCES",
    "SOURCE_KEYS",
    "AudioRing",
    "CameraSource",
    "FolderSource",
    "GrabSource",
    "ImagesSource",
    "MicrophoneSource",
    "MissingLibraryError",
    "PicameraSource",
    "RecordingSource",
    "RelaySource",
    "ReplaySource",
    "Sample",
    "Source",
    "SourceError",
    "SourceStats",
    "VideoSource",
    "WavSource",
    "build_source",
    "decode_jpeg",
    "encode_jpeg",
    "source_key",
]
