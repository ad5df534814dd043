"""Two keywords in a streamed recording give exactly two events, on a real site.

A WAV file holds two spoken keywords ("yes", then "no") in low noise at known times. Two
`edge-node` processes stream it with the `recording` source (1 s windows every 0.25 s
tick), `aggregator run` fuses their features and applies the event rules, all on a private
mosquitto; a paho client collects `edvit/<site>/event`. One full pass over the recording
must give exactly two events, the right words in order, each heard (its ticks' windows)
where its word was placed — none for the background classes, none in the silence.

This tests the event path, not accuracy: the clips are training clips of a tiny bundle,
each the first (by name) that the bundle, run offline over the very windows the nodes will
hear, never takes for the other keyword and takes for its own word on at least two ticks
(so one lost tick cannot lose the event). The event rules come from the site config: a
threshold the tiny bundle's calibration (on 8 validation clips) need not give, and a
refractory time longer than the ticks whose windows hear one clip, so a run the model
breaks in the middle of a word (a window taken for `_unknown_`) does not fire twice.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from aggregator.fusion import Fuser
from edge_node.runner import SubmodelRunner
from edvit import media, topics
from edvit.bundle import Bundle, load_bundle
from edvit.preprocess import AudioPreprocess, preprocess

from broker import Mosquitto, Subscriber
from procs import stop_all
from tiny import BACKGROUND, build_bundle, tiny_digits, tiny_keywords_data

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SITE = "kw"
WORDS = ("yes", "no")
PERIOD = 0.25
WINDOW_S = 1.0  # the bundle's clip: what one tick hears
GAP_S = 2.0  # silence before, between and after the words: windows that hear no word
NOISE = 1e-3  # the silence: white noise at -60 dBFS
THRESHOLD = 0.8
REFRACTORY_S = 2.0  # > the 1.5 s from the first to the last tick whose window hears a clip
RATE = 16000

RECIPE = tiny_digits(
    "tiny-keyword-events",
    **tiny_keywords_data(
        "words", [*WORDS, *BACKGROUND], BACKGROUND, {"val_fraction": 0.2, "test_fraction": 0.2}
    ),
    model={"arch": "vit:img=16x32,patch=4,chans=1,embed=64,depth=1,heads=4"},
    train={"epochs": 80, "batch_size": 8, "lr": 0.003, "label_smoothing": 0.0, "augment": False},
    plan={"num_submodels": 2},
    pruning={"samples": 16},
    distill={"epochs": 30, "batch_size": 8, "lr": 0.003, "label_smoothing": 0.0, "augment": False},
    fusion={"epochs": 60},
    events={"stream": {"hours": 0.1, "target_per_hour": 20.0, "patience": [1, 2]}},
)  # fmt: skip
RECIPE["dataset"]["stream_windows"] = 40  # windows across two training clips, too


@dataclass(frozen=True)
class Placed:
    """A keyword clip's place in the recording (seconds)."""

    label: str
    start_s: float
    end_s: float

    def heard_by(self, lo: float, hi: float) -> bool:
        return lo < self.end_s and hi > self.start_s


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """A tiny 4-class bundle (the two words and the background classes), trained on 24
    clips a class: ~30 s here."""
    from modelgen.datasets.keywords import generate_keywords

    root = tmp_path_factory.mktemp("keyword-events")
    generate_keywords(
        root / "words", per_word=40, seed=0, words=WORDS, workers=1, heldout_per_word=1
    )
    return load_bundle(build_bundle(root, RECIPE))


def test_build_calibrates_the_event_rules_on_a_validation_stream(bundle: Bundle) -> None:
    """`events.stream`: thresholds and patience from 6 minutes of validation clips heard as
    a node hears them, and what they gave there, in the manifest."""
    events = bundle.manifest.events
    assert events.stream is not None
    assert events.target_far is None  # not the per-clip calibration
    assert set(events.thresholds) == set(WORDS)  # background classes never fire
    assert all(0.5 <= t <= 1.0 for t in events.thresholds.values())  # min_threshold 0.5
    assert events.patience in (1, 2)
    assert set(events.stream.by_patience) == {"1", "2"}
    best = max(events.stream.by_patience.values())
    assert events.stream.by_patience[str(events.patience)] == best
    assert events.stream.hits / events.stream.keywords == best
    assert events.stream.keywords >= 0.1 * 3600 / 27  # a keyword every 5-25 s (+ its 1 s)
    assert events.stream.hours == pytest.approx(0.1, abs=0.01)
    assert events.stream.period_s == PERIOD


class Offline:
    """The bundle run as a node and the aggregator would, on one window at a time."""

    def __init__(self, bundle: Bundle) -> None:
        spec = bundle.manifest.preprocess
        assert isinstance(spec, AudioPreprocess)
        self.spec = spec
        self.runner = SubmodelRunner(bundle, [s.id for s in bundle.manifest.submodels])
        self.fuser = Fuser.from_bundle(bundle)

    def top(self, recording: np.ndarray, end_s: float) -> tuple[str, float]:
        """The fused top-1 (label, score) of the window ending `end_s` into `recording`."""
        end = round(end_s * RATE)
        window = recording[end - self.spec.clip_samples : end]
        feats = self.runner.run(preprocess(self.spec, window))
        fused = self.fuser.fuse({s: f.astype(np.float16) for s, f in feats.items()})
        return fused.label, fused.score


def make_recording(bundle: Bundle, out: Path) -> tuple[list[Placed], float]:
    """GAP_S of noise, a word, GAP_S of noise, …: each word a training clip chosen as the
    module docstring says, at a multiple of the tick period (so one window is the clip)."""
    m = bundle.manifest
    root = Path(m.split.dataset.root)
    duration = GAP_S + len(WORDS) * (WINDOW_S + GAP_S)
    rng = np.random.default_rng(0)
    recording = (rng.standard_normal(round(duration * RATE)) * NOISE).astype(np.float32)
    offline = Offline(bundle)
    placed = []
    for i, word in enumerate(WORDS):
        start = GAP_S + i * (WINDOW_S + GAP_S)
        # every tick whose window hears some of the clip
        ends = [start + k * PERIOD for k in range(1, round(2 * WINDOW_S / PERIOD))]
        a, b = round(start * RATE), round((start + WINDOW_S) * RATE)
        for source in sorted(s for s in m.split.record.train if s.startswith(f"{word}/")):
            trial = recording.copy()
            trial[a:b] = media.read_wav(root / source, RATE)[: b - a]
            tops = [offline.top(trial, e) for e in ends]
            hits = sum(label == word and score >= THRESHOLD for label, score in tops)
            others = [label for label, score in tops if label not in (word, *BACKGROUND)]
            if hits >= 2 and not others:
                recording = trial
                placed.append(Placed(word, start, start + WINDOW_S))
                break
        else:
            pytest.fail(f"no training clip of {word!r} that the tiny bundle recognizes")
    media.write_wav(out, recording, RATE)
    return placed, duration


def site_config(path: Path, bundle: Bundle, recording: Path) -> Path:
    """Two nodes hearing the same microphone (one sub-model each), the event rules."""
    source = {"kind": "recording", "path": str(recording)}
    cfg = {
        "site": SITE,
        "broker": {"host": "127.0.0.1", "port": 1, "keepalive": 5},
        "tick": {"period_s": PERIOD, "deadline_s": 1.0, "max_past_ticks": 40},
        "aggregator": {
            "stats_interval_s": 1.0,
            "events": {
                "thresholds": dict.fromkeys(WORDS, THRESHOLD),
                "patience": 1,
                "refractory_s": REFRACTORY_S,
            },
        },
        "nodes": {
            f"n-{s.id}": {"source": source, "submodels": [s.id]} for s in bundle.manifest.submodels
        },
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


class Processes:
    """The site's processes, their output in files; `close()` stops every one of them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, cmd: list[str]) -> None:
        with (self.workdir / f"{name}.log").open("wb") as out:
            self.procs[name] = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                log = (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"{name} exited {proc.returncode}:\n{log}")

    def close(self) -> dict[str, int]:
        """SIGTERM each, SIGKILL what is left after 15 s; name → exit status."""
        stop_all(self.procs.values())
        return {name: proc.returncode for name, proc in self.procs.items()}


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.close()


def test_two_keywords_in_a_stream_give_exactly_two_events(
    bundle: Bundle, mosquitto: Mosquitto, tmp_path: Path, processes: Processes
) -> None:
    placed, duration = make_recording(bundle, tmp_path / "recording.wav")
    config = site_config(tmp_path / "site.yaml", bundle, tmp_path / "recording.wav")
    sub = Subscriber(mosquitto, [topics.event(SITE), topics.result(SITE)])
    common = ["--bundle", str(bundle.root), "--config", str(config), "--broker", mosquitto.address]
    processes.start("aggregator", [str(BIN / "aggregator"), "run", *common])
    for node in yaml.safe_load(config.read_text())["nodes"]:
        processes.start(node, [str(BIN / "edge-node"), "run", *common, "--node", node])

    def result(msg: Any) -> dict[str, Any] | None:
        data: dict[str, Any] = json.loads(msg.payload)
        return data if msg.topic == topics.result(SITE) else None

    def wait_result(done: Any, what: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            processes.check()
            try:
                msg = sub.wait_for(lambda m: (r := result(m)) is not None and done(r), 1.0)
            except TimeoutError:
                assert time.monotonic() < deadline, f"no {what} within {timeout} s"
                continue
            found = result(msg)
            assert found is not None
            return found

    try:
        first = wait_result(lambda r: r["complete"], "complete result", 90)
        # one whole pass, starting at the loop point (in silence), once the site is running
        pass_start = (math.floor(first["ts"] / duration) + 1) * duration
        pass_end = pass_start + duration
        # a tick's event is published just after its result: two ticks more and all are in
        after = pass_end + 2 * PERIOD
        wait_result(lambda r: r["ts"] >= after, "results after the pass", duration + 30)
    finally:
        sub.close()
    exits = processes.close()
    assert exits == dict.fromkeys(exits, 0), exits
    # the site ticks at the period the bundle's rules were calibrated at: no warning
    assert "were calibrated at" not in (tmp_path / "aggregator.log").read_text()

    events = [json.loads(m.payload) for m in sub.seen if m.topic == topics.event(SITE)]
    assert events, "no event at all"
    for e in events:  # every event, in the pass or before it: heard where its word is
        end = e["end_ts"] % duration
        lo = end - (e["end_ts"] - e["start_ts"]) - WINDOW_S
        assert any(p.label == e["label"] and p.heard_by(lo, end) for p in placed), (e, placed)
        assert e["score"] >= THRESHOLD
        assert (e["ticks"], e["site"]) == (1, SITE)
    in_pass = [e for e in events if pass_start <= e["end_ts"] < pass_end]
    assert [e["label"] for e in in_pass] == list(WORDS), (in_pass, placed)


def test_the_aggregator_warns_when_the_site_ticks_at_another_period(
    bundle: Bundle, mosquitto: Mosquitto, tmp_path: Path, processes: Processes
) -> None:
    """The bundle's rules were calibrated on a stream ticking every 0.25 s; a site ticking
    every 0.5 s runs, and is told its false-accept rate was not measured."""
    media.write_wav(tmp_path / "quiet.wav", np.zeros(RATE, dtype=np.float32), RATE)
    config = site_config(tmp_path / "site.yaml", bundle, tmp_path / "quiet.wav")
    cfg = yaml.safe_load(config.read_text())
    cfg["tick"]["period_s"] = 2 * PERIOD
    config.write_text(yaml.safe_dump(cfg))
    cmd = ["run", "--bundle", str(bundle.root), "--config", str(config)]
    processes.start("aggregator", [str(BIN / "aggregator"), *cmd, "--broker", mosquitto.address])
    log = tmp_path / "aggregator.log"
    want = f"calibrated at tick.period_s {PERIOD:g} s; this site ticks every {2 * PERIOD:g} s"
    deadline = time.monotonic() + 30
    while want not in log.read_text():
        processes.check()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    assert processes.close() == {"aggregator": 0}
