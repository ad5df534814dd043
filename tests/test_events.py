"""Events and counts on synthetic result streams (aggregator/events.py: pure logic)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from aggregator.events import Counts, Event, EventDetector, Rules, event_rules
from edvit.bundle import DEFAULT_THRESHOLD, EventsEntry
from edvit.config.site import EventsConfig

PERIOD = 0.25


def detector(patience: int = 3, refractory_s: float = 1.0) -> EventDetector:
    rules = Rules(thresholds={"stop": 0.8, "go": 0.6}, patience=patience, refractory_s=refractory_s)
    return EventDetector(rules, site="home")


def feed(det: EventDetector, stream: list[Any], first: int = 100) -> list[tuple[int, Event]]:
    """`stream`: per tick (label, score), (label, score, complete) or None (no result)."""
    fired = []
    for k, item in enumerate(stream, start=first):
        if item is None:
            continue
        label, score, *rest = item
        event = det.update(k, k * PERIOD, label, score, rest[0] if rest else True)
        if event is not None:
            fired.append((k, event))
    return fired


def test_fires_once_when_patience_is_reached() -> None:
    det = detector(patience=3)
    stream = [("_silence_", 0.9), ("stop", 0.85), ("stop", 0.95), ("stop", 0.9), ("stop", 0.99)]
    [(k, event)] = feed(det, stream)
    assert k == 103  # the third qualifying tick, not the end of the run
    assert event == Event("stop", 0.95, 101 * PERIOD, 103 * PERIOD, 3, "home")
    assert event.payload() == {
        "label": "stop",
        "event_type": "stop",
        "score": 0.95,
        "start_ts": 25.25,
        "end_ts": 25.75,
        "ticks": 3,
        "site": "home",
    }
    assert det.fired == 1


def test_below_threshold_or_too_short_fires_nothing() -> None:
    det = detector(patience=3)
    stream = [("stop", 0.85), ("stop", 0.79), ("stop", 0.9), ("stop", 0.9), ("go", 0.99)]
    assert feed(det, stream) == []  # 0.79 < 0.8 broke the first run; the second had 2 ticks
    # per-class thresholds: 0.7 is enough for go (0.6), not for stop (0.8)
    assert [e.label for _, e in feed(detector(1), [("go", 0.7), ("x", 0), ("stop", 0.7)])] == ["go"]


def test_another_label_on_top_breaks_the_run() -> None:
    stream = [("stop", 0.9), ("stop", 0.9), ("go", 0.9), ("stop", 0.9), ("stop", 0.9)]
    assert feed(detector(patience=3), stream) == []


def test_background_and_unknown_classes_never_fire() -> None:
    det = detector(patience=1, refractory_s=0)
    assert feed(det, [("_silence_", 1.0)] * 20 + [("_unknown_", 1.0)] * 20) == []


@pytest.mark.parametrize(
    "gap",
    [
        None,  # the tick never came
        ("stop", 0.99, False),  # partial: a missing sub-model
    ],
)
def test_a_missing_or_partial_tick_breaks_the_run(gap: Any) -> None:
    stream = [("stop", 0.9), ("stop", 0.9), gap, ("stop", 0.9), ("stop", 0.9)]
    assert feed(detector(patience=3), stream) == []
    [(k, _)] = feed(detector(patience=3), [*stream, ("stop", 0.9)])
    assert k == 105  # the run restarted after the gap


def test_a_tick_older_than_the_newest_is_ignored() -> None:
    det = detector(patience=2, refractory_s=0)
    assert det.update(10, 2.5, "stop", 0.9, True) is None
    assert det.update(12, 3.0, "stop", 0.9, True) is None  # 11 missing: a new run
    assert det.update(11, 2.75, "stop", 0.9, False) is None  # 11 comes late, partial
    event = det.update(13, 3.25, "stop", 0.9, True)
    assert event is not None
    assert (event.start_ts, event.end_ts) == (3.0, 3.25)


def test_refractory_time_after_the_run_ends() -> None:
    # patience 1, refractory 1 s = 4 ticks after the end of the firing run
    stream = [
        ("stop", 0.9),  # 100: fires
        ("stop", 0.9),  # 101: same run, no second event; the run ends here
        ("x", 0.0),
        ("x", 0.0),
        ("stop", 0.9),  # 104: 0.75 s after the end: suppressed
        ("x", 0.0),
        ("stop", 0.9),  # 106: 1.25 s after the end of the last *firing* run: fires
        ("go", 0.9),  # 107: another class is not held back
    ]
    fired = feed(detector(patience=1, refractory_s=1.0), stream)
    assert [(k, e.label) for k, e in fired] == [(100, "stop"), (106, "stop"), (107, "go")]
    # exactly at the refractory time it fires again
    edge = [("stop", 0.9), ("x", 0.0), ("x", 0.0), ("x", 0.0), ("x", 0.0), ("stop", 0.9)]
    assert [k for k, _ in feed(detector(patience=1, refractory_s=1.0), edge)] == [100, 105]


def test_rules_from_the_bundle_and_the_site() -> None:
    manifest: Any = SimpleNamespace(
        event_classes=["yes", "no", "up"],
        events=EventsEntry(thresholds={"yes": 0.7, "no": 0.9}, patience=2, refractory_s=1.5),
    )
    rules = event_rules(manifest, EventsConfig())
    assert rules == Rules({"yes": 0.7, "no": 0.9, "up": DEFAULT_THRESHOLD}, 2, 1.5)
    site = EventsConfig(thresholds={"no": 0.4}, patience=4, refractory_s=0)
    assert event_rules(manifest, site) == Rules({"yes": 0.7, "no": 0.4, "up": 0.5}, 4, 0)


def _event(label: str, ts: float) -> Event:
    return Event(label, 0.9, ts, ts, 1, "home")


def test_counts_over_sliding_windows() -> None:
    counts = Counts(["truck", "car"], started=1000.0)
    first = counts.changed(1000.0)  # every class once, at zero
    assert first == [
        {"label": "truck", "last_minute": 0, "last_hour": 0, "since_start": 0, "started": 1000.0},
        {"label": "car", "last_minute": 0, "last_hour": 0, "since_start": 0, "started": 1000.0},
    ]
    assert counts.changed(1001.0) == []  # nothing changed: nothing to publish
    for ts in (1010.0, 1050.0, 1065.0):
        counts.add(_event("truck", ts))
    [truck] = counts.changed(1071.0)  # 1010 is more than a minute ago
    assert (truck["last_minute"], truck["last_hour"], truck["since_start"]) == (2, 3, 3)
    [truck] = counts.changed(1111.0)  # 1050 left the minute
    assert (truck["last_minute"], truck["last_hour"]) == (1, 3)
    assert counts.changed(1112.0) == []
    [truck] = counts.changed(1010.0 + 3600.0)  # 1010 left the hour
    assert (truck["last_minute"], truck["last_hour"], truck["since_start"]) == (0, 2, 3)
    assert counts.payload("car", 5000.0)["since_start"] == 0


def test_thresholds_calibrated_for_a_false_accept_rate() -> None:
    from modelgen.calibration import calibrate_thresholds

    classes = ["stop", "go", "_silence_"]
    # 100 samples of each class; rows are (p_stop, p_go, p_silence)
    probs, labels = [], []
    for c in range(3):
        for _ in range(100):
            p = np.full(3, 0.0)
            p[c] = 0.95
            probs.append(p)
            labels.append(c)
    probs_a, labels_a = np.array(probs), np.array(labels)
    # false accepts of "stop": 5 silences and 1 "go" on top as stop at these scores
    wrong = {200: 0.99, 201: 0.97, 202: 0.9, 203: 0.8, 204: 0.7, 100: 0.6}
    for i, score in wrong.items():
        probs_a[i] = [score, 0.0, 1 - score]
    # 200 others: 1 % allows 2 false accepts, so the third highest (0.9) must be refused
    out = calibrate_thresholds(probs_a, labels_a, classes, {"_silence_"}, 0.01, floor=0.0)
    assert out == {"stop": 0.900001, "go": 0.0}  # go: no false accept at all
    top, score = probs_a.argmax(1), probs_a.max(1)
    others = labels_a != 0
    for threshold, far in ((out["stop"], 0.01), (0.9, 0.015)):
        accepted = others & (top == 0) & (score >= threshold)
        assert accepted.sum() / others.sum() == far
    # the floor, and a looser target
    assert calibrate_thresholds(probs_a, labels_a, classes, {"_silence_"}, 0.01, 0.5) == {
        "stop": 0.900001,
        "go": 0.5,
    }
    loose = calibrate_thresholds(probs_a, labels_a, classes, {"_silence_"}, 0.025, 0.0)
    assert loose["stop"] == 0.600001  # 2.5 %: five allowed, the sixth (0.6) refused
