"""The running source of a node, built from its site config model.

The config models (`edvit.config.site.*SourceConfig`) are the one place for option names,
defaults and validation; this maps a validated model onto its source's constructor and
refuses a source whose samples the bundle's model cannot take, before anything is opened.
Paths arrive absolute: `load_site_config` resolves them against the config's folder.
"""

from __future__ import annotations

from edge_node.sources.base import Source, SourceError
from edge_node.sources.camera import CameraSource
from edge_node.sources.microphone import MicrophoneSource
from edge_node.sources.picamera import PicameraSource
from edge_node.sources.recording import RecordingSource
from edge_node.sources.relay import RelaySource
from edge_node.sources.replay import ImagesSource, VideoSource, WavSource
from edvit.config.site import (
    CameraSourceConfig,
    ImagesSourceConfig,
    MicrophoneSourceConfig,
    PicameraSourceConfig,
    RecordingSourceConfig,
    RelaySourceConfig,
    SourceConfig,
    VideoSourceConfig,
    WavSourceConfig,
)
from edvit.preprocess import AudioPreprocess, ImagePreprocess

SOURCES: dict[str, type[Source]] = {
    cls.kind: cls
    for cls in (
        CameraSource,
        PicameraSource,
        MicrophoneSource,
        VideoSource,
        ImagesSource,
        WavSource,
        RecordingSource,
        RelaySource,
    )
}
"""Every source by its config `kind`."""

SOURCE_KEYS: dict[str, str] = {
    "camera": "device",
    "picamera": "camera",
    "microphone": "device",
    "video": "path",
    "images": "folder",
    "wav": "folder",
    "recording": "path",
    "relay": "camera",
}
"""The config key naming what each kind opens: where an open failure points the user."""


def source_key(node_id: str, cfg: SourceConfig) -> str:
    """`nodes.<id>.source.<key>`: the key an open failure of this source is about."""
    return f"nodes.{node_id}.source.{SOURCE_KEYS[cfg.kind]}"


def build_source(
    cfg: SourceConfig, spec: ImagePreprocess | AudioPreprocess, *, period_s: float
) -> Source:
    """The source `cfg` describes, for a bundle preprocessing with `spec` and a site ticking
    every `period_s` (not opened yet); SourceError for a camera on an audio model or a
    microphone on an image model."""
    match cfg, spec:
        case CameraSourceConfig(), ImagePreprocess():
            return CameraSource(cfg.device, width=cfg.width, height=cfg.height, fps=cfg.fps)
        case PicameraSourceConfig(), ImagePreprocess():
            return PicameraSource(cfg.camera, width=cfg.width, height=cfg.height, fps=cfg.fps)
        case VideoSourceConfig(), ImagePreprocess():
            return VideoSource(cfg.path)
        case ImagesSourceConfig(), ImagePreprocess():
            return ImagesSource(cfg.folder, cfg.pattern)
        case RelaySourceConfig(), ImagePreprocess():
            return RelaySource(cfg.camera, wait=cfg.wait)
        case MicrophoneSourceConfig(), AudioPreprocess():
            return MicrophoneSource(
                cfg.device, sample_rate=spec.sample_rate, clip_samples=spec.clip_samples
            )
        case WavSourceConfig(), AudioPreprocess():
            return WavSource(
                cfg.folder,
                sample_rate=spec.sample_rate,
                clip_samples=spec.clip_samples,
                pattern=cfg.pattern,
            )
        case RecordingSourceConfig(), AudioPreprocess():
            return RecordingSource(
                cfg.path,
                sample_rate=spec.sample_rate,
                clip_samples=spec.clip_samples,
                period_s=period_s,
            )
    wants = "audio" if isinstance(spec, AudioPreprocess) else "images"
    fitting = sorted(kind for kind, cls in SOURCES.items() if cls.delivers == wants)
    raise SourceError(
        f"the bundle's model takes {wants}; a {cfg.kind!r} source delivers "
        f"{SOURCES[cfg.kind].delivers} (use one of {fitting})"
    )
