"""Events and counts: from a result every tick to "the word *stop* at 12:03:05" once.

A *run* of a class is consecutive ticks on which it is the fused top-1 with a score at or
above its threshold. A tick that is partial (`complete: false`) or absent (a gap in tick
numbers) breaks the run: a half-heard tick is no evidence either way. A result for a tick
older than the newest one seen (the aligner emits a partial tick at its deadline, after a
newer complete one) is ignored; the gap it left has already broken the run.

The event fires as soon as its run reaches `patience` ticks, not when the run ends: an
automation reacts while the word is still being said, and a truck that stays in view is
announced at once. So `end_ts` is the capture time of the tick that reached patience,
`ticks` is the patience, `score` the highest score of those ticks. The run then goes on
without firing again until it breaks. Refractory time (debounce): a run that starts less
than `refractory_s` after the end (last qualifying tick) of the class's last firing run
fires nothing — the same word heard again in the next overlapping window, a truck
flickering out of view and back. Background classes have no threshold and never fire.

Counts are events per class over sliding windows (the last minute, the last hour) and since
the aggregator started, placed at their `end_ts`.

Pure logic: no MQTT, no clock; the caller passes the times.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edvit.bundle import DEFAULT_THRESHOLD, Manifest
from edvit.config.site import EventsConfig

WINDOWS_S = {"last_minute": 60.0, "last_hour": 3600.0}
"""The sliding windows of a count message, by field name."""


@dataclass(frozen=True)
class Rules:
    """What makes an event: a threshold per firing class, patience, refractory time."""

    thresholds: Mapping[str, float]
    patience: int
    refractory_s: float


def event_rules(manifest: Manifest, site: EventsConfig) -> Rules:
    """The bundle's calibrated rules with the site config's overrides applied; every class
    but the background ones gets a threshold (DEFAULT_THRESHOLD where neither gives one)."""
    bundle = manifest.events
    thresholds = {
        label: site.thresholds.get(label, bundle.thresholds.get(label, DEFAULT_THRESHOLD))
        for label in manifest.event_classes
    }
    return Rules(
        thresholds=thresholds,
        patience=bundle.patience if site.patience is None else site.patience,
        refractory_s=bundle.refractory_s if site.refractory_s is None else site.refractory_s,
    )


@dataclass(frozen=True)
class Event:
    """One detection, as published on `edvit/<site>/event`."""

    label: str
    score: float
    start_ts: float
    end_ts: float
    ticks: int
    site: str

    def payload(self) -> dict[str, Any]:
        """The JSON message; `event_type` repeats the label for Home Assistant's event entity."""
        return {
            "label": self.label,
            "event_type": self.label,
            "score": round(self.score, 6),
            "start_ts": self.start_ts,
            "end_ts": self.end_ts,
            "ticks": self.ticks,
            "site": self.site,
        }


@dataclass
class _Run:
    label: str
    start_ts: float
    last_ts: float
    ticks: int
    score: float
    fired: bool
    suppressed: bool  # started within the refractory time: it never fires


class EventDetector:
    """Feed it every result in emission order (`update`); it returns the events that fire."""

    def __init__(self, rules: Rules, site: str) -> None:
        self.rules = rules
        self.site = site
        self._run: _Run | None = None
        self._last_tick: int | None = None
        self._last_end: dict[str, float] = {}  # label → last tick of its last firing run
        self.fired = 0

    def update(
        self, tick: int, ts: float, label: str, score: float, complete: bool
    ) -> Event | None:
        """One fused result (tick, capture time, top-1 label and score, complete or not)."""
        if self._last_tick is not None and tick <= self._last_tick:
            return None  # older than the newest seen: see the module docstring
        follows = self._last_tick is not None and tick == self._last_tick + 1
        self._last_tick = tick
        threshold = self.rules.thresholds.get(label)
        counts = complete and threshold is not None and score >= threshold
        run = self._run
        if run is not None and not (follows and counts and run.label == label):
            if run.fired:
                self._last_end[run.label] = run.last_ts
            run = self._run = None
        if not counts:
            return None
        if run is None:
            since = ts - self._last_end.get(label, float("-inf"))
            run = self._run = _Run(label, ts, ts, 0, score, False, since < self.rules.refractory_s)
        run.ticks += 1
        run.last_ts = ts
        run.score = max(run.score, score)
        if run.fired or run.suppressed or run.ticks < self.rules.patience:
            return None
        run.fired = True
        self.fired += 1
        return Event(label, run.score, run.start_ts, ts, run.ticks, self.site)


class Counts:
    """Events per class over the sliding windows of WINDOWS_S and since `started`."""

    def __init__(self, labels: Iterable[str], started: float) -> None:
        self.started = started
        self._times: dict[str, deque[float]] = {label: deque() for label in labels}
        self._total = dict.fromkeys(self._times, 0)
        self._sent: dict[str, dict[str, Any]] = {}

    def add(self, event: Event) -> None:
        self._times[event.label].append(event.end_ts)
        self._total[event.label] += 1

    def payload(self, label: str, now: float) -> dict[str, Any]:
        """The count message of `label` at time `now`."""
        times = self._times[label]
        longest = max(WINDOWS_S.values())
        while times and times[0] <= now - longest:
            times.popleft()  # memory: at most the last hour's events
        out: dict[str, Any] = {"label": label}
        for name, span in WINDOWS_S.items():
            out[name] = sum(1 for t in times if t > now - span)
        out["since_start"] = self._total[label]
        out["started"] = self.started
        return out

    def changed(self, now: float) -> list[dict[str, Any]]:
        """The count messages that differ from the ones last returned (every class the first
        time): what to publish, retained, so that a window's count falls as events age out."""
        out = []
        for label in self._times:
            payload = self.payload(label, now)
            if payload != self._sent.get(label):
                self._sent[label] = payload
                out.append(payload)
        return out
