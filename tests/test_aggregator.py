"""The aggregator as systemd runs it: the installed console script, a real mosquitto, a real
bundle built by `modelgen build`, and features computed by ONNX Runtime from its test split.

Results must equal what `modelgen eval` computes from the same features (fp16 rounding, numpy
fusion); bad messages must be counted under their reason without disturbing valid ticks; a
broker restart must be survived; status, LWT and Home Assistant discovery must be retained.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import yaml

from edvit import topics
from edvit.bundle import load_bundle
from edvit.demo.brokers import BrokerProcess
from edvit.fusion import NumpyFusionMLP, softmax
from edvit.preprocess import parse_preprocess, preprocess_batch
from edvit.wire import encode_features

from broker import (
    Mosquitto,
    ProvisionedMosquitto,
    Subscriber,
    free_port,
    mosquitto_binary,
    passwords,
    provision,
)
from tiny import build_bundle, tiny_digits

BIN = Path(sys.executable).parent
SITE = "t1"
NODE = "test-node"
PERIOD = 0.01  # short, so that a test's hundred ticks span only a second of the clock
DEADLINE = 1.0  # generous: the suite runs on 2 shared cores
BACKGROUND = "0"  # the bundle's background class: it never fires an event


pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None, reason="mosquitto is not installed (scripts/setup.sh installs it)"
)


@dataclass
class Data:
    """A built bundle and its test split as the nodes would send it."""

    bundle: Path
    classes: list[str]
    subs: list[str]
    hashes: dict[str, str]
    feats: dict[str, np.ndarray]  # sub → (N, d) float32 from ONNX Runtime
    labels: np.ndarray
    probs: np.ndarray  # (N, C) what eval's fusion gives on the fp16-rounded features
    fused_acc: float
    mlp: NumpyFusionMLP

    def expected(self, i: int, missing: tuple[str, ...] = ()) -> np.ndarray:
        feats = {
            s: self.feats[s][i : i + 1].astype(np.float16).astype(np.float32)
            for s in self.subs
            if s not in missing
        }
        out: np.ndarray = softmax(self.mlp.forward(feats))[0]
        return out


def _test_split(bundle_dir: Path) -> tuple[list[np.ndarray], np.ndarray]:
    from modelgen.datasets import load_dataset
    from modelgen.datasets.split import apply_split

    split = load_bundle(bundle_dir).manifest.split
    dataset = load_dataset(split.dataset)
    idx = apply_split(split.record, dataset).test
    return [dataset.samples[i] for i in idx], dataset.labels[idx]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    import onnxruntime as ort

    recipe = tiny_digits("tiny-digits-online")
    recipe["dataset"]["background_classes"] = [BACKGROUND]
    out = build_bundle(tmp_path_factory.mktemp("online-bundle"), recipe)
    bundle = load_bundle(out)
    m = bundle.manifest
    samples, labels = _test_split(out)
    x = preprocess_batch(parse_preprocess(m.preprocess), samples)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    feats = {}
    for sub in m.submodels:
        session = ort.InferenceSession(
            str(bundle.path(sub.onnx)), opts, providers=["CPUExecutionProvider"]
        )
        rows = [  # one sample at a time, as a node runs it (and as `modelgen eval` does)
            session.run([sub.onnx_outputs[0]], {sub.onnx_input: x[i : i + 1]})[0]
            for i in range(len(x))
        ]
        feats[sub.id] = np.concatenate(rows)
    mlp = NumpyFusionMLP.from_bundle(bundle)
    # exactly modelgen eval's computation (modelgen/evaluate.py)
    rounded = {s: f.astype(np.float16).astype(np.float32) for s, f in feats.items()}
    logits = mlp.forward(rounded)
    assert float((logits.argmax(1) == labels).mean()) == m.metrics["fused_acc"]
    return Data(
        bundle=out,
        classes=m.classes,
        subs=[s.id for s in m.submodels],
        hashes={s.id: bundle.model_hash(s.id) for s in m.submodels},
        feats=feats,
        labels=labels,
        probs=softmax(logits),
        fused_acc=m.metrics["fused_acc"],
        mlp=mlp,
    )


def site_config(path: Path, subs: list[str], ha: bool = False, **aggregator: Any) -> Path:
    """The site: one node NODE running every sub-model (the aggregator trusts only it)."""
    cfg = {
        "site": SITE,
        "nodes": {NODE: {"source": {"kind": "images", "folder": "."}, "submodels": subs}},
        "broker": {"host": "127.0.0.1", "port": 1, "keepalive": 10},
        "tick": {
            "period_s": PERIOD,
            "deadline_s": DEADLINE,
            "max_past_ticks": 1000,
            "max_future_ticks": 1000,
        },
        "aggregator": {
            "stats_interval_s": 0.3,
            "buffer_ticks": 256,
            "max_message_bytes": 4096,
            "home_assistant": {"enabled": ha},
            "no_data_after_s": 3600,  # the module's aggregator idles between tests
            **aggregator,
        },
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


class Running:
    """An `aggregator run` process with its output in files."""

    def __init__(
        self,
        data: Data,
        broker: BrokerProcess,
        workdir: Path,
        ha: bool = False,
        config: Path | None = None,
        password: str | None = None,
        **aggregator: Any,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = config or site_config(workdir / "site.yaml", data.subs, ha=ha, **aggregator)
        env = {**os.environ, **({"EDVIT_MQTT_PASSWORD": password} if password else {})}
        self.stdout = workdir / "stdout.txt"
        self.stderr = workdir / "stderr.txt"
        with self.stdout.open("w") as out, self.stderr.open("w") as err:
            self.proc = subprocess.Popen(
                [
                    str(BIN / "aggregator"),
                    "run",
                    "--bundle",
                    str(data.bundle),
                    "--config",
                    str(self.config),
                    "--broker",
                    broker.address,
                    "--print",
                ],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    def output(self) -> tuple[str, str]:
        return self.stdout.read_text(), self.stderr.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def topic(kind: str) -> str:
    return {
        "result": f"edvit/{SITE}/result",
        "status": f"edvit/{SITE}/aggregator/status",
        "stats": f"edvit/{SITE}/aggregator/stats",
        "event": f"edvit/{SITE}/event",
    }[kind]


def wait_online(sub: Subscriber, run: Running, timeout: float = 20) -> None:
    try:
        sub.wait_for(lambda m: m.topic == topic("status") and m.payload == b"online", timeout)
    except TimeoutError:
        raise AssertionError(f"aggregator not online: {run.output()[1][-3000:]}") from None


_last_tick = 0


def fresh_ticks(count: int, lead: int = 5) -> list[int]:
    """Ticks no earlier test used (an emitted tick stays closed), starting `lead` ticks from
    now: a long run needs the lead, or a loaded machine publishes its last ticks after
    their deadline."""
    global _last_tick
    start = max(int(time.time() / PERIOD) + lead, _last_tick + 1)
    _last_tick = start + count - 1
    return list(range(start, start + count))


def fresh_tick() -> int:
    return fresh_ticks(1)[0]


def publish_sample(
    client: Subscriber, data: Data, tick: int, i: int, subs: list[str] | None = None
) -> None:
    for sub in data.subs if subs is None else subs:
        payload = encode_features(
            SITE, NODE, sub, tick, time.time(), i, data.hashes[sub], data.feats[sub][i]
        )
        client.publish(topics.feat(SITE, NODE, sub), payload)


def results_for(sub: Subscriber, ticks: set[int], timeout: float = 20) -> dict[int, Any]:
    got: dict[int, Any] = {}

    def wanted(m: Any) -> bool:
        if m.topic != topic("result"):
            return False
        r = json.loads(m.payload)
        return r["tick"] in ticks and r["tick"] not in got

    deadline = time.monotonic() + timeout
    while set(got) != ticks:
        left = deadline - time.monotonic()
        try:
            msg = sub.wait_for(wanted, timeout=max(0.01, left))
        except TimeoutError:
            raise AssertionError(f"no results for ticks {sorted(ticks - set(got))}") from None
        r = json.loads(msg.payload)
        got[r["tick"]] = r
    return got


def stats_where(
    sub: Subscriber, ok: Callable[[dict[str, Any]], bool], timeout: float = 15
) -> dict[str, Any]:
    """The first stats message from now on that satisfies `ok`."""
    sub.seen = [m for m in sub.seen if m.topic != topic("stats")]
    last: list[dict[str, Any]] = []

    def match(m: Any) -> bool:
        if m.topic != topic("stats"):
            return False
        last[:] = [json.loads(m.payload)]
        return ok(last[0])

    try:
        msg = sub.wait_for(match, timeout)
    except TimeoutError:
        raise AssertionError(f"stats never matched; last: {last}") from None
    stats: dict[str, Any] = json.loads(msg.payload)
    return stats


def check_result(data: Data, r: dict[str, Any], i: int, missing: tuple[str, ...] = ()) -> None:
    probs = data.probs[i] if not missing else data.expected(i, missing)
    assert r["label"] == data.classes[int(probs.argmax())]
    assert r["complete"] is (not missing)
    assert r["missing"] == list(missing)
    got = np.array([r["scores"][c] for c in data.classes])
    np.testing.assert_allclose(got, probs, atol=2e-6)
    assert r["score"] == pytest.approx(float(probs.max()), abs=2e-6)
    assert r["latency_ms"] >= 0


# --- one aggregator for most tests ------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path_factory.mktemp("broker")).start()
    yield b
    b.kill()


@pytest.fixture(scope="module")
def agg(
    data: Data, broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Running, Subscriber]]:
    sub = Subscriber(broker, [topic("result"), topic("status"), topic("stats"), "homeassistant/#"])
    run = Running(data, broker, tmp_path_factory.mktemp("agg"), ha=True)
    wait_online(sub, run)
    yield run, sub
    assert run.stop() == 0
    assert "Traceback" not in run.output()[1]
    sub.close()


def test_results_equal_eval_fusion(data: Data, agg: tuple[Running, Subscriber]) -> None:
    _, sub = agg
    n = len(data.labels)
    ticks = fresh_ticks(n, lead=300)  # 3 s to publish them all before the first deadline
    for i, tick in enumerate(ticks):
        publish_sample(sub, data, tick, i)
    got = results_for(sub, set(ticks))
    for i, tick in enumerate(ticks):
        check_result(data, got[tick], i)
    acc = np.mean([got[t]["label"] == data.classes[data.labels[i]] for i, t in enumerate(ticks)])
    assert acc == data.fused_acc  # modelgen eval's figure, reproduced over MQTT


def test_partial_at_deadline_then_late(data: Data, agg: tuple[Running, Subscriber]) -> None:
    _, sub = agg
    before = stats_where(sub, lambda s: True)
    tick = fresh_tick()
    kept = [s for s in data.subs if s != data.subs[1]]
    publish_sample(sub, data, tick, 3, kept)
    [r] = results_for(sub, {tick}, timeout=DEADLINE + 10).values()
    check_result(data, r, 3, missing=(data.subs[1],))
    assert (time.time() - tick * PERIOD) >= DEADLINE - 0.05  # it waited for the deadline
    publish_sample(sub, data, tick, 3, [data.subs[1]])  # the straggler, too late
    stats_where(sub, lambda s: s["late"] == before["late"] + 1 and s["partial"] > before["partial"])


def test_duplicates_are_counted(data: Data, agg: tuple[Running, Subscriber]) -> None:
    _, sub = agg
    before = stats_where(sub, lambda s: True)
    tick = fresh_tick()
    publish_sample(sub, data, tick, 0, data.subs[:1])
    publish_sample(sub, data, tick, 0, data.subs[:1])
    publish_sample(sub, data, tick, 0, data.subs[1:])
    check_result(data, results_for(sub, {tick})[tick], 0)
    stats_where(sub, lambda s: s["duplicate"] == before["duplicate"] + 1)


def _pub(broker: Mosquitto, topic_: str, tmp: Path, payload: bytes) -> None:
    """Publish raw bytes with the mosquitto_pub command line client."""
    path = tmp / "payload.bin"
    path.write_bytes(payload)
    tool = shutil.which("mosquitto_pub")
    assert tool is not None
    subprocess.run(
        [tool, "-h", broker.host, "-p", str(broker.port), "-q", "1", "-t", topic_, "-f", str(path)],
        check=True,
        timeout=10,
    )


def test_bad_messages_are_counted_and_valid_ticks_unaffected(
    data: Data, agg: tuple[Running, Subscriber], broker: Mosquitto, tmp_path: Path
) -> None:
    _, sub = agg
    before = stats_where(sub, lambda s: True)
    g0 = data.subs[0]
    tick, *valid = fresh_ticks(4)

    def good(**changes: Any) -> bytes:
        raw = msgpack.unpackb(
            encode_features(
                SITE, NODE, g0, tick, time.time(), 0, data.hashes[g0], data.feats[g0][0]
            )
        )
        raw.update(changes)
        out: bytes = msgpack.packb(raw, use_bin_type=True)
        return out

    dim = data.feats[g0].shape[1]
    nan = np.zeros(dim, "<f2")
    nan[3] = np.nan
    bad = {
        "malformed": b"this is not msgpack \xc1",
        "oversized": b"\x00" * 5000,
        "model_hash": good(model="0" * 16),
        "shape": good(shape=[dim + 1], feat=b"\x00" * (2 * dim + 2)),
        "non_finite": good(feat=nan.tobytes()),
        "schema": good(extra="key"),
        "version": good(v=9),
        "site": good(site="elsewhere"),
        "unknown_sub": good(sub="g99"),
        "dtype": good(dtype="float32"),
        "tick_range": good(tick=tick + 100_000),
        "wrong_node": good(),  # on another node's topic: that node does not run g0
    }
    targets = {
        "unknown_sub": topics.feat(SITE, NODE, "g99"),
        "wrong_node": topics.feat(SITE, "intruder", g0),
    }
    valid_ticks = {t: i for i, t in enumerate(valid, start=1)}
    publish_sample(sub, data, valid[0], 1)
    for reason, payload in bad.items():
        _pub(broker, targets.get(reason, topics.feat(SITE, NODE, g0)), tmp_path, payload)
        if reason == "model_hash":
            publish_sample(sub, data, valid[1], 2)  # a valid tick in the middle of the flood
    publish_sample(sub, data, valid[2], 3)
    got = results_for(sub, set(valid_ticks))
    for t, i in valid_ticks.items():
        check_result(data, got[t], i)

    def counted(s: dict[str, Any]) -> bool:
        return all(s["dropped"][r] == before["dropped"][r] + 1 for r in bad)

    after = stats_where(sub, counted)
    assert after["received"] - before["received"] == len(bad) + 3 * len(data.subs)
    assert after["dropped"]["error"] == 0
    assert after["pending"] == 0  # the bad messages opened no tick


def test_status_and_home_assistant_discovery(
    data: Data, agg: tuple[Running, Subscriber], broker: Mosquitto
) -> None:
    fresh = Subscriber(broker, [topic("status"), "homeassistant/#"])
    status = fresh.wait_for(lambda m: m.topic == topic("status"))
    assert (status.payload, status.retain) == (b"online", True)
    ha = fresh.wait_for(
        lambda m: m.topic == f"homeassistant/sensor/edvit_{SITE}/{SITE}_edvit/config"
    )
    assert ha.retain
    cfg = json.loads(ha.payload)
    assert cfg["state_topic"] == topic("result")
    assert cfg["default_entity_id"] == f"sensor.{SITE}_edvit"
    [avail] = cfg["availability"]
    assert avail["topic"] == topic("status")
    assert "value_json.tick" not in cfg["json_attributes_template"]  # no row per tick
    event = fresh.wait_for(
        lambda m: m.topic == f"homeassistant/event/edvit_{SITE}/{SITE}_edvit_detection/config"
    )
    assert event.retain
    detection = json.loads(event.payload)
    assert detection["state_topic"] == topic("event")
    assert detection["event_types"] == [c for c in data.classes if c != BACKGROUND]
    fresh.close()


def test_disabled_discovery_removes_the_entities(
    data: Data, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    label = f"homeassistant/sensor/edvit_{SITE}/{SITE}_edvit/config"
    sub = Subscriber(mosquitto, [topic("result"), topic("status"), label])
    sub.publish(label, b'{"state_topic": "stale"}', retain=True)  # left by an earlier run
    run = Running(data, mosquitto, tmp_path / "agg", ha=False)
    try:
        wait_online(sub, run)
        sub.wait_for(lambda m: m.topic == label and m.payload == b"")  # the clear goes out
        fresh = Subscriber(mosquitto, ["homeassistant/#"])
        left = [m.topic for m in fresh.drain(quiet=0.5) if m.payload]
        assert left == []  # the retained config is gone
        fresh.close()
    finally:
        run.stop()
        sub.close()


def test_status_says_no_data_while_no_features_arrive(
    data: Data, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    sub = Subscriber(mosquitto, [topic("result"), topic("status"), topic("stats")])
    run = Running(data, mosquitto, tmp_path / "agg", no_data_after_s=1.0)
    try:
        wait_online(sub, run)
        sub.wait_for(lambda m: m.topic == topic("status") and m.payload == b"no_data")
        quiet = stats_where(sub, lambda s: not s["receiving"])
        assert quiet["last_feature_age_s"] >= 1.0
        tick = fresh_tick()
        publish_sample(sub, data, tick, 3)
        check_result(data, results_for(sub, {tick})[tick], 3)
        sub.wait_for(lambda m: m.topic == topic("status") and m.payload == b"online")
        assert stats_where(sub, lambda s: s["receiving"])["last_feature_age_s"] < 1.0
    finally:
        run.stop()
        sub.close()


def test_an_event_and_a_retained_count_but_none_for_the_background(
    data: Data, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    labels = [data.classes[int(p.argmax())] for p in data.probs]
    quiet = labels.index(BACKGROUND)  # a test sample the model calls background
    loud = next(i for i, label in enumerate(labels) if label != BACKGROUND)
    label = labels[loud]
    threshold = round(float(data.probs[loud].max()) - 1e-3, 6)  # just below its score
    events = {"thresholds": {label: threshold}, "patience": 3, "refractory_s": 0}
    sub = Subscriber(mosquitto, [topic("result"), topic("status"), topic("stats"), topic("event")])
    run = Running(data, mosquitto, tmp_path / "agg", events=events)
    try:
        wait_online(sub, run)
        ticks = fresh_ticks(8)
        samples = [quiet] * 4 + [loud] * 4  # the background never fires; the label at its 3rd
        for tick, i in zip(ticks, samples, strict=True):
            publish_sample(sub, data, tick, i)
        got = results_for(sub, set(ticks))
        assert [got[t]["label"] for t in ticks] == [BACKGROUND] * 4 + [label] * 4
        msg = sub.wait_for(lambda m: m.topic == topic("event"))
        assert not msg.retain
        event = json.loads(msg.payload)
        assert event == {
            "label": label,
            "event_type": label,
            "score": pytest.approx(float(data.probs[loud].max()), abs=2e-6),
            "start_ts": pytest.approx(got[ticks[4]]["ts"]),
            "end_ts": pytest.approx(got[ticks[6]]["ts"]),
            "ticks": 3,
            "site": SITE,
        }
        assert stats_where(sub, lambda s: s["fused"] >= len(ticks))["events_fired"] == 1
        assert [m for m in sub.drain(0.5) if m.topic == topic("event")] == []  # once a run
        assert len([m for m in sub.seen if m.topic == topic("event")]) == 1
        counts = Subscriber(mosquitto, [f"edvit/{SITE}/count/+"])
        retained = {m.topic: m for m in counts.drain(0.5)}
        counts.close()
        assert f"edvit/{SITE}/count/{BACKGROUND}" not in retained  # background is not counted
        count = retained[f"edvit/{SITE}/count/{label}"]
        assert count.retain
        assert json.loads(count.payload) == {
            "label": label,
            "last_minute": 1,
            "last_hour": 1,
            "since_start": 1,
            "started": pytest.approx(time.time(), abs=120),
        }
        others = [json.loads(m.payload) for t, m in retained.items() if not t.endswith(f"/{label}")]
        assert len(others) == len(data.classes) - 2
        assert all(c["since_start"] == 0 for c in others)
    finally:
        run.stop()
        sub.close()


# --- own aggregators: stopping, broker restart, start-up failures -----------------------------


def test_sigterm_publishes_stopped(data: Data, mosquitto: Mosquitto, tmp_path: Path) -> None:
    sub = Subscriber(mosquitto, [topic("result"), topic("status")])
    run = Running(data, mosquitto, tmp_path / "agg")
    wait_online(sub, run)
    tick = fresh_tick()
    publish_sample(sub, data, tick, 4)
    check_result(data, results_for(sub, {tick})[tick], 4)
    assert run.stop() == 0
    out, err = run.output()
    assert f"tick {tick}: {data.classes[int(data.probs[4].argmax())]}" in out
    assert "complete" in out
    assert "Traceback" not in err
    fresh = Subscriber(mosquitto, [topic("status")])
    status = fresh.wait_for(lambda m: m.topic == topic("status"))
    assert (status.payload, status.retain) == (b"stopped", True)
    fresh.close()
    sub.close()


def test_broker_restart_then_sigkill_leaves_offline(
    data: Data, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    run = Running(data, mosquitto, tmp_path / "agg")
    try:
        sub = Subscriber(mosquitto, [topic("result"), topic("status"), topic("stats")])
        wait_online(sub, run)
        tick = fresh_tick()
        publish_sample(sub, data, tick, 5)
        results_for(sub, {tick})
        sub.close()
        mosquitto.restart()
        sub = Subscriber(mosquitto, [topic("result"), topic("status"), topic("stats")])
        wait_online(sub, run)  # re-published (retained) after the reconnect
        stats = stats_where(sub, lambda s: s["reconnects"] >= 1)
        assert stats["connected"] is True
        ticks = {t: k for k, t in enumerate(fresh_ticks(5))}
        for t, i in ticks.items():
            publish_sample(sub, data, t, i)  # the aggregator resubscribed by itself
        got = results_for(sub, set(ticks))
        for t, i in ticks.items():
            check_result(data, got[t], i)
        run.kill()  # SIGKILL: no goodbye, the broker publishes the will
        sub.wait_for(lambda m: m.topic == topic("status") and m.payload == b"offline")
        sub.close()
    finally:
        run.kill()
    assert "Traceback" not in run.output()[1]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "aggregator"), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_validate_config(data: Data, tmp_path: Path) -> None:
    config = site_config(tmp_path / "site.yaml", data.subs)
    ok = run_cli("run", "--bundle", str(data.bundle), "--config", str(config), "--validate-config")
    assert ok.returncode == 0, ok.stderr
    assert "every sha256 verified" in ok.stdout
    text = config.read_text().replace("buffer_ticks", "buffer_tickz")
    config.write_text(text + "aggregator_typo: 1\n")
    bad = run_cli("run", "--bundle", str(data.bundle), "--config", str(config), "--validate-config")
    assert bad.returncode == 2
    assert f"{config}: aggregator_typo: unknown key (line" in bad.stderr
    assert "Traceback" not in bad.stderr
    events = {"thresholds": {BACKGROUND: 0.5}}
    config = site_config(tmp_path / "site.yaml", data.subs, events=events)
    bad = run_cli("run", "--bundle", str(data.bundle), "--config", str(config), "--validate-config")
    assert bad.returncode == 2
    assert f"aggregator.events.thresholds.{BACKGROUND}: a background class" in bad.stderr


def test_tampered_bundle_is_refused(data: Data, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(data.bundle, copy, ignore=shutil.ignore_patterns(".cache"))
    fusion = copy / "fusion.safetensors"
    raw = bytearray(fusion.read_bytes())
    raw[-1] ^= 0xFF
    fusion.write_bytes(bytes(raw))
    config = site_config(tmp_path / "site.yaml", data.subs)
    for extra in ([], ["--validate-config"]):
        proc = run_cli("run", "--bundle", str(copy), "--config", str(config), *extra)
        assert proc.returncode == 2
        assert "fusion.safetensors: sha256 mismatch" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_no_broker_gives_up_cleanly(data: Data, tmp_path: Path) -> None:
    config = site_config(tmp_path / "site.yaml", data.subs)
    proc = run_cli(
        "run",
        "--bundle",
        str(data.bundle),
        "--config",
        str(config),
        "--broker",
        f"127.0.0.1:{free_port()}",
        "--connect-timeout",
        "1",
    )
    assert proc.returncode == 1
    assert "did not answer within 1 s" in proc.stderr
    assert "Traceback" not in proc.stderr


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.mark.slow
def test_an_unpaced_flood_costs_no_valid_tick(
    data: Data, agg: tuple[Running, Subscriber], broker: Mosquitto
) -> None:
    """20,000 messages as fast as a client can send them — on another node's feature topic
    (the only one a provisioned broker lets that node's login write) and on topics of no
    sub-model — while the genuine node sends a valid stream: every valid tick is complete
    and correct, every flood message is counted dropped, and memory stays bounded."""
    run, sub = agg
    before = stats_where(sub, lambda s: True)
    rss_before = _rss_kib(run.proc.pid)
    g0 = data.subs[0]
    junk = encode_features(
        SITE, "intruder", g0, fresh_tick(), time.time(), 0, data.hashes[g0], data.feats[g0][0]
    )
    flood_topics = [topics.feat(SITE, "intruder", g0), topics.feat(SITE, "intruder", "g99")]
    flooder = Subscriber(broker, [])
    ticks = fresh_ticks(20, lead=100)
    sent = 0

    def flood() -> None:
        nonlocal sent
        for i in range(20_000):
            flooder._client.publish(flood_topics[i % 2], junk, qos=0)
            sent += 1

    thread = threading.Thread(target=flood)
    thread.start()
    for i, tick in enumerate(ticks):  # interleaved with the flood
        publish_sample(sub, data, tick, i)
    thread.join(60)
    got = results_for(sub, set(ticks), timeout=60)
    for i, tick in enumerate(ticks):
        check_result(data, got[tick], i)

    def flood_drops(s: dict[str, Any]) -> int:
        return sum(s["dropped"][r] - before["dropped"][r] for r in ("wrong_node", "unknown_sub"))

    def counted(s: dict[str, Any]) -> bool:  # every message that arrived is valid or counted
        arrived = s["received"] - before["received"]
        return arrived == flood_drops(s) + len(ticks) * len(data.subs) and arrived > 0.9 * sent

    after = stats_where(sub, counted, timeout=60)  # QoS 0: the broker may shed a few itself
    assert after["dropped"]["queue_full"] == before["dropped"]["queue_full"]
    assert _rss_kib(run.proc.pid) - rss_before < 50_000  # < 50 MB for 20,000 messages
    flooder.close()


@pytest.mark.slow
def test_one_nodes_password_decides_nothing_on_a_provisioned_site(
    data: Data, tmp_path: Path
) -> None:
    """The site provisioned by `edvit site credentials`, attacked with node pi-2's login
    while both nodes stream: forged features on the other node's topics (the broker
    refuses them), on its own topics for the other node's sub-models and with the other
    node's name (the aggregator drops them as wrong_node), a spoofed status, a cross-site
    publish, a reader taking the aggregator's client id, a 20 MiB payload. Every valid tick
    is complete and correct; the aggregator never leaves the broker."""
    *mine, theirs = data.subs
    cfg = yaml.safe_load(site_config(tmp_path / "base.yaml", data.subs).read_text())
    images = {"kind": "images", "folder": "."}
    cfg["nodes"] = {NODE: {"source": images, "submodels": mine},
                    "pi-2": {"source": images, "submodels": [theirs]}}  # fmt: skip
    cfg["broker"]["port"] = free_port()
    cfg["readers"] = ["viewer", "dashboard"]
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    proc = provision(path, out, "--bind", "127.0.0.1")
    assert proc.returncode == 0, proc.stderr
    pw = passwords(path, out)
    broker = ProvisionedMosquitto(out, cfg["broker"]["port"]).start()
    watched = [topic("result"), topic("status"), topic("stats"), "edvit/+/node/+/status"]
    viewer = Subscriber(broker, watched, login=("viewer", pw["viewer"]))
    run = Running(data, broker, tmp_path / "agg", config=path, password=pw["aggregator"])
    genuine = Subscriber(broker, [], login=(NODE, pw[NODE]))
    attacker = Subscriber(broker, [], login=("pi-2", pw["pi-2"]))
    try:
        wait_online(viewer, run)
        genuine.publish(topics.node_status(SITE, NODE), topics.ONLINE, retain=True)
        thief = Subscriber(broker, [], login=("dashboard", pw["dashboard"]),
                           client_id=topics.client_id(SITE, "aggregator"))  # fmt: skip
        ticks = fresh_ticks(20, lead=50)
        for i, tick in enumerate(ticks):
            for sub in mine:  # forged first: the first message of a tick would win
                forged = encode_features(
                    SITE, NODE, sub, tick, time.time(), i, data.hashes[sub], data.feats[sub][-1]
                )
                attacker.publish(topics.feat(SITE, NODE, sub), forged)  # refused by the broker
                attacker.publish(topics.feat(SITE, "pi-2", sub), forged)  # wrong_node
                attacker.publish(f"edvit/other/node/pi-2/feat/{sub}", forged)  # refused
            for sub in mine:
                payload = encode_features(
                    SITE, NODE, sub, tick, time.time(), i, data.hashes[sub], data.feats[sub][i]
                )
                genuine.publish(topics.feat(SITE, NODE, sub), payload)
            payload = encode_features(
                SITE, "pi-2", theirs, tick, time.time(), i, data.hashes[theirs],
                data.feats[theirs][i],
            )  # fmt: skip
            attacker.publish(topics.feat(SITE, "pi-2", theirs), payload)
        attacker.publish(topics.node_status(SITE, NODE), topics.OFFLINE, retain=True)
        got = results_for(viewer, set(ticks), timeout=60)
        for i, tick in enumerate(ticks):
            check_result(data, got[tick], i)
        stats = stats_where(viewer, lambda s: s["dropped"]["wrong_node"] == len(ticks) * len(mine))
        assert stats["received"] == len(ticks) * (2 * len(mine) + 1)  # nothing else got through
        attacker._client.publish(topics.feat(SITE, "pi-2", theirs), b"\0" * (20 << 20), qos=1)
        time.sleep(2)
        statuses = [m.payload for m in viewer.seen + viewer.drain() if m.topic.endswith("status")]
        assert topics.OFFLINE.encode() not in statuses  # no spoofed node, no kicked aggregator
        final = stats_where(viewer, lambda s: True)
        assert final["received"] == stats["received"]  # the 20 MiB never reached it
        assert final["reconnects"] == 0
        thief.close()
    finally:
        run.stop()
        for client in (viewer, genuine, attacker):
            client.close()
        broker.kill()
