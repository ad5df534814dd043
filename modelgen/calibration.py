"""Event thresholds from validation data, for a target false-accept rate.

A false accept of class c is a tick on which a sample of another class (a background one
included: silence heard as "go") comes out with c on top at a score that reaches c's
threshold. Per class that fires, the threshold is the lowest score at which at most
`target_far` of the other classes' validation samples are accepted as c, and never below
`floor`: a class the validation data never confuses with another gives no evidence for a
lower one. Thresholds have 6 decimals (what results carry) and lie strictly above the
highest false accept they exclude.

That is per clip. A microphone node hears windows of a stream instead, most of them
background and many a word cut in two, and its false accepts are events per hour, not
clips: `calibrate_stream_thresholds` finds the thresholds on a stream of validation clips
(modelgen.streams) through the aggregator's own event rules, for a target number of false
accepts per hour.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggregator.events import EventDetector, Rules
from edvit.bundle import EventTiming
from edvit.demo.keywords import Spoken, score_events

STEP = 1e-6


def calibrate_thresholds(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    background: Collection[str],
    target_far: float,
    floor: float,
) -> dict[str, float]:
    """Class name → threshold for every non-background class, from fused probabilities
    (N, C) of validation samples with true `labels` (N,)."""
    top, score = probs.argmax(axis=1), probs.max(axis=1)
    out: dict[str, float] = {}
    for c, name in enumerate(classes):
        if name in background:
            continue
        others = labels != c
        allowed = math.floor(target_far * int(others.sum()) + 1e-9)
        accepted = np.sort(score[others & (top == c)])[::-1]
        threshold = 0.0
        if len(accepted) > allowed:  # just above the first false accept beyond the allowance
            threshold = math.floor(float(accepted[allowed]) / STEP + 1) * STEP
        out[name] = round(min(1.0, max(floor, threshold)), 6)
    return out


STREAM_GRID = np.unique(
    np.concatenate([np.arange(0.5, 0.99, 0.005), 1 - np.geomspace(1e-2, 1e-5, 16)])
).round(6)
"""Thresholds tried on a stream: 0.005 apart up to 0.99, then closer towards 1."""


@dataclass(frozen=True)
class StreamTicks:
    """What the fused model said at every tick of a stream: end time (s), top-1, its score."""

    ts: np.ndarray  # (T,) float
    top: np.ndarray  # (T,) int class index
    score: np.ndarray  # (T,) float

    @property
    def hours(self) -> float:
        """From the first tick to the last."""
        return (float(self.ts[-1]) - float(self.ts[0])) / 3600 if len(self.ts) > 1 else 0.0


def _class_events(
    ticks: StreamTicks, c: int, label: str, threshold: float, timing: EventTiming
) -> list[tuple[str, float]]:
    """(label, end) of the events of class c alone: the aggregator's detector fed only the
    ticks with c on top (the gaps between them break runs, as any other top-1 would)."""
    detector = EventDetector(
        Rules({label: threshold}, timing.patience, timing.refractory_s), "calibration"
    )
    events = []
    for k in np.flatnonzero(ticks.top == c):
        event = detector.update(int(k), float(ticks.ts[k]), label, float(ticks.score[k]), True)
        if event is not None:
            events.append((label, event.end_ts))
    return events


def calibrate_stream_thresholds(
    ticks: StreamTicks,
    spoken: Sequence[Spoken],
    classes: Sequence[str],
    background: Collection[str],
    timing: EventTiming,
    target_per_hour: float,
    floor: float,
    window_s: float,
) -> dict[str, float]:
    """Class name → threshold for every non-background class, from a stream of validation
    clips: per class the lowest threshold of STREAM_GRID (not below `floor`) from which on
    the class's false accepts stay within its share of `target_per_hour` (the target split
    evenly over the classes that fire), the events made by the aggregator's own rules with
    `timing`. Higher thresholds can split a run in two, so the search asks every threshold
    above the one it picks to keep within the allowance too."""
    firing = [(c, name) for c, name in enumerate(classes) if name not in background]
    allowed = math.floor(target_per_hour / max(1, len(firing)) * ticks.hours + 1e-9)
    grid = STREAM_GRID[floor <= STREAM_GRID]
    out: dict[str, float] = {}
    for c, name in firing:
        own = [s for s in spoken if s.label == name]
        chosen = float(grid[-1]) if len(grid) else floor
        for t in grid[::-1]:  # from the top down: stop at the first one over the allowance
            events = _class_events(ticks, c, name, float(t), timing)
            if score_events(events, own, window_s)["false_accepts"] > allowed:
                break
            chosen = float(t)
        out[name] = round(max(floor, chosen), 6)
    return out


def stream_figures(
    ticks: StreamTicks,
    spoken: Sequence[Spoken],
    classes: Sequence[str],
    rules: Rules,
    window_s: float,
) -> dict[str, Any]:
    """Hits and false accepts per hour of every class's events on the stream under `rules`."""
    detector = EventDetector(rules, "calibration")
    events = []
    for k in range(len(ticks.ts)):
        label = classes[int(ticks.top[k])]
        event = detector.update(k, float(ticks.ts[k]), label, float(ticks.score[k]), True)
        if event is not None:
            events.append((event.label, event.end_ts))
    scored = score_events(events, list(spoken), window_s)
    hours = ticks.hours
    per_hour = scored["false_accepts"] / hours if hours else None
    return {**scored, "hours": hours, "false_accepts_per_hour": per_hour}
