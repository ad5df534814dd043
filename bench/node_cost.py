"""A node's own cost: resident memory and start-up time of a real `edge-node` process.

For each geometry a random-weight bundle (bench/bundles.py) and one node hosting its first
sub-model, fed by a file source that needs no hardware (a folder with one image; a sound
file played as a microphone stream by the `recording` source), against a real mosquitto:
  - ready_s: from just before the process is started to the arrival of its first feature
    message (imports, the bundle's sha256 of its ONNX, the ONNX session, the warm-up —
    ONNX Runtime's first runs and, for audio, the mel filter bank — the broker connection,
    and the wait for the first tick, at most one `period_s`); online_s: to its retained
    `online` status, published once connected (everything but the first tick);
  - RSS from /proc/<pid>/status: VmRSS `steady_s` seconds after the first feature, and the
    peak, VmHWM (the kernel's high-water mark over the process's life, start-up included).
Nothing a node loads keeps a cache between starts (the audio front-end is numpy alone,
`edvit.melspec`; no numba JIT), so each node starts once.
Geometries: `vit-b`, the ViT-B/16 N = 10 sub-model (2 heads of 64) on 224 px images; for
audio, `keywords`, the keyword recipe's own base, N and log-mel front-end, and `vit-b-audio`,
the same ViT-B sub-model on 224 mel bands × 224 frames (one channel), the largest model with
the audio front-end beside it; `tiny` and `tiny-audio` for the test.
Goals (issue 12): peak RSS ≤ 250 MB, ready ≤ 10 s on this machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from edvit import media, topics
from edvit.bundle import load_bundle
from edvit.config.loader import load_config
from edvit.config.recipe import Recipe
from edvit.preprocess import AudioPreprocess, ImagePreprocess
from modelgen.sizing import MIB
from modelgen.vit_shape import parse_arch

from bundles import random_bundle

ROOT = Path(__file__).resolve().parent.parent
SITE = "nodecost"
PERIOD_S = 0.1  # the first tick comes at most this long after the node is up
GOAL_RSS_MB = 250.0
GOAL_READY_S = 10.0
KEYWORDS = ROOT / "config" / "modelgen" / "keywords.yaml"
KEYWORD_CLASSES = 12  # yes no up down left right on off stop go _unknown_ _silence_


@dataclass(frozen=True)
class Geometry:
    """A node to measure: the base it is cut from, N, classes and the front-end."""

    arch: str  # timm name or vit: spec
    n: int
    classes: int
    preprocess: ImagePreprocess | AudioPreprocess


def keyword_geometry() -> Geometry:
    """The keyword recipe's own base, N and front-end (config/modelgen/keywords.yaml)."""
    recipe = load_config(KEYWORDS, Recipe)
    n = recipe.plan.num_submodels
    if not isinstance(recipe.preprocess, AudioPreprocess) or n is None:
        raise ValueError(f"{KEYWORDS}: expected an audio preprocess and plan.num_submodels")
    return Geometry(recipe.model.arch, n, KEYWORD_CLASSES, recipe.preprocess)


GEOMETRIES: dict[str, Callable[[], Geometry]] = {
    # the paper's geometry: ViT-B/16 at 224 px, N = 10 → 2 heads of 64
    "vit-b": lambda: Geometry(
        "vit_base_patch16_224", 10, 10, ImagePreprocess(height=224, width=224, channels=3)
    ),
    # the same sub-model on 224 mel bands × 224 frames of 1 s (one channel): the biggest
    # model with the audio front-end beside it
    "vit-b-audio": lambda: Geometry(
        "vit:img=224,patch=16,chans=1,embed=768,depth=12,heads=12",
        10,
        10,
        AudioPreprocess(n_fft=2048, hop_length=71, n_mels=224, n_frames=224, fmin=40.0),
    ),
    "keywords": keyword_geometry,
    "tiny": lambda: Geometry(
        "vit:img=32,patch=8,chans=3,embed=32,depth=2,heads=4",
        2,
        4,
        ImagePreprocess(height=32, width=32, channels=3),
    ),
    "tiny-audio": lambda: Geometry(
        "vit:img=16,patch=8,chans=1,embed=32,depth=1,heads=4",
        2,
        4,
        AudioPreprocess(n_fft=256, hop_length=1000, n_mels=16, n_frames=16),
    ),
}


def _source(spec: ImagePreprocess | AudioPreprocess, work: Path) -> dict[str, Any]:
    """A file source for the node: one random image in a folder, or 3 s of noise played as
    a microphone stream (1 s windows every tick)."""
    rng = np.random.default_rng(0)
    work.mkdir(parents=True, exist_ok=True)
    if isinstance(spec, ImagePreprocess):
        folder = work / "images"
        folder.mkdir(exist_ok=True)
        image = rng.integers(0, 256, (spec.height, spec.width, 3), dtype=np.uint8)
        media.write_image(folder / "0.png", image)
        return {"kind": "images", "folder": str(folder)}
    wave = 0.1 * rng.standard_normal(3 * spec.sample_rate)
    path = work / "noise.wav"
    media.write_wav(path, wave, spec.sample_rate)
    return {"kind": "recording", "path": str(path)}


def _vm_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a live process, KiB; {} once it has gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


class _Watch:
    """Arrival times (monotonic) of the node's live `online` status and feature messages."""

    def __init__(self, host: str, port: int, node: str, sub: str) -> None:
        self.status_topic = topics.node_status(SITE, node)
        self.feat_topic = topics.feat(SITE, node, sub)
        self.online: float | None = None
        self.features: list[float] = []
        self.first_feature = threading.Event()
        subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{SITE}-watch-{node}")
        self.client.on_connect = lambda c, *a: c.subscribe(
            [(self.status_topic, 1), (self.feat_topic, 1)]
        )
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError(f"could not subscribe on {host}:{port}")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        now = time.monotonic()
        if msg.retain:  # a status left by an earlier run, not this process's
            return
        if msg.topic == self.status_topic:
            if msg.payload == topics.ONLINE.encode() and self.online is None:
                self.online = now
        else:
            self.features.append(now)
            self.first_feature.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def describe(bundle: Path, source: dict[str, Any]) -> dict[str, Any]:
    """What the node measured runs: its sub-model (the bundle's first) and source."""
    sub = load_bundle(bundle, verify=False).manifest.submodels[0]
    return {
        "submodel": sub.id,
        "heads": sub.heads,
        "embed_dim": sub.embed_dim,
        "input_shape": sub.input_shape,
        "onnx_mib": sub.onnx.bytes / MIB,
        "source": source["kind"],
    }


def measure_node(
    bundle: Path,
    source: dict[str, Any],
    broker: tuple[str, int],
    work: Path,
    node: str,
    *,
    period_s: float = PERIOD_S,
    steady_s: float = 5.0,
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Start `edge-node run` hosting the bundle's first sub-model; its start-up time and RSS."""
    sub = load_bundle(bundle, verify=False).manifest.submodels[0]
    host, port = broker
    site = {
        "site": SITE,
        "broker": {"host": host, "port": port, "auth": "none"},
        "tick": {"period_s": period_s, "deadline_s": max(0.5, period_s)},
        "nodes": {node: {"source": source, "submodels": [sub.id]}},
    }
    config = work / f"site-{node}.yaml"
    config.write_text(yaml.safe_dump(site))
    edge_node = str(Path(sys.executable).parent / "edge-node")
    cmd = [edge_node, "run", "--bundle", str(bundle), "--config", str(config), "--node", node]
    load = list(os.getloadavg())  # the other jobs the node shares the cores with
    watch = _Watch(host, port, node, sub.id)
    try:
        started = time.monotonic()
        proc = subprocess.Popen([*cmd, "--log-level", "WARNING"], stdin=subprocess.DEVNULL)
        try:
            while not watch.first_feature.wait(0.05):
                if proc.poll() is not None:
                    raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}")
                if time.monotonic() - started > timeout_s:
                    raise RuntimeError(f"edge-node published no feature within {timeout_s:g} s")
            first = watch.features[0]
            time.sleep(steady_s)
            vm = _vm_kib(proc.pid)
            if proc.poll() is not None or not vm:
                raise RuntimeError(f"edge-node ended before its RSS was read ({proc.returncode})")
            in_steady = sum(1 for t in watch.features if t > first)
        finally:
            proc.terminate()
            proc.wait(20)
    finally:
        watch.close()
    return {
        "online_s": None if watch.online is None else watch.online - started,
        "ready_s": first - started,
        "rss_steady_mib": vm["VmRSS"] * 1024 / MIB,
        "rss_peak_mib": vm["VmHWM"] * 1024 / MIB,
        "period_s": period_s,
        "steady_s": steady_s,
        "features_in_steady": in_steady,
        "exit_code": proc.returncode,
        "load_average": load,
    }


def node_cost(
    keys: list[str],
    broker: tuple[str, int],
    work: Path,
    log: Callable[[str], None],
    steady_s: float = 5.0,
) -> dict[str, Any]:
    """Build each geometry's bundle and start its node; the rows and the goals."""
    rows: dict[str, Any] = {}
    load_at_start = list(os.getloadavg())
    for key in keys:
        geo = GEOMETRIES[key]()
        t0 = time.perf_counter()
        bundle = random_bundle(
            work / key / "bundle",
            parse_arch(geo.arch),
            geo.n,
            geo.classes,
            geo.preprocess,
            arch=geo.arch,
        )
        log(f"node cost {key}: bundle built in {time.perf_counter() - t0:.1f} s")
        source = _source(geo.preprocess, work / key)
        row: dict[str, Any] = {"arch": geo.arch, "n": geo.n, "classes": geo.classes}
        row |= describe(bundle, source)
        row["start"] = start = measure_node(
            bundle, source, broker, work, f"node-{key}", steady_s=steady_s
        )
        log(f"node cost {key}: {start}")
        row["goals"] = {
            "rss_le_250_mb": start["rss_peak_mib"] * MIB / 1e6 <= GOAL_RSS_MB,
            "ready_le_10_s": start["ready_s"] <= GOAL_READY_S,
        }
        rows[key] = row
    return {
        "load_average": {"start": load_at_start, "end": list(os.getloadavg())},
        "cpus": os.cpu_count(),
        "goals": {"rss_peak_mb": GOAL_RSS_MB, "ready_s": GOAL_READY_S},
        "nodes": rows,
    }
