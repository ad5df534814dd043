"""`edvit demo --keywords`: a microphone node hearing a recording, and the events it gives.

The keyword bundle's test clips are strung into one recording (a few background clips —
`_silence_`, `_unknown_` — then a keyword, again and again), which the nodes play as a
microphone would hear it (`recording` source: 1 s windows every tick); the demo prints each
event as it fires with the keyword really there, and at the end the hits and false accepts
of one pass over the recording. Like `edvit demo`, it only starts commands.
"""

from __future__ import annotations

import json
import queue
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import yaml

from edvit import media, topics
from edvit.bundle import Bundle
from edvit.config.site import BrokerConfig
from edvit.demo.run import (
    Children,
    DemoError,
    DemoOptions,
    command,
    ensure_bundle,
    node_layout,
    run_step,
    site_config,
    use_broker,
)
from edvit.mqtt import Message, MqttClient
from edvit.preprocess import AudioPreprocess

BACKGROUND_BETWEEN = 3  # background clips before each keyword
KEYWORDS_IN_DEMO = 8


@dataclass(frozen=True)
class Spoken:
    """A keyword clip's place in the recording (seconds)."""

    label: str
    start_s: float
    end_s: float


def score_events(
    events: list[tuple[str, float]], keywords: list[Spoken], window_s: float
) -> dict[str, Any]:
    """Hits (an event of the word ending within its clip or one window after; each keyword
    once) and false accepts (every other event)."""
    hit = [False] * len(keywords)
    false = 0
    for label, end in events:
        match = next(
            (
                i
                for i, kw in enumerate(keywords)
                if not hit[i] and kw.label == label and kw.start_s < end <= kw.end_s + window_s
            ),
            None,
        )
        if match is None:
            false += 1
        else:
            hit[match] = True
    return {
        "keywords": len(keywords),
        "hits": sum(hit),
        "hit_rate": sum(hit) / len(keywords) if keywords else None,
        "false_accepts": false,
    }


def make_recording(bundle: Bundle, out: Path) -> tuple[list[Spoken], float]:
    """The recording of the bundle's test clips (replay/), and where its keywords are."""
    spec = bundle.manifest.preprocess
    if not isinstance(spec, AudioPreprocess):
        raise DemoError(f"{bundle.root}: --keywords needs an audio bundle")
    m = bundle.manifest
    items = json.loads((bundle.root / "replay" / "labels.json").read_text())["items"]
    background = [i for i in items if m.classes[i["label"]] in m.background_classes]
    words = [i for i in items if m.classes[i["label"]] not in m.background_classes]
    if not background or not words:
        raise DemoError(f"{bundle.root}: its test split needs background and keyword clips")
    rate, clip = spec.sample_rate, spec.clip_samples
    pieces: list[np.ndarray] = []
    spoken: list[Spoken] = []
    for k in range(min(KEYWORDS_IN_DEMO, len(words))):
        word = words[k * len(words) // KEYWORDS_IN_DEMO]
        gap = [
            background[(k * BACKGROUND_BETWEEN + j) % len(background)]
            for j in range(BACKGROUND_BETWEEN)
        ]
        for item in [*gap, word]:
            if item is word:
                start = len(pieces) * clip / rate
                spoken.append(Spoken(m.classes[item["label"]], start, start + clip / rate))
            wave = media.read_wav(bundle.root / "replay" / item["file"], rate)[:clip]
            pieces.append(np.pad(wave, (0, clip - len(wave))))
    media.write_wav(out, np.concatenate(pieces), rate)
    return spoken, len(pieces) * clip / rate


def run_keyword_demo(
    opts: DemoOptions, out: TextIO = sys.stdout, log: TextIO = sys.stderr
) -> dict[str, Any]:
    """Play the recording once round through the site; print events; the final counts."""
    if not (opts.bundle / "manifest.json").is_file():
        recipe = yaml.safe_load(opts.recipe.read_text())
        root = (opts.recipe.parent / recipe["dataset"]["root"]).resolve()
        if not root.is_dir():
            cmd = [command("modelgen"), "dataset", "keywords", "--out", str(root)]
            run_step("making the keyword dataset (first run only)", cmd, log)
    bundle = ensure_bundle(opts, log)
    opts.workdir.mkdir(parents=True, exist_ok=True)
    recording = opts.workdir / "recording.wav"
    spoken, duration = make_recording(bundle, recording)
    children = Children()
    broker = None
    client = None
    events: list[tuple[str, float]] = []
    try:
        broker, host, port = use_broker(opts, log)
        site = site_config(bundle, host, port, opts.period_s)
        source = {"kind": "recording", "path": str(recording)}
        for node in site["nodes"].values():
            node["source"] = source  # every node hears the same microphone
        config = opts.workdir / "site.yaml"
        config.write_text(yaml.safe_dump(site, sort_keys=False))
        print(
            f"demo: {len(spoken)} keywords in {duration:.0f} s of recording, nodes "
            f"{node_layout(bundle)}",
            file=log,
            flush=True,
        )
        inbox: queue.Queue[Message] = queue.Queue(maxsize=10_000)
        client = MqttClient(
            BrokerConfig(host=host, port=port, auth="none"),
            client_id=topics.client_id("demo", "viewer"),
            status_topic=f"{topics.PREFIX}/demo/viewer/status",
            subscriptions=[(topics.result("demo"), 0), (topics.event("demo"), 1)],
            inbox=inbox,
        )
        if not client.connect_and_wait(10):
            raise DemoError(f"the broker at {host}:{port} does not answer")
        children.start_site(opts, config, list(site["nodes"]))
        first: float | None = None
        while first is None or time.time() < first + duration:
            try:
                msg = inbox.get(timeout=1.0)
            except queue.Empty:
                children.check(opts.workdir)
                continue
            data = json.loads(msg.payload)
            if msg.topic == topics.result("demo"):
                first = data["ts"] if first is None else first
            elif first is not None and data["end_ts"] < first + duration:
                at = data["end_ts"] % duration
                events.append((data["label"], at))
                truth = next((s.label for s in spoken if s.start_s < at <= s.end_s + 1), "–")
                print(
                    f"event {data['label']:>10} ({data['score']:.2f}) at {at:6.2f} s of the "
                    f"recording; said there: {truth}",
                    file=out,
                    flush=True,
                )
    except KeyboardInterrupt:
        print("\ndemo: interrupted, stopping", file=log, flush=True)
    finally:
        if client is not None:
            client.stop()
        children.stop()
        if broker is not None:
            broker.stop()
    return {"recording_s": duration, **score_events(events, spoken, window_s=1.0)}
