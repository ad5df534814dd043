"""The edge node service: capture at each tick, run the hosted sub-models, publish features.

Threads, and why:
- the tick thread owns the source, the preprocessing and the ONNX sessions: one capture per
  tick, nothing else touches them, so none of it needs a lock. It wakes at each due time
  (edge_node.tick), and when a tick's work overruns the next due time it skips (and counts)
  the ticks it missed instead of queueing them: a live site wants the present, not a backlog.
  It also tells systemd's watchdog it is alive, so a hung loop gets the service restarted;
- paho's network thread only hands relayed frames to the RelaySource (a bounded msgpack
  check and a JPEG decode of a few ms; the source holds the newest few ticks only);
- the stats thread publishes stats every `stats_interval_s`, independent of the tick period
  (an hour-long period must not silence them).
Feature messages are published only while connected: a tick's features are worthless once
the aggregator has passed its deadline, so they are counted as `unsent` instead of piling up
in paho's queue to be delivered stale after a reconnect.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho

from edge_node.runner import SubmodelRunner
from edge_node.sources import (
    MissingLibraryError,
    RecordingSource,
    RelaySource,
    ReplaySource,
    Source,
    SourceError,
    build_source,
    encode_jpeg,
    source_key,
)
from edge_node.stats import NodeStats
from edge_node.tick import TickSchedule
from edvit import sdnotify, topics
from edvit.bundle import Bundle, Manifest
from edvit.config import ConfigError
from edvit.config.site import NodeConfig, SiteConfig, node_submodels
from edvit.mqtt import Message, MqttClient, MqttError
from edvit.preprocess import AudioPreprocess, ImagePreprocess, preprocess
from edvit.service import ServiceFailedError, StartError, begin_stop, spawn, wait_for_broker
from edvit.signing import load_site_bundle
from edvit.stats import LogThrottle
from edvit.wire import MAX_FRAME_BYTES, WireError, decode_frame, encode_features, encode_frame

log = logging.getLogger("edge_node")
FILE_SOURCES = (ReplaySource, RecordingSource)
"""Sources that play files: a missing file is a config error, a sample's time is its tick's."""

FEATURE_QOS = 1  # the aggregator must see every tick's features: acknowledged delivery
FRAME_QOS = 0  # a relayed frame is useful for one tick only: never retransmit a stale one
STATS_QOS = 0
WAIT_SLICE_S = 0.5  # the tick thread re-reads the wall clock (NTP steps) at least this often


class EdgeNode:
    """One edge node of a site: `start()` then `stop()` (see the module docstring)."""

    def __init__(
        self,
        bundle_dir: str | Path,
        cfg: SiteConfig,
        node_id: str,
        *,
        config_source: str = "site config",
        max_ticks: int | None = None,
        clock: Callable[[], float] = time.time,
        cancel: threading.Event | None = None,
    ) -> None:
        """`config_source` names the config file in error messages; `max_ticks` ends the
        node after that many ticks ran (tests, demos); `cancel` is set when the node ends by
        itself (ticks done, source lost) and, set from outside, stops a start() in progress.
        """
        if max_ticks is not None and max_ticks < 1:
            raise ValueError(f"max_ticks must be >= 1, got {max_ticks}")
        self.bundle_dir = Path(bundle_dir)
        self.cfg = cfg
        self.node_id = node_id
        self.config_source = config_source
        self.max_ticks = max_ticks
        self._clock = clock
        self._cancel = cancel or threading.Event()
        self._stopping = threading.Event()
        self.schedule = TickSchedule(cfg.tick.period_s)
        self.bundle: Bundle | None = None
        self.sub_ids: list[str] = []
        self.spec: ImagePreprocess | AudioPreprocess | None = None
        self.runner: SubmodelRunner | None = None
        self.source: Source | None = None
        self.client: MqttClient | None = None
        self.error: Exception | None = None  # why the node ended by itself (see serve)
        """Why the node ended by itself (a source broken for good); None otherwise."""
        self._routes: list[tuple[str, str, str]] = []
        """(sub-model, feature topic, model hash) per hosted sub-model, in run order."""
        self._frame_topic: str | None = None
        """Where each captured frame is relayed (publish_frames); None: not published."""
        self._tick_thread: threading.Thread | None = None
        self._stats_thread: threading.Thread | None = None
        self._stats = NodeStats(node_id, cfg.tick.period_s)
        self._seq = 0  # feature message sequence number; the tick thread's alone
        self._throttle = LogThrottle(log)

    @property
    def node(self) -> NodeConfig:
        return self.cfg.nodes[self.node_id]

    # --- life cycle ---------------------------------------------------------------------------

    def start(self, connect_timeout: float | None = None) -> None:
        """Bring the node up, one step at a time; stop() undoes whatever was done."""
        self.prepare()
        self._warm_up()
        self.source = self._open_source()
        self.client = self._make_client()
        wait_for_broker(self.client, connect_timeout, self._cancel)
        sdnotify.ready()
        self._stats_thread = spawn("node-stats", self._stats_loop)
        self._tick_thread = spawn("node-ticks", self._tick_loop)
        sdnotify.status(
            f"node {self.node_id}: {','.join(self.sub_ids)} every {self.cfg.tick.period_s:g} s"
        )
        log.info(
            "node %s of site %s: sub-models %s, source %s, tick %g s, broker %s",
            self.node_id,
            self.cfg.site,
            self.sub_ids,
            self.source.name,
            self.cfg.tick.period_s,
            self.client.address,
        )

    def prepare(self) -> None:
        """The steps that need neither devices nor the broker (what --validate-config runs):
        bundle (every sha256), the node's sub-models, preprocessing, ONNX sessions, source."""
        if self.node_id not in self.cfg.nodes:
            raise ConfigError(
                self.config_source,
                [f"nodes: no node {self.node_id!r} (has {sorted(self.cfg.nodes)})"],
            )
        self.bundle = self._load_bundle()
        self.sub_ids = self._resolve_submodels(self.bundle)
        self.spec = self.bundle.manifest.preprocess
        self.runner = SubmodelRunner(self.bundle, self.sub_ids, threads=self.node.threads)
        self.source = self._make_source(self.spec)
        if self.node.publish_frames:
            self._frame_topic = topics.frame(self.cfg.site, self.node_id)

    def stop(self) -> None:
        """Stop the tick loop, close the source, publish the last stats and `stopped`,
        disconnect. Idempotent; safe after a failed or cancelled start()."""
        threads = (self._tick_thread, self._stats_thread)
        if not begin_stop(self._stopping, self._cancel, threads, timeout=10):
            return
        if self.source is not None:
            self.source.close()
        if self.client is not None:
            if self.client.connected:
                self.client.publish_json(
                    topics.node_stats(self.cfg.site, self.node_id), self.stats(), qos=STATS_QOS
                )
            self.client.stop()  # `stopped` goes out after the stats and the last features

    # --- start steps --------------------------------------------------------------------------

    def _load_bundle(self) -> Bundle:
        """Load the bundle, verifying the signature the site asks for and the sha256 of the
        ONNX files this node runs (BundleError names a bad file); it never opens the others,
        nor the base model or the fusion file."""
        return load_site_bundle(
            self.bundle_dir,
            self.cfg,
            self.config_source,
            files=lambda m: m.onnx_files(self._node_submodels(m)),
        )

    def _node_submodels(self, manifest: Manifest) -> list[str]:
        """The node's `submodels`, else the bundle plan's assignment to this node id."""
        try:
            return node_submodels(self.cfg, self.node_id, manifest)
        except ConfigError as exc:  # it names "site config"; name the actual file
            raise ConfigError(self.config_source, exc.problems) from None

    def _resolve_submodels(self, bundle: Bundle) -> list[str]:
        subs = self._node_submodels(bundle.manifest)
        site = self.cfg.site
        self._routes = [(s, topics.feat(site, self.node_id, s), bundle.model_hash(s)) for s in subs]
        return subs

    def _make_source(self, spec: ImagePreprocess | AudioPreprocess) -> Source:
        """The configured source, checked against the model's input (not opened yet)."""
        try:
            return build_source(self.node.source, spec, period_s=self.cfg.tick.period_s)
        except SourceError as exc:
            raise ConfigError(self.config_source, [f"nodes.{self.node_id}.source: {exc}"]) from None

    def _warm_up(self) -> None:
        """ONNX Runtime's first runs cost seconds: pay them before READY=1, not on the
        first live ticks (and build the audio front-end's mel filter bank once)."""
        if self.runner is not None:
            self.runner.warm_up()
        if isinstance(self.spec, AudioPreprocess):
            preprocess(self.spec, np.zeros(self.spec.clip_samples, dtype=np.float32))

    def _open_source(self) -> Source:
        """Open the source. Replay files that are missing and libraries that are not
        installed are a config error (exit 2); a live device that does not answer is a
        StartError (exit 1: systemd retries)."""
        source = self.source
        if source is None:
            raise RuntimeError("prepare() must run before the source is opened")
        try:
            source.open()
        except SourceError as exc:
            if isinstance(source, FILE_SOURCES) or isinstance(exc, MissingLibraryError):
                raise self._source_error(exc) from None
            raise StartError(str(exc)) from None
        return source

    def _source_error(self, exc: SourceError) -> ConfigError:
        return ConfigError(
            self.config_source, [f"{source_key(self.node_id, self.node.source)}: {exc}"]
        )

    def check_source(self, timeout: float = 10.0) -> None:
        """--validate-config: open the source as start() would and read one sample; a device
        that is absent or silent is a ConfigError naming the key. A relay source is not
        opened: its frames come over MQTT, which --validate-config never connects to."""
        source = self.source
        if source is None:
            raise RuntimeError("prepare() must run before the source is checked")
        if isinstance(source, RelaySource):
            return
        try:
            source.open()
            sample = source.read_within(0, timeout)  # a stalled microphone raises
        except SourceError as exc:
            raise self._source_error(exc) from None
        finally:
            source.close()
        if sample is None:
            raise self._source_error(
                SourceError(f"{source.name}: opened, but gave no sample within {timeout:g} s")
            )

    def _make_client(self) -> MqttClient:
        site = self.cfg.site
        subscriptions: list[tuple[str, int]] = []
        on_message = None
        if isinstance(self.source, RelaySource):
            subscriptions.append((topics.frame(site, self.source.camera), FRAME_QOS))
            on_message = self._on_frame
        return MqttClient(
            self.cfg.broker,
            client_id=topics.client_id(site, f"node-{self.node_id}"),
            login=self.cfg.login(self.node_id),
            status_topic=topics.node_status(site, self.node_id),
            session_topic=topics.node_session(site, self.node_id),
            subscriptions=subscriptions,
            on_message=on_message,
            on_fatal=self._on_fatal,
        )

    def _on_fatal(self, exc: MqttError) -> None:
        """The broker will not have us (login refused, identity taken): stop, exit with why."""
        self.error = exc
        self._cancel.set()

    # --- relay frames (paho's thread: never block) --------------------------------------------

    def _on_frame(self, msg: Message) -> None:
        source = self.source
        if not isinstance(source, RelaySource):
            return
        try:
            frame = decode_frame(msg.payload, max_bytes=MAX_FRAME_BYTES)
        except WireError as exc:
            self._stats.counters.add("rejected")
            self._throttle.warn("frame", "refused a relayed frame on %s: %s", msg.topic, exc)
            return
        source.offer_jpeg(frame.tick, frame.ts, frame.jpeg)

    # --- tick loop ----------------------------------------------------------------------------

    def _wait_until(self, due: float, watchdog: sdnotify.Watchdog) -> bool:
        """Sleep until the wall clock reaches `due`; False if stop was requested first."""
        while True:
            left = due - self._clock()
            if left <= 0:
                return True
            if self._stopping.wait(min(left, WAIT_SLICE_S)):
                return False
            watchdog.kick()

    def _tick_loop(self) -> None:
        watchdog = sdnotify.Watchdog()
        schedule = self.schedule
        tick = schedule.first(self._clock())
        ran = 0
        try:
            while not self._stopping.is_set():
                if not self._wait_until(schedule.due(tick), watchdog):
                    return
                tick, stalled = schedule.catch_up(tick, self._clock())
                if stalled and ran:  # before the first tick ran, nothing was missed yet
                    self._stats.counters.add("skipped", stalled)
                started = time.monotonic()
                if not self._run_tick(tick):
                    return
                self._stats.tick_time.add(time.monotonic() - started)
                ran += 1
                watchdog.kick()
                if self.max_ticks is not None and ran >= self.max_ticks:
                    log.info("ran %d ticks (--ticks); stopping", ran)
                    return
                tick, overrun = schedule.after(tick, self._clock())
                if overrun:
                    self._stats.counters.add("skipped", overrun)
        except Exception as exc:  # a bug: end with an error, so systemd restarts the node
            log.exception("tick loop failed")
            self.error = ServiceFailedError(f"tick loop failed: {exc!r}")
        finally:
            self._cancel.set()  # tells the CLI the node ended (or is ending) either way

    def _run_tick(self, tick: int) -> bool:
        """Capture → (frame) → preprocess → sub-models → publish. False: the source is
        broken for good and the node must end (systemd restarts it)."""
        source, runner, spec = self.source, self.runner, self.spec
        if source is None or runner is None or spec is None:
            return False
        counters = self._stats.counters
        counters.add("ticks")
        self._stats.last_tick = tick
        try:
            sample = source.read(tick)
        except SourceError as exc:
            self.error = ServiceFailedError(f"source lost for good: {exc}")
            log.error("source lost for good: %s", exc)
            return False
        if sample is None:
            counters.add("misses")
            return True
        # Replay files are "captured" at the instant the tick stands for; live sources
        # report when the frame was grabbed, a relay when the camera node grabbed it.
        ts = self.schedule.due(tick) if isinstance(source, FILE_SOURCES) else sample.ts
        try:
            if self._frame_topic is not None:  # before inference: relays start early
                self._publish_frame(self._frame_topic, tick, ts, sample.data)
            self._publish_features(tick, ts, runner.run(preprocess(spec, sample.data)))
        except Exception as exc:  # one bad capture or a runtime fault must not end the node
            counters.add("errors")
            self._throttle.warn("tick", "tick %d failed: %s", tick, exc, exc_info=True)
        return True

    def _publish(self, topic: str, payload: bytes, qos: int) -> bool:
        client = self.client
        if client is None or not client.connected:
            return False
        info = client.publish_bytes(topic, payload, qos=qos)
        return info.rc == paho.MQTT_ERR_SUCCESS

    def _publish_frame(self, topic: str, tick: int, ts: float, image: np.ndarray) -> None:
        jpeg = encode_jpeg(image, self.node.jpeg_quality)
        if self._publish(topic, encode_frame(tick, ts, jpeg), FRAME_QOS):
            self._stats.counters.add("frames")

    def _publish_features(self, tick: int, ts: float, features: dict[str, np.ndarray]) -> None:
        site, node_id, counters = self.cfg.site, self.node_id, self._stats.counters
        for sub, topic, model_hash in self._routes:
            seq, self._seq = self._seq, self._seq + 1
            payload = encode_features(site, node_id, sub, tick, ts, seq, model_hash, features[sub])
            counters.add("published" if self._publish(topic, payload, FEATURE_QOS) else "unsent")

    # --- stats --------------------------------------------------------------------------------

    def _stats_loop(self) -> None:
        interval = self.node.stats_interval_s
        topic = topics.node_stats(self.cfg.site, self.node_id)
        while not self._stopping.wait(interval):
            if self.client is not None and self.client.connected:
                self.client.publish_json(topic, self.stats(), qos=STATS_QOS)

    def stats(self) -> dict[str, Any]:
        """The stats message (README: edge-node stats)."""
        return self._stats.message(
            self._clock(), self.sub_ids, self.runner, self.source, self.client
        )
