"""Aggregator benchmark on a loopback mosquitto → bench/results/system.json.

N = 10 sub-model streams of feature dim 128 (a synthetic bundle of real tiny ONNX models
and a real fusion MLP of 1280 → 640 → 10), published by one node. Measures, in one run:
  0. the broker's own capacity: a plain paho publisher/subscriber pair at QoS 1 with
     feature-sized messages (messages/s flat out; round trip p50/p99 at 30 messages/s);
  1. at 30 ticks/s: the aggregator's overhead, last feature in → result out, p50/p99
     (its own `overhead_ms` stats; and end to end through the broker: last feature
     published → result received, which adds two broker hops);
  2. the highest tick rate it sustains with every tick complete, and past it, where the
     ticks go: every tick sent has a result (partial if it must) or its messages were
     counted shed (`queue_full`); `unaccounted` must stay 0.
Goals (issue 10), as ratios to the broker measured in the same run: complete ticks/s × N
≥ 50 % of the broker's QoS 1 message rate; aggregator overhead p99 ≤ 2 × the broker's round
trip p99. Run on purpose (the machine should be quiet):

    .venv/bin/python bench/system.py
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import torch
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from edvit import topics
from edvit.bundle import load_bundle
from edvit.demo.brokers import Mosquitto
from edvit.mqtt import no_delay
from edvit.preprocess import ImagePreprocess
from edvit.wire import encode_features
from modelgen.vit_shape import parse_arch

from bundles import random_bundle

ROOT = Path(__file__).resolve().parent.parent
N, DIM, CLASSES = 10, 128, 10
SITE = "bench"
NODE = "bench-node"
SWEEP_KEYS = (
    "rate_hz", "ticks_sent", "complete", "partial", "no_result", "messages_shed",
    "messages_late", "unaccounted",
)  # fmt: skip


def make_bundle(out: Path) -> Path:
    """Ten real one-block ViTs of width 128 and the fusion MLP over their features."""
    shape = parse_arch("vit:img=8,patch=8,chans=1,embed=1280,depth=1,heads=20")  # k = 2: d = 128
    return random_bundle(out, shape, N, CLASSES, ImagePreprocess(height=8, width=8, channels=1))


class Probe:
    """Publishes N features per tick like the nodes (QoS 1) and times the results."""

    def __init__(self, broker: Mosquitto, hashes: dict[str, str]) -> None:
        self.hashes = hashes
        self.results: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        self.stats: dict[str, Any] = {}
        self._ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-probe")
        self.client.on_socket_open = no_delay  # as the nodes' client does
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not self._ready.wait(10):
            raise RuntimeError("the probe could not subscribe")
        self.feat = np.random.default_rng(0).standard_normal(DIM).astype(np.float32)

    def _on_connect(self, client: paho.Client, *args: Any) -> None:
        client.subscribe([(topics.result(SITE), 1), (topics.aggregator_stats(SITE), 0)])
        self._ready.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        now = time.monotonic()
        if msg.topic == topics.result(SITE):
            self.results.put((now, json.loads(msg.payload)))
        else:
            self.stats = json.loads(msg.payload)

    def publish_tick(self, tick: int, seq: int) -> float:
        ts = time.time()
        for sub, model_hash in self.hashes.items():
            payload = encode_features(SITE, NODE, sub, tick, ts, seq, model_hash, self.feat)
            self.client.publish(topics.feat(SITE, NODE, sub), payload, qos=1)
        return time.monotonic()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_rate(
    bundle: Path, broker: Mosquitto, work: Path, rate: float, seconds: float
) -> dict[str, Any]:
    period = 1.0 / rate
    hashes = {
        s.id: load_bundle(bundle).model_hash(s.id) for s in load_bundle(bundle).manifest.submodels
    }
    subs = list(hashes)
    site = {
        "site": SITE,
        "broker": {"host": broker.host, "port": broker.port},
        "tick": {
            "period_s": period,
            "deadline_s": 0.25,
            "max_past_ticks": int(2 * rate) + 2,
            "max_future_ticks": int(rate) + 2,
        },
        "aggregator": {"stats_interval_s": 0.5, "buffer_ticks": int(rate) + 16},
        "nodes": {NODE: {"source": {"kind": "images", "folder": "."}, "submodels": subs}},
    }
    config = work / f"site-{rate:g}.yaml"
    config.write_text(yaml.safe_dump(site))
    agg = subprocess.Popen(
        [str(Path(sys.executable).parent / "aggregator"), "run", "--bundle", str(bundle),
         "--config", str(config), "--log-level", "WARNING"],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    probe = Probe(broker, hashes)
    try:
        time.sleep(3.0)  # the aggregator loads and subscribes
        sent: dict[int, float] = {}
        first = int(time.time() / period) + 1
        last = first + int(seconds * rate)
        for seq, tick in enumerate(range(first, last)):
            delay = tick * period - time.time()
            if delay > 0:
                time.sleep(delay)
            sent[tick] = probe.publish_tick(tick, seq)
        behind = max(0.0, time.time() - last * period)  # how late the publisher finished
        results = []
        while True:  # until the aggregator has been quiet for 1.5 s: every deadline passed
            try:
                results.append(probe.results.get(timeout=1.5))
            except queue.Empty:
                break
        time.sleep(0.6)  # a stats message after the last result
        complete = [r for _, r in results if r["complete"] and r["tick"] in sent]
        e2e = [
            (t - sent[r["tick"]]) * 1e3 for t, r in results if r["complete"] and r["tick"] in sent
        ]
        stats = probe.stats
        answered = {r["tick"] for _, r in results if r["tick"] in sent}
        dropped = stats.get("dropped") or {}
        shed = dropped.get("queue_full", 0)
        late = stats.get("late", 0)
        return {
            "rate_hz": rate,
            "ticks_sent": len(sent),
            "results": len(results),
            "complete": len(complete),
            "all_complete": len(complete) == len(sent),
            "partial": len(answered) - len(complete),
            "no_result": len(sent) - len(answered),
            "messages_shed": shed,
            "messages_dropped": dropped,
            # a tick without a result must have had all N messages dropped under a reason,
            # or counted late: arrived after its deadline, which an aggregator behind by more
            # than deadline_s passed without having seen the tick
            "messages_late": late,
            "unaccounted": max(0, len(sent) - len(answered) - (sum(dropped.values()) + late) // N),
            "publisher_behind_s": behind,
            "overhead_ms": stats.get("overhead_ms"),
            "end_to_end_ms": {
                "p50": float(np.percentile(e2e, 50)) if e2e else None,
                "p99": float(np.percentile(e2e, 99)) if e2e else None,
            },
            "aggregator_stats": stats,
        }
    finally:
        probe.close()
        agg.terminate()
        agg.wait(10)


def _count(host: str, port: int, ready: Any, out: Any) -> None:
    """Subscriber process: count `bench/capacity` messages until 2 s pass without one; put
    (count, seconds from the first to the last)."""
    arrivals: queue.Queue[float] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-capacity-count")
    client.on_socket_open = no_delay
    client.on_connect = lambda c, *a: c.subscribe("bench/capacity", 1)
    client.on_subscribe = lambda *a: ready.set()
    client.on_message = lambda c, u, m: arrivals.put(time.monotonic())
    client.connect(host, port)
    client.loop_start()
    first = last = arrivals.get(timeout=60)
    count = 1
    while True:
        try:
            last = arrivals.get(timeout=2.0)
        except queue.Empty:
            break
        count += 1
    client.disconnect()
    client.loop_stop()
    out.put((count, last - first))


def broker_capacity(broker: Mosquitto, seconds: float, size: int) -> dict[str, Any]:
    """A plain paho publisher/subscriber pair at QoS 1: flat-out message rate, and the round
    trip (publish → delivered) of paced messages: what any MQTT application gets here."""
    got: queue.Queue[float] = queue.Queue()
    subscribed = threading.Event()
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-capacity-sub")
    sub.on_socket_open = no_delay
    sub.on_connect = lambda c, *a: c.subscribe("bench/capacity", 1)
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_message = lambda c, u, m: got.put(time.monotonic())
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-capacity-pub")
    pub.on_socket_open = no_delay
    pub.max_inflight_messages_set(1000)
    pub.max_queued_messages_set(0)
    for client in (sub, pub):
        client.connect(broker.host, broker.port)
        client.loop_start()
    try:
        if not subscribed.wait(10):
            raise RuntimeError("the capacity subscriber could not subscribe")
        payload = bytes(size)
        rtt = []
        for _ in range(10 * 30):  # 10 s at 30 messages/s
            sent = time.monotonic()
            pub.publish("bench/capacity", payload, qos=1)
            rtt.append((got.get(timeout=5) - sent) * 1e3)
            time.sleep(max(0.0, 1 / 30 - (time.monotonic() - sent)))
        sub.disconnect()  # the flat-out rate is counted in a process of its own: one
        sub.loop_stop()  # Python process publishing and receiving measures its own GIL
        ctx = multiprocessing.get_context("spawn")
        counted: multiprocessing.Queue[tuple[int, float]] = ctx.Queue()
        ready = ctx.Event()
        counter = ctx.Process(target=_count, args=(broker.host, broker.port, ready, counted))
        counter.start()
        if not ready.wait(30):
            raise RuntimeError("the counting subscriber could not subscribe")
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            for _ in range(100):
                pub.publish("bench/capacity", payload, qos=1)
        received, span = counted.get(timeout=120)
        counter.join(10)
        return {
            "message_bytes": size,
            "qos1_messages_per_s": (received - 1) / span,
            "round_trip_ms": {
                "p50": float(np.percentile(rtt, 50)),
                "p99": float(np.percentile(rtt, 99)),
            },
        }
    finally:
        for client in (sub, pub):
            client.disconnect()
            client.loop_stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", nargs="+", type=float, default=[100, 200, 300, 400, 600, 800])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "system.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = make_bundle(work / "bundle")
        size = len(encode_features(SITE, NODE, "g0", 0, 0.0, 0, "0" * 16, np.zeros(DIM)))
        with Mosquitto(work / "mosquitto") as broker:
            capacity = broker_capacity(broker, args.seconds, size)
            at30 = run_rate(bundle, broker, work, 30.0, 10.0)
            sweep = [run_rate(bundle, broker, work, r, args.seconds) for r in args.rates]
    sustained = max((r["rate_hz"] for r in sweep if r["all_complete"]), default=None)
    overhead = at30["overhead_ms"] or {}
    share = (sustained or 0) * N / capacity["qos1_messages_per_s"]
    overhead_ratio = (overhead.get("p99") or 1e9) / capacity["round_trip_ms"]["p99"]
    report = {
        "n_streams": N,
        "feature_dim": DIM,
        "broker": capacity,
        "at_30_hz": at30,
        "sweep": sweep,
        "max_complete_rate_hz": sustained,
        "complete_messages_share_of_broker_rate": share,
        "overhead_p99_over_broker_round_trip_p99": overhead_ratio,
        "goals": {
            "complete_ticks_x_n_ge_half_broker_rate": share >= 0.5,
            "overhead_p99_le_2x_broker_round_trip_p99": overhead_ratio <= 2.0,
            "no_unaccounted_ticks": all(r["unaccounted"] == 0 for r in sweep),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("sweep", "at_30_hz")}))
    print(json.dumps({"sweep": [{k: r[k] for k in SWEEP_KEYS} for r in sweep]}))
    print(
        json.dumps({"at_30_hz": {k: at30[k] for k in ("overhead_ms", "end_to_end_ms", "complete")}})
    )


if __name__ == "__main__":
    main()
