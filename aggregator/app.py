"""The aggregator service: validate feature messages, align them by tick, fuse, publish.

Threads, and why:
- paho's network thread only sorts messages by sender into a FairInbox (one bounded queue
  per assigned feature topic, served in turn, so one flooding node costs only its own
  ticks); a message on any other topic is counted (`wrong_node`, `unknown_sub`) and dropped
  there, unread;
- the worker owns the alignment buffer: it decodes and validates each message, adds it,
  and wakes at the next deadline to emit partial ticks, so buffer state needs no lock; it
  also turns results into events and keeps the counts (aggregator.events), republishing a
  count when it changes (an event ages out of a window too);
- the timer publishes stats and tells systemd's watchdog the worker is alive — a worker
  stuck for longer than the watchdog interval gets the service restarted.
A message that fails validation is counted under its WireError reason and dropped; it never
raises out of the worker and never holds up other ticks.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from aggregator.alignment import Aligner, Emitted
from aggregator.discovery import discovery_messages
from aggregator.events import Counts, EventDetector, event_rules
from aggregator.fusion import Fuser
from aggregator.inbox import FairInbox
from edvit import sdnotify, topics
from edvit.bundle import MANIFEST, Bundle, BundleError, Manifest
from edvit.config.site import SiteConfig, feature_senders
from edvit.ids import IdError
from edvit.jsonfmt import compact_json
from edvit.mqtt import Message, MqttClient, MqttError
from edvit.service import begin_stop, spawn, wait_for_broker
from edvit.signing import load_site_bundle
from edvit.stats import LogThrottle, Window
from edvit.wire import REASONS, WireError, decode_features, encode_result

log = logging.getLogger("aggregator")

FEATURE_QOS = 1
RESULT_QOS = 1
EVENT_QOS = 1
LATENCY_WINDOW = 1000  # results the latency percentiles are taken over
HEARTBEAT_MAX_S = 0.25  # the worker wakes at least this often
COUNTS_EVERY_S = 1.0  # counts falling as events age out are republished this often


class Aggregator:
    """One site's aggregator; `start()` then `stop()` (see the module docstring)."""

    def __init__(
        self,
        bundle_dir: str | Path,
        cfg: SiteConfig,
        *,
        print_results: bool = False,
        out: TextIO = sys.stdout,
        clock: Callable[[], float] = time.time,
        cancel: threading.Event | None = None,
    ) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.cfg = cfg
        self.print_results = print_results
        self._out = out
        self._clock = clock
        self._cancel = cancel or threading.Event()
        self._stopping = threading.Event()
        self._inbox: FairInbox[Message] | None = None
        self._lock = threading.Lock()  # guards the counters the timer reads
        self._started_at = time.monotonic()
        self._beat = time.monotonic()
        self._worker: threading.Thread | None = None
        self._timer: threading.Thread | None = None
        self.bundle: Bundle | None = None
        self.fuser: Fuser | None = None
        self.client: MqttClient | None = None
        self.aligner: Aligner | None = None
        self.events: EventDetector | None = None  # None: events disabled in the site config
        self.counts: Counts | None = None
        self._counts_due = 0.0  # monotonic time of the next count check
        self._expected: dict[str, tuple[str, int]] = {}
        self._senders: dict[str, tuple[str, str]] = {}  # feature topic → (node, sub-model)
        self._count_topics: dict[str, str] = {}  # class → its count topic
        self._received = 0
        self._fused = 0
        self._errors = 0
        self._dropped: dict[str, int] = dict.fromkeys((*REASONS, "queue_full"), 0)
        self.error: Exception | None = None  # why the service ended by itself (see serve)
        self._latency = Window(LATENCY_WINDOW)
        self._overhead = Window(LATENCY_WINDOW)
        self._drop_log = LogThrottle(log)
        self._last_feature: float | None = None  # monotonic time of the last valid message
        self._no_data = False

    # --- life cycle ---------------------------------------------------------------------------

    def _check_calibration_period(self, manifest: Manifest) -> None:
        """Stream-calibrated rules count ticks: at another tick period their patience spans
        another time and their thresholds met other windows. Say so; the site may mean it."""
        stream = manifest.events.stream
        period = self.cfg.tick.period_s
        if stream is not None and not math.isclose(stream.period_s, period):
            log.warning(
                "the bundle's event rules were calibrated at tick.period_s %g s; this site "
                "ticks every %g s, so their false-accept rate was not measured here",
                stream.period_s,
                period,
            )

    def start(self, connect_timeout: float | None = None) -> None:
        """Bring the service up, one step at a time; stop() undoes whatever was done."""
        self.bundle = self._load_bundle()
        self._inbox = self._make_inbox(self.bundle)
        self.fuser = Fuser.from_bundle(self.bundle)
        self.aligner = self._make_aligner(self.bundle)
        if self.cfg.aggregator.events.enabled:
            rules = event_rules(self.bundle.manifest, self.cfg.aggregator.events)
            self._check_calibration_period(self.bundle.manifest)
            self.events = EventDetector(rules, self.cfg.site)
            self.counts = Counts(rules.thresholds, started=round(self._clock(), 3))
            try:
                self._count_topics = {c: topics.count(self.cfg.site, c) for c in rules.thresholds}
            except IdError as exc:
                raise BundleError([f"{self.bundle_dir / MANIFEST}: classes: {exc}"]) from None
        self.client = self._make_client(self.bundle)
        wait_for_broker(self.client, connect_timeout, self._cancel)
        self._worker = spawn("aggregator-worker", self._work)
        self._timer = spawn("aggregator-timer", self._tick_timer)
        sdnotify.ready()
        sdnotify.status(f"fusing {len(self._expected)} sub-models for site {self.cfg.site}")
        log.info(
            "aggregator for site %s: %d sub-models %s, broker %s, results on %s",
            self.cfg.site,
            len(self._expected),
            sorted(self._expected),
            self.client.address,
            topics.result(self.cfg.site),
        )

    def stop(self) -> None:
        """Stop the threads, publish the last stats and `stopped`, disconnect. Idempotent."""
        if not begin_stop(self._stopping, self._cancel, (self._timer, self._worker), timeout=5):
            return
        if self.client is not None:
            if self.client.connected:
                self.client.publish_json(topics.aggregator_stats(self.cfg.site), self.stats())
            self.client.stop()

    # --- start steps --------------------------------------------------------------------------

    def _load_bundle(self) -> Bundle:
        """Load the bundle, verifying the signature the site asks for and the sha256 of the
        fusion file, the one file it loads (BundleError names a bad file)."""
        bundle = load_site_bundle(self.bundle_dir, self.cfg, files=lambda m: [m.fusion.file])
        self._expected = {
            s.id: (bundle.model_hash(s.id), s.feature_dim) for s in bundle.manifest.submodels
        }
        return bundle

    def _make_inbox(self, bundle: Bundle) -> FairInbox[Message]:
        """One queue per feature topic the site assigns (ConfigError for a site that does
        not give each sub-model exactly one node): whose features to trust is fixed here."""
        senders = feature_senders(self.cfg, bundle.manifest)
        site = self.cfg.site
        self._senders = {topics.feat(site, node, sub): (node, sub) for sub, node in senders.items()}
        depth = max(1, self.cfg.aggregator.queue_size // len(self._senders))
        return FairInbox(list(self._senders), depth)

    def _make_aligner(self, bundle: Bundle) -> Aligner:
        return Aligner(
            [s.id for s in bundle.manifest.submodels],
            period_s=self.cfg.tick.period_s,
            deadline_s=self.cfg.tick.deadline_s,
            buffer_ticks=self.cfg.aggregator.buffer_ticks,
        )

    def _make_client(self, bundle: Bundle) -> MqttClient:
        site = self.cfg.site
        client = MqttClient(
            self.cfg.broker,
            client_id=topics.client_id(site, "aggregator"),
            status_topic=topics.aggregator_status(site),
            login=self.cfg.login(),
            session_topic=topics.aggregator_session(site),
            subscriptions=[(topics.feat_wildcard(site), FEATURE_QOS)],
            on_message=self._sort,
            on_fatal=self._on_fatal,
        )
        # an empty payload removes the entity
        for topic, payload in discovery_messages(self.cfg, bundle.manifest):
            client.publish_on_connect(topic, b"" if payload is None else compact_json(payload))
        return client

    # --- paho's thread: sort by sender, never block ---------------------------------------------

    def _sort(self, msg: Message) -> None:
        if self._inbox is not None and msg.topic in self._inbox:
            if not self._inbox.put(msg.topic, msg):
                with self._lock:
                    self._dropped["queue_full"] += 1
            return
        parsed = topics.parse_feat_topic(self.cfg.site, msg.topic)
        known = parsed is not None and parsed[1] in self._expected
        exc = WireError(
            "wrong_node" if known else "unknown_sub",
            "a sub-model the site assigns to another node"
            if known
            else "no sub-model of the bundle, or not a feature topic",
        )
        with self._lock:
            self._received += 1
            self._dropped[exc.reason] += 1
        self._log_drop(exc, msg.topic)

    def _on_fatal(self, exc: MqttError) -> None:
        """The broker will not have us (login refused, identity taken): stop, exit with why."""
        self.error = exc
        self._cancel.set()

    # --- worker -------------------------------------------------------------------------------

    def _work(self) -> None:
        aligner, inbox = self.aligner, self._inbox
        if aligner is None or inbox is None:  # start() creates them before the worker
            return
        while not self._stopping.is_set():
            timeout = HEARTBEAT_MAX_S
            next_deadline = aligner.next_deadline()
            if next_deadline is not None:
                timeout = max(0.0, min(timeout, next_deadline - self._clock()))
            msg = inbox.get(timeout=timeout)
            self._beat = time.monotonic()
            try:
                emitted = aligner.expire(self._clock())
                if msg is not None:
                    emitted += self._accept(aligner, msg)
                for tick in emitted:
                    self._publish(tick)
                if time.monotonic() >= self._counts_due:  # not per message: hourly windows
                    self._publish_counts()
            except Exception:  # a bug must not end the service: count it, keep fusing
                with self._lock:
                    self._errors += 1
                log.exception("aggregator worker: unexpected error (message dropped)")

    def _accept(self, aligner: Aligner, msg: Message) -> list[Emitted]:
        with self._lock:
            self._received += 1
        now = self._clock()
        tick_cfg = self.cfg.tick
        try:
            fm = decode_features(
                msg.payload,
                site=self.cfg.site,
                expected=self._expected,
                now=now,
                period_s=tick_cfg.period_s,
                max_past=tick_cfg.max_past_ticks,
                max_future=tick_cfg.max_future_ticks,
                max_bytes=self.cfg.aggregator.max_message_bytes,
                topic_sub=self._senders[msg.topic][1],
                topic_node=self._senders[msg.topic][0],
            )
        except WireError as exc:
            with self._lock:
                self._dropped[exc.reason] += 1
            self._log_drop(exc, msg.topic)
            return []
        with self._lock:
            self._last_feature = msg.received
        return aligner.add(fm.tick, fm.sub, fm.ts, fm.feat, now, received=msg.received)

    def _publish(self, tick: Emitted) -> None:
        if self.fuser is None or self.client is None:
            return
        fused = self.fuser.fuse(tick.features)
        latency_ms = (self._clock() - tick.ts) * 1e3
        payload = encode_result(
            tick=tick.tick,
            ts=tick.ts,
            label=fused.label,
            score=fused.score,
            scores=fused.scores,
            complete=tick.complete,
            missing=tick.missing,
            latency_ms=latency_ms,
        )
        self.client.publish_bytes(topics.result(self.cfg.site), payload, qos=RESULT_QOS)
        overhead_ms = (time.monotonic() - tick.last_received) * 1e3
        with self._lock:
            self._fused += 1
            self._latency.add(latency_ms)
            if tick.complete:
                self._overhead.add(overhead_ms)
        if self.print_results:
            state = "complete" if tick.complete else "partial, missing " + ",".join(tick.missing)
            print(
                f"tick {tick.tick}: {fused.label} ({fused.score:.3f}) {state}, {latency_ms:.1f} ms",
                file=self._out,
                flush=True,
            )
        if self.events is not None:
            event = self.events.update(tick.tick, tick.ts, fused.label, fused.score, tick.complete)
            if event is not None:
                self.client.publish_json(topics.event(self.cfg.site), event.payload(), EVENT_QOS)
                if self.counts is not None:
                    self.counts.add(event)
                    self._publish_counts()
                if self.print_results:
                    print(f"event {event.label} ({event.score:.3f})", file=self._out, flush=True)

    def _publish_counts(self) -> None:
        """Republish (retained) the counts that changed since they were last published."""
        self._counts_due = time.monotonic() + COUNTS_EVERY_S
        if self.counts is None or self.client is None:
            return
        for payload in self.counts.changed(self._clock()):
            topic = self._count_topics[payload["label"]]
            self.client.publish_json(topic, payload, qos=EVENT_QOS, retain=True)

    def _log_drop(self, exc: WireError, topic: str) -> None:
        """Log a refused message, throttled per reason (floods happen)."""
        self._drop_log.warn(exc.reason, "dropped a message on %s: %s", topic[:200], exc)

    # --- timer: stats and watchdog ------------------------------------------------------------

    def _tick_timer(self) -> None:
        watchdog = sdnotify.Watchdog()
        interval = self.cfg.aggregator.stats_interval_s
        step = min(0.5, interval, (watchdog.interval or 1.0) / 4)
        next_stats = time.monotonic() + interval
        while not self._stopping.wait(step):
            now = time.monotonic()
            if now - self._beat < max(5.0, 2 * HEARTBEAT_MAX_S):
                watchdog.kick()  # only while the worker is alive
            self._watch_data(now)
            if now >= next_stats:
                next_stats = now + interval
                if self.client is not None and self.client.connected:
                    self.client.publish_json(topics.aggregator_stats(self.cfg.site), self.stats())

    def _feature_age_s(self, now: float) -> float:
        """Seconds since the last valid feature (or since start, before the first)."""
        with self._lock:
            last = self._last_feature
        return now - (self._started_at if last is None else last)

    def _watch_data(self, now: float) -> None:
        """Status `no_data` while no valid feature has come for no_data_after_s; `online`
        again with the next one. Logged once per change, not per check."""
        silent = self._feature_age_s(now) >= self.cfg.aggregator.no_data_after_s
        if silent == self._no_data or self.client is None:
            return
        self._no_data = silent
        self.client.set_status(topics.NO_DATA if silent else topics.ONLINE)
        if silent:
            log.warning(
                "no feature message for %.0f s: status %s (are the nodes running?)",
                self.cfg.aggregator.no_data_after_s,
                topics.NO_DATA,
            )
        else:
            log.info("features arrive again: status %s", topics.ONLINE)

    def stats(self) -> dict[str, Any]:
        """The stats message: counters since start, latency percentiles of recent results."""
        aligner = self.aligner
        client = self.client
        feature_age_s = self._feature_age_s(time.monotonic())
        with self._lock:
            dropped = dict(self._dropped)
            dropped["overflow"] = aligner.overflow if aligner is not None else 0
            dropped["error"] = self._errors
            return {
                "ts": round(self._clock(), 3),
                "uptime_s": round(time.monotonic() - self._started_at, 1),
                "received": self._received,
                "fused": self._fused,
                "events_fired": self.events.fired if self.events is not None else 0,
                "complete": aligner.complete if aligner is not None else 0,
                "partial": aligner.partial if aligner is not None else 0,
                "evicted": aligner.evicted if aligner is not None else 0,
                "late": aligner.late if aligner is not None else 0,
                "duplicate": aligner.duplicate if aligner is not None else 0,
                "pending": aligner.pending if aligner is not None else 0,
                "dropped": dropped,
                "latency_ms": self._latency.percentiles(),
                "overhead_ms": self._overhead.percentiles(),
                "last_feature_age_s": round(feature_age_s, 3),
                "receiving": not self._no_data,
                "reconnects": client.reconnects if client is not None else 0,
                "connected": client.connected if client is not None else False,
            }
