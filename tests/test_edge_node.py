"""The edge node as systemd runs it: the installed `edge-node` script, a real mosquitto, a
real bundle built by `modelgen build`, and replay files written by `modelgen samples`.

Features on the wire must equal a direct ONNX Runtime run on the sample the tick showed
(item k mod M) up to fp16 rounding; status, LWT and stats must be published; an overrun must
skip and count ticks; relay nodes must compute on the camera node's frames; a bad config
must exit 2 naming the key; a broker restart must be survived.
"""

from __future__ import annotations

import json
import shutil
import signal
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

from edge_node.sources import decode_jpeg, encode_jpeg
from edge_node.tick import TickSchedule
from edvit.bundle import load_bundle
from edvit.media import read_image
from edvit.preprocess import parse_preprocess, preprocess
from edvit.wire import FeatureMessage, decode_features, decode_frame

from broker import Mosquitto, Subscriber, free_port, mosquitto_binary
from tiny import build_bundle, tiny_digits

BIN = Path(sys.executable).parent
SITE = "n1"
PERIOD = 0.2


pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None, reason="mosquitto is not installed (scripts/setup.sh installs it)"
)


# --- pure tick arithmetic ---------------------------------------------------------------------


def test_tick_schedule() -> None:
    s = TickSchedule(0.5)
    assert s.due(10) == 5.0
    assert s.first(5.0) == 11  # tick 10 is due at 5.0 exactly: the next one is 11
    assert s.first(5.2) == 11
    assert s.after(10, 5.3) == (11, 0)  # finished before 11 was due
    assert s.after(10, 5.5) == (11, 0)  # exactly at its due time: not an overrun
    assert s.after(10, 5.6) == (12, 1)  # overran 11: skipped
    assert s.after(10, 7.1) == (15, 4)
    assert s.catch_up(11, 5.51) == (11, 0)
    assert s.catch_up(11, 6.6) == (13, 2)  # woke late: run the newest due tick
    with pytest.raises(ValueError, match="positive"):
        TickSchedule(0.0)


# --- the bundle, its replay files and the features a node must publish -----------------------


@dataclass
class Data:
    bundle: Path
    samples: Path  # modelgen samples output: 000000.png … + labels.json
    files: list[Path]
    subs: list[str]
    hashes: dict[str, str]
    dims: dict[str, int]
    sessions: dict[str, Any]
    names: dict[str, tuple[str, str]]  # sub → (ONNX input, feature output)
    spec: Any

    def features(self, sub: str, image: np.ndarray) -> np.ndarray:
        """What ONNX Runtime gives for `image` (float32), run directly, not by a node."""
        inp, feat = self.names[sub]
        (batch,) = self.sessions[sub].run([feat], {inp: preprocess(self.spec, image)[None]})
        return np.asarray(batch[0], dtype=np.float32)

    def expected(self, sub: str, tick: int, jpeg_quality: int | None = None) -> np.ndarray:
        """Features of the item tick `tick` shows (k mod M); through JPEG if relayed."""
        image = read_image(self.files[tick % len(self.files)])
        if jpeg_quality is not None:
            image = decode_jpeg(encode_jpeg(image, jpeg_quality))
        return self.features(sub, image)


def run_tool(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    import onnxruntime as ort

    root = tmp_path_factory.mktemp("node-bundle")
    out = build_bundle(root, tiny_digits("tiny-digits-node"))
    samples = root / "samples"
    run_tool("modelgen", "samples", str(out), "--out", str(samples))
    labels = json.loads((samples / "labels.json").read_text())
    bundle = load_bundle(out)
    m = bundle.manifest
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sessions = {
        s.id: ort.InferenceSession(
            str(bundle.path(s.onnx)), opts, providers=["CPUExecutionProvider"]
        )
        for s in m.submodels
    }
    return Data(
        bundle=out,
        samples=samples,
        files=[samples / item["file"] for item in labels["items"]],
        subs=[s.id for s in m.submodels],
        hashes={s.id: bundle.model_hash(s.id) for s in m.submodels},
        dims={s.id: s.feature_dim for s in m.submodels},
        sessions=sessions,
        names={s.id: (s.onnx_input, s.onnx_outputs[0]) for s in m.submodels},
        spec=parse_preprocess(m.preprocess),
    )


# --- processes --------------------------------------------------------------------------------


def images(data: Data) -> dict[str, Any]:
    return {"kind": "images", "folder": str(data.samples), "pattern": "*.png"}


def site_config(path: Path, nodes: dict[str, Any], period: float = PERIOD) -> Path:
    cfg = {
        "site": SITE,
        "broker": {"host": "127.0.0.1", "port": 1, "keepalive": 5},
        "tick": {
            "period_s": period,
            "deadline_s": min(0.5, 2 * period),
            "max_past_ticks": 100,
            "max_future_ticks": 100,
        },
        "nodes": nodes,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


class Node:
    """An `edge-node run` process with its output in files; killed by `kill()` at the latest."""

    def __init__(self, data: Data, broker: Mosquitto, config: Path, node: str, *extra: str) -> None:
        self.node = node
        workdir = config.parent / f"node-{node}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.stdout = workdir / "stdout.txt"
        self.stderr = workdir / "stderr.txt"
        cmd = [
            str(BIN / "edge-node"),
            "run",
            "--bundle",
            str(data.bundle),
            "--node",
            node,
            "--config",
            str(config),
            "--broker",
            broker.address,
            *extra,
        ]
        with self.stdout.open("w") as out, self.stderr.open("w") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    def err(self) -> str:
        return self.stderr.read_text()

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"node {self.node} still running after {timeout} s") from None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(20)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    """Every node a test starts goes in here, so none outlives the test."""
    started: list[Node] = []
    yield started
    for node in started:
        node.kill()


def topic(kind: str, node: str = "") -> str:
    return {
        "feat": f"edvit/{SITE}/node/+/feat/+",
        "status": f"edvit/{SITE}/node/{node}/status",
        "stats": f"edvit/{SITE}/node/{node}/stats",
        "frame": f"edvit/{SITE}/frame/{node}",
    }[kind]


def decode(data: Data, payload: bytes, period: float = PERIOD) -> FeatureMessage:
    return decode_features(
        payload,
        site=SITE,
        expected={s: (data.hashes[s], data.dims[s]) for s in data.subs},
        now=time.time(),
        period_s=period,
        max_past=10**9,
        max_future=10**9,
        max_bytes=1 << 20,
    )


def features(
    data: Data, sub: Subscriber, node: str | None = None, period: float = PERIOD
) -> list[FeatureMessage]:
    msgs = [decode(data, bytes(m.payload), period) for m in sub.seen if "/feat/" in m.topic]
    return [m for m in msgs if node is None or m.node == node]


def wait_status(sub: Subscriber, node: Node, status: bytes, timeout: float = 30) -> None:
    try:
        sub.wait_for(
            lambda m: m.topic == topic("status", node.node) and m.payload == status, timeout
        )
    except TimeoutError:
        raise AssertionError(
            f"node {node.node} never {status.decode()}: {node.err()[-3000:]}"
        ) from None


def wait_features(
    data: Data, sub: Subscriber, node: str, count: int, timeout: float = 20
) -> list[FeatureMessage]:
    """Wait until `count` more feature messages of `node` have arrived; all of them so far."""
    have = len(features(data, sub, node))
    deadline = time.monotonic() + timeout
    while len(features(data, sub, node)) < have + count:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"node {node}: {len(features(data, sub, node)) - have} of {count} new feature "
                f"messages within {timeout} s"
            )
        sub.drain(0.1)
    return features(data, sub, node)


def last_stats(sub: Subscriber, node: str) -> dict[str, Any]:
    msgs = [m for m in sub.seen if m.topic == topic("stats", node)]
    assert msgs, f"no stats from {node}"
    stats: dict[str, Any] = json.loads(msgs[-1].payload)
    return stats


def fresh_status(broker: Mosquitto, node: str) -> bytes:
    """The retained status a newly connecting client gets."""
    fresh = Subscriber(broker, [topic("status", node)])
    try:
        msg = fresh.wait_for(lambda m: m.topic == topic("status", node), 5)
        assert msg.retain
        return bytes(msg.payload)
    finally:
        fresh.close()


def check_features(data: Data, msgs: list[FeatureMessage], jpeg_quality: int | None = None) -> None:
    for m in msgs:
        assert m.ts == m.tick * PERIOD  # replay: captured at the instant the tick stands for
        assert m.feat.shape == (data.dims[m.sub],)
        want = data.expected(m.sub, m.tick, jpeg_quality)
        # equal up to the fp16 rounding of the wire
        np.testing.assert_allclose(m.feat.astype(np.float32), want, rtol=2e-3, atol=1e-5)


# --- tests ------------------------------------------------------------------------------------


def test_publishes_features_status_and_stats(
    data: Data, mosquitto: Mosquitto, tmp_path: Path, nodes: list[Node]
) -> None:
    config = site_config(
        tmp_path / "site.yaml",
        {"cam": {"source": images(data), "submodels": ["g0", "g2"], "stats_interval_s": 0.5}},
    )
    sub = Subscriber(mosquitto, [topic("feat"), topic("status", "cam"), topic("stats", "cam")])
    ticks = 12
    node = Node(data, mosquitto, config, "cam", "--ticks", str(ticks))
    nodes.append(node)
    wait_status(sub, node, b"online")
    assert node.wait(30) == 0, node.err()[-3000:]
    wait_status(sub, node, b"stopped")
    sub.drain(0.3)
    assert "Traceback" not in node.err()
    stats = last_stats(sub, "cam")  # the final one, published at stop
    msgs = features(data, sub)
    assert {m.node for m in msgs} == {"cam"}
    assert {m.sub for m in msgs} == {"g0", "g2"}
    assert stats["ticks"] == ticks
    assert stats["published"] == len(msgs) == 2 * (ticks - stats["misses"])
    assert stats["misses"] == stats["errors"] == stats["unsent"] == 0
    seen_ticks = sorted({m.tick for m in msgs})
    assert seen_ticks[-1] - seen_ticks[0] + 1 == ticks + stats["skipped"]
    assert [m.seq for m in msgs] == list(range(len(msgs)))  # per-node message counter
    for tick in seen_ticks:
        assert sorted(m.sub for m in msgs if m.tick == tick) == ["g0", "g2"]
    check_features(data, msgs)
    # the stats message
    for key in ("ticks", "published", "skipped", "misses", "reconnects", "uptime_s", "ts"):
        assert isinstance(stats[key], int | float), key
    assert stats["submodels"] == ["g0", "g2"]
    assert stats["inference_ms"]["p50"] > 0
    assert stats["inference_ms"]["p99"] >= stats["inference_ms"]["p50"]
    assert set(stats["inference_ms"]["per_submodel"]) == {"g0", "g2"}
    assert stats["source"]["kind"] == "images"
    assert stats["source"]["reads"] == ticks
    assert stats["reconnects"] == 0
    assert abs(stats["ts"] - time.time()) < 10
    periodic = [m for m in sub.seen if m.topic == topic("stats", "cam")]
    assert len(periodic) >= 3  # every 0.5 s over ≥ 2.4 s, and once at stop
    assert all(not m.retain for m in periodic)
    assert fresh_status(mosquitto, "cam") == b"stopped"
    sub.close()


def test_sigterm_stops_cleanly_and_sigkill_leaves_offline(
    data: Data, mosquitto: Mosquitto, tmp_path: Path, nodes: list[Node]
) -> None:
    config = site_config(
        tmp_path / "site.yaml", {"cam": {"source": images(data), "submodels": ["g1"]}}
    )
    sub = Subscriber(mosquitto, [topic("feat"), topic("status", "cam")])
    node = Node(data, mosquitto, config, "cam")
    nodes.append(node)
    wait_status(sub, node, b"online")
    assert fresh_status(mosquitto, "cam") == b"online"
    wait_features(data, sub, "cam", 3)
    assert node.stop() == 0
    assert "Traceback" not in node.err()
    assert fresh_status(mosquitto, "cam") == b"stopped"

    node = Node(data, mosquitto, config, "cam")
    nodes.append(node)
    wait_status(sub, node, b"online")
    wait_features(data, sub, "cam", 2)
    node.kill()  # no goodbye: the broker publishes the node's will
    wait_status(sub, node, b"offline", timeout=15)
    assert fresh_status(mosquitto, "cam") == b"offline"
    check_features(data, features(data, sub))
    sub.close()


@pytest.mark.slow
def test_two_processes_with_one_node_id_both_exit_4(
    data: Data, mosquitto: Mosquitto, tmp_path: Path, nodes: list[Node]
) -> None:
    """A copied SD card: two `edge-node run --node cam` take each other's session over;
    both say so and exit 4 (which the units do not restart) instead of flapping for ever."""
    config = site_config(
        tmp_path / "site.yaml", {"cam": {"source": images(data), "submodels": ["g0"]}}
    )
    twins = [Node(data, mosquitto, config, "cam") for _ in range(2)]
    nodes.extend(twins)
    for twin in twins:
        assert twin.wait(60) == 4, twin.err()[-2000:]
        assert "another process uses the login 'cam'" in twin.err()
        assert "Traceback" not in twin.err()


def test_overrun_skips_and_counts_ticks(
    data: Data, mosquitto: Mosquitto, tmp_path: Path, nodes: list[Node]
) -> None:
    """A 0.2 ms period is shorter than a tick's work: missed ticks are skipped, never queued."""
    period = 0.0002
    config = site_config(
        tmp_path / "site.yaml",
        {"cam": {"source": images(data), "submodels": data.subs}},
        period=period,
    )
    sub = Subscriber(mosquitto, [topic("feat"), topic("stats", "cam")])
    ticks = 60
    node = Node(data, mosquitto, config, "cam", "--ticks", str(ticks))
    nodes.append(node)
    assert node.wait(30) == 0, node.err()[-3000:]
    sub.drain(0.5)
    stats = last_stats(sub, "cam")
    assert stats["ticks"] == ticks
    assert stats["skipped"] > 0
    msgs = features(data, sub, period=period)
    assert len(msgs) == stats["published"] == ticks * len(data.subs)
    seen = sorted({m.tick for m in msgs})
    assert len(seen) == ticks
    assert seen[-1] - seen[0] + 1 == ticks + stats["skipped"]  # every gap is a counted skip
    for m in msgs:
        assert m.ts == m.tick * period
        want = data.features(m.sub, read_image(data.files[m.tick % len(data.files)]))
        np.testing.assert_allclose(m.feat.astype(np.float32), want, rtol=2e-3, atol=1e-5)
    sub.close()


def relay_site(data: Data, path: Path, quality: int = 100) -> Path:
    return site_config(
        path,
        {
            "cam": {
                "source": images(data),
                "submodels": ["g0"],
                "publish_frames": True,
                "jpeg_quality": quality,
                "stats_interval_s": 0.5,
            },
            "relay": {
                "source": {"kind": "relay", "camera": "cam", "wait": 0.1},
                "submodels": ["g1"],
                "stats_interval_s": 0.5,
            },
            "direct": {"source": images(data), "submodels": ["g1"]},
        },
    )


def test_relay_node_computes_on_the_camera_frames(
    data: Data, mosquitto: Mosquitto, tmp_path: Path, nodes: list[Node]
) -> None:
    config = relay_site(data, tmp_path / "site.yaml")
    sub = Subscriber(
        mosquitto,
        [topic("feat"), topic("frame", "cam"), topic("stats", "relay")]
        + [topic("status", n) for n in ("cam", "relay", "direct")],
    )
    cam = Node(data, mosquitto, config, "cam")
    nodes.append(cam)
    wait_status(sub, cam, b"online")
    relay = Node(data, mosquitto, config, "relay")
    direct = Node(data, mosquitto, config, "direct")
    nodes.extend([relay, direct])
    wait_status(sub, relay, b"online")
    wait_status(sub, direct, b"online")
    wait_features(data, sub, "relay", 8)
    wait_features(data, sub, "direct", 4)
    garbage = b"not a frame \xc1"
    sub.publish(topic("frame", "cam"), garbage)  # counted, never fatal
    rejected = sub.wait_for(
        lambda m: (
            m.topic == topic("stats", "relay") and json.loads(m.payload)["source"]["rejected"] == 1
        ),
        timeout=10,
    )
    assert json.loads(rejected.payload)["connected"] is True
    wait_features(data, sub, "relay", 2)  # and the relay goes on
    for node in (relay, direct, cam):
        assert node.stop() == 0, node.err()[-3000:]
        assert "Traceback" not in node.err()
    sub.drain(0.3)

    frames = [
        decode_frame(bytes(m.payload), max_bytes=1 << 20)
        for m in sub.seen
        if "/frame/" in m.topic and m.payload != garbage
    ]
    assert frames
    for f in frames:  # the camera relays exactly what it replays, with the tick's time
        assert f.ts == f.tick * PERIOD
        image = read_image(data.files[f.tick % len(data.files)])
        assert np.abs(decode_jpeg(f.jpeg).astype(int) - image.astype(int)).max() <= 2
    by_node = {n: {m.tick: m for m in features(data, sub, n)} for n in ("relay", "direct")}
    assert by_node["relay"]
    assert set(by_node["relay"]) <= {f.tick for f in frames}  # only ticks the camera relayed
    check_features(data, list(by_node["relay"].values()), jpeg_quality=100)
    check_features(data, list(by_node["direct"].values()))
    common = sorted(set(by_node["relay"]) & set(by_node["direct"]))
    assert len(common) >= 3
    for tick in common:  # the same sample, only JPEG's ±1 grey level apart
        r = by_node["relay"][tick]
        d = by_node["direct"][tick]
        assert (r.sub, r.ts) == (d.sub, d.ts)
        np.testing.assert_allclose(
            r.feat.astype(np.float32), d.feat.astype(np.float32), rtol=0.05, atol=0.05
        )
    stats = last_stats(sub, "relay")
    assert stats["source"]["kind"] == "relay"
    assert stats["source"]["reads"] == len(by_node["relay"])
    assert stats["source"]["rejected"] == 1
    sub.close()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edge-node"), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_validate_config_and_bad_configs_exit_2(data: Data, tmp_path: Path) -> None:
    config = site_config(
        tmp_path / "site.yaml", {"cam": {"source": images(data), "submodels": ["g0", "g1"]}}
    )

    def run(node: str, cfg: Path = config, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_cli(
            "run", "--bundle", str(data.bundle), "--node", node, "--config", str(cfg), *extra
        )

    ok = run("cam", config, "--validate-config")
    assert ok.returncode == 0, ok.stderr
    assert "sub-models g0,g1" in ok.stdout
    assert "every sha256 verified" in ok.stdout

    def bad(nodes: dict[str, Any], node: str = "cam", name: str = "bad.yaml") -> str:
        cfg = site_config(tmp_path / name, nodes)
        for extra in ([], ["--validate-config"]):
            proc = run(node, cfg, *extra, "--connect-timeout", "1")
            assert proc.returncode == 2, (extra, proc.stderr)
            assert "Traceback" not in proc.stderr
        return proc.stderr

    err = bad({"cam": {"source": images(data)}}, node="nope")
    assert f"{tmp_path / 'bad.yaml'}: nodes: no node 'nope' (has ['cam'])" in err
    err = bad({"cam": {"source": images(data), "submodels": ["g0", "g7"]}})
    assert "bad.yaml: nodes.cam.submodels: ['g7'] are not in the bundle" in err
    err = bad({"cam": {"source": images(data)}})  # no submodels, and the plan has no devices
    assert "bad.yaml: nodes.cam.submodels: not set" in err
    err = bad({"cam": {"source": {"kind": "images", "folder": "missing"}, "submodels": ["g0"]}})
    assert "bad.yaml: nodes.cam.source.folder: " in err
    assert "missing: not a folder" in err
    err = bad(
        {"cam": {"source": {"kind": "wav", "folder": str(data.samples)}, "submodels": ["g0"]}}
    )
    assert "bad.yaml: nodes.cam.source: the bundle's model takes images" in err

    typo = tmp_path / "typo.yaml"
    typo.write_text(config.read_text().replace("submodels:", "submodelz:"))
    proc = run("cam", typo)
    assert proc.returncode == 2
    assert f"{typo}: nodes.cam.submodelz: unknown key (line" in proc.stderr

    copy = tmp_path / "bundle"
    shutil.copytree(data.bundle, copy, ignore=shutil.ignore_patterns(".cache"))
    onnx = copy / "submodels" / "g1.onnx"
    raw = bytearray(onnx.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    onnx.write_bytes(bytes(raw))
    proc = run_cli("run", "--bundle", str(copy), "--node", "cam", "--config", str(config))
    assert proc.returncode == 2
    assert "g1.onnx: sha256 mismatch" in proc.stderr


def test_no_broker_exits_1(data: Data, tmp_path: Path) -> None:
    config = site_config(
        tmp_path / "site.yaml", {"cam": {"source": images(data), "submodels": ["g0"]}}
    )
    proc = run_cli(
        "run",
        "--bundle",
        str(data.bundle),
        "--node",
        "cam",
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


def test_broker_restart_reconnects_and_resumes(
    data: Data, mosquitto: Mosquitto, tmp_path: Path, nodes: list[Node]
) -> None:
    """Both a publishing camera and a relay node (which must resubscribe) come back."""
    config = relay_site(data, tmp_path / "site.yaml")
    sub = Subscriber(mosquitto, [topic("feat"), topic("status", "cam"), topic("status", "relay")])
    cam = Node(data, mosquitto, config, "cam")
    relay = Node(data, mosquitto, config, "relay")
    nodes.extend([cam, relay])
    wait_status(sub, cam, b"online")
    wait_status(sub, relay, b"online")
    wait_features(data, sub, "relay", 3)
    sub.close()

    mosquitto.restart()
    restarted = time.time()
    sub = Subscriber(
        mosquitto,
        [topic("feat"), topic("status", "cam"), topic("status", "relay"), topic("stats", "relay")],
    )
    wait_status(sub, cam, b"online")  # re-published (retained) after the reconnect
    wait_status(sub, relay, b"online")
    after = wait_features(data, sub, "relay", 3)  # resubscribed to the frames by itself
    wait_features(data, sub, "cam", 3)
    assert all(m.ts > restarted - 1 for m in after)  # fresh ticks, not a stale backlog
    check_features(data, after, jpeg_quality=100)
    stats = json.loads(
        sub.wait_for(lambda m: m.topic == topic("stats", "relay"), timeout=5).payload
    )
    assert stats["reconnects"] >= 1
    assert stats["connected"] is True
    for node in (relay, cam):
        assert node.stop() == 0
        assert "Traceback" not in node.err()
    sub.close()
