"""`edge-node probe` and `edge-node devices`: is the capture hardware there, and does it see
and hear what the model should?

`probe` opens a node's source exactly as the service does (`build_source` on the node's
config) and reports a few samples (shape, dtype, rate, level) with a snapshot of each, so a
black frame, a muted microphone or a 44.1 kHz device show before a model meets them.
`devices` lists what could be a source on this host, each with the config that selects it.
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_node.sources import (
    SOURCES,
    MicrophoneSource,
    RelaySource,
    ReplaySource,
    Sample,
    Source,
    SourceError,
    build_source,
    source_key,
)
from edvit import media
from edvit.config import ConfigError
from edvit.config.site import SiteConfig
from edvit.preprocess import AudioPreprocess, ImagePreprocess

LIVE_INTERVAL_S = 0.5
"""Before each sample of a live source: long enough to measure its rate."""
SAMPLE_TIMEOUT_S = 10.0
"""How long a live source may take to give its first sample (a camera's first frame comes
within its own open timeout; a microphone needs a whole window)."""
V4L2 = Path("/sys/class/video4linux")


@dataclass(frozen=True)
class Reading:
    """One probed sample: what the source gave and where its snapshot went."""

    sample: Sample
    rate: float
    """Capture rate since the previous reading: frames/s of a camera, samples/s of a
    microphone (at the device's own rate), reads/s of a replay source."""
    unit: str
    snapshot: Path

    def describe(self) -> str:
        data = self.sample.data
        if data.dtype == np.uint8:
            level = f"brightness mean {data.mean():.1f} min {data.min()} max {data.max()}"
        else:
            rms = float(np.sqrt(np.mean(np.square(data, dtype=np.float64))))
            peak = float(np.max(np.abs(data))) if data.size else 0.0
            level = f"level {_dbfs(rms)} RMS, peak {peak:.3f} ({_dbfs(peak)})"
        item = f", item {self.sample.item}" if self.sample.item is not None else ""
        return (
            f"shape {tuple(data.shape)} {data.dtype}, {self.rate:.1f} {self.unit}, {level}{item}"
            f" → {self.snapshot}"
        )


def _dbfs(value: float) -> str:
    return f"{20 * math.log10(value):.1f} dBFS" if value > 0 else "-inf dBFS"


Spec = ImagePreprocess | AudioPreprocess


def open_node_source(
    cfg: SiteConfig, node_id: str, spec: Spec | None, config_source: str
) -> tuple[Source, Spec]:
    """The node's source, built as the service builds it for the bundle preprocessing
    `spec`, and opened; with the spec. None: the front-end's defaults (only an audio source
    uses them: 16 kHz, 1 s windows). ConfigError naming the key for an unknown node, a
    source the model cannot take, one that cannot open, and a relay source (its frames come
    from another node: probe that one)."""
    if node_id not in cfg.nodes:
        raise ConfigError(config_source, [f"nodes: no node {node_id!r} (has {sorted(cfg.nodes)})"])
    source_cfg = cfg.nodes[node_id].source
    if spec is None:
        audio = SOURCES[source_cfg.kind].delivers == "audio"
        spec = AudioPreprocess() if audio else ImagePreprocess(height=224, width=224)
    try:
        source = build_source(source_cfg, spec, period_s=cfg.tick.period_s)
    except SourceError as exc:
        raise ConfigError(config_source, [f"nodes.{node_id}.source: {exc}"]) from None
    if isinstance(source, RelaySource):
        raise ConfigError(
            config_source,
            [
                f"{source_key(node_id, source_cfg)}: a relay source gets its frames from node "
                f"{source.camera!r} over MQTT; probe that node instead"
            ],
        )
    try:
        source.open()
    except SourceError as exc:
        raise ConfigError(config_source, [f"{source_key(node_id, source_cfg)}: {exc}"]) from None
    return source, spec


def _captured(source: Source) -> tuple[int, str]:
    """What the source has captured so far, and its unit."""
    if isinstance(source, MicrophoneSource):
        return source.ring.total, "samples/s"
    if isinstance(source, ReplaySource):
        return source.stats.reads, "reads/s"
    return source.stats.frames_in, "frames/s"


def probe(
    source: Source,
    *,
    samples: int,
    out: Path,
    stem: str,
    spec: Spec,
    report: Callable[[int, Reading], None],
) -> list[Reading]:
    """Read `samples` samples from the open `source` (built for `spec`) and write each as
    `<stem>-<i>.png`, or `.wav` at the spec's rate, into `out`; `report` gets each reading
    as it comes. SourceError when a live source gives no sample within SAMPLE_TIMEOUT_S."""
    out.mkdir(parents=True, exist_ok=True)
    live = not isinstance(source, ReplaySource)
    readings: list[Reading] = []
    count, unit = _captured(source)
    since = time.monotonic()
    for i in range(samples):
        if live:  # so that even the first reading has a rate
            time.sleep(LIVE_INTERVAL_S)
        sample = source.read_within(i, SAMPLE_TIMEOUT_S)
        if sample is None:
            raise SourceError(f"{source.name}: gave no sample within {SAMPLE_TIMEOUT_S:g} s")
        now = time.monotonic()
        total, unit = _captured(source)
        rate = (total - count) / max(now - since, 1e-9)
        count, since = total, now
        if isinstance(spec, AudioPreprocess):
            snapshot = out / f"{stem}-{i}.wav"
            media.write_wav(snapshot, sample.data, spec.sample_rate)
        else:
            snapshot = out / f"{stem}-{i}.png"
            media.write_image(snapshot, sample.data)
        reading = Reading(sample=sample, rate=rate, unit=unit, snapshot=snapshot)
        report(i, reading)
        readings.append(reading)
    return readings


# --- devices ------------------------------------------------------------------------------


def v4l2_cameras(sysfs: Path = V4L2) -> list[dict[str, Any]]:
    """Every /dev/videoN the kernel names in sysfs (a USB camera has a capture and a
    metadata node; a Pi's ISP and codec show here too: their names tell them apart)."""
    found = []
    for entry in sorted(sysfs.glob("video*"), key=lambda p: _number(p.name)):
        try:
            name = (entry / "name").read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            name = "?"
        found.append({"kind": "camera", "device": f"/dev/{entry.name}", "name": name})
    return found


def _number(name: str) -> int:
    digits = name.removeprefix("video")
    return int(digits) if digits.isdigit() else -1


def picameras() -> tuple[list[dict[str, Any]], str | None]:
    """libcamera's cameras when picamera2 is importable, and a note when it is not."""
    if importlib.util.find_spec("picamera2") is None:
        return [], "picamera2 is not installed: Raspberry Pi camera modules not listed"
    try:
        from picamera2 import Picamera2

        info = Picamera2.global_camera_info()
    except Exception as exc:  # libcamera raises what it likes
        return [], f"picamera2 cannot list cameras ({type(exc).__name__}: {exc})"
    cameras = [
        {
            "kind": "picamera",
            "camera": int(cam.get("Num", i)),
            "name": str(cam.get("Model", "?")),
            "id": str(cam.get("Id", "")),
        }
        for i, cam in enumerate(info)
    ]
    return cameras, None


def microphones() -> tuple[list[dict[str, Any]], str | None]:
    """sounddevice's input devices, and a note when PortAudio is missing."""
    try:
        import sounddevice as sd
    except OSError as exc:  # the PortAudio library itself is missing
        return [], f"PortAudio is not available ({exc}): microphones not listed"
    try:
        devices = sd.query_devices()
        default = sd.default.device[0]
    except sd.PortAudioError as exc:
        return [], f"PortAudio cannot list devices ({exc})"
    found = [
        {
            "kind": "microphone",
            "device": index,
            "name": str(dev["name"]),
            "channels": int(dev["max_input_channels"]),
            "default_rate": float(dev["default_samplerate"]),
            "default": index == default,
        }
        for index, dev in enumerate(devices)
        if int(dev["max_input_channels"]) > 0
    ]
    return found, None


def list_devices(sysfs: Path = V4L2) -> dict[str, Any]:
    """`edge-node devices --json`: {cameras: [...], microphones: [...], notes: [...]}."""
    pis, pi_note = picameras()
    mics, mic_note = microphones()
    return {
        "cameras": v4l2_cameras(sysfs) + pis,
        "microphones": mics,
        "notes": [n for n in (pi_note, mic_note) if n is not None],
    }


def format_devices(found: dict[str, Any]) -> str:
    """The listing for people: each device with the `source:` that selects it."""
    lines = ["cameras:"]
    for cam in found["cameras"]:
        if cam["kind"] == "picamera":
            lines.append(
                f"  picamera {cam['camera']}  {cam['name']}  "
                f"(source: {{kind: picamera, camera: {cam['camera']}}})"
            )
        else:
            lines.append(
                f"  {cam['device']}  {cam['name']}  "
                f"(source: {{kind: camera, device: {cam['device']}}})"
            )
    if not found["cameras"]:
        lines.append("  none found")
    lines.append("microphones:")
    for mic in found["microphones"]:
        default = ", the default input" if mic["default"] else ""
        lines.append(
            f"  {mic['device']}  {mic['name']}  {mic['channels']} ch, "
            f"{mic['default_rate']:g} Hz{default}  "
            f"(source: {{kind: microphone, device: {mic['device']}}})"
        )
    if not found["microphones"]:
        lines.append("  none found")
    lines += [f"note: {note}" for note in found["notes"]]
    return "\n".join(lines)
