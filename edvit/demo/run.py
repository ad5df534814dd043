"""`edvit demo`: the whole site on one machine, as systemd would run it.

Build (or reuse) a small digits bundle, write its test split as replay files, start a
private broker (mosquitto, else amqtt), the edge nodes and the aggregator as separate
processes (the commands systemd runs), print a line per fused result and, at the end, a
table: accuracy against the ground truth, share of complete ticks, capture-to-result
latency, per-node inference time. Ctrl-C stops everything; no process is left behind. The
demo only starts commands: it imports neither modelgen, the node nor the aggregator.
"""

from __future__ import annotations

import json
import math
import os
import queue
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from edvit import topics
from edvit.bundle import Bundle, load_bundle
from edvit.config.site import BrokerConfig, parse_broker
from edvit.demo.brokers import (
    Amqtt,
    BrokerError,
    BrokerProcess,
    Mosquitto,
    amqtt_binary,
    installed_command,
    mosquitto_binary,
)
from edvit.demo.tally import Tally
from edvit.mqtt import Message, MqttClient

MAX_NODES = 3
STOP_TIMEOUT_S = 10.0


class DemoError(Exception):
    """The demo cannot run as asked; the message says what to do."""


@dataclass(frozen=True)
class DemoOptions:
    """What `edvit demo` was asked for (its command-line options)."""

    bundle: Path
    recipe: Path
    ticks: int
    period_s: float
    broker: str | None  # HOST:PORT of a running broker, else a private one is started
    workdir: Path
    embedded_broker: bool = False  # amqtt even where mosquitto is installed


def command(name: str) -> str:
    """A console script of this install (next to the interpreter), else from PATH."""
    found = installed_command(name)
    if found is None:
        raise DemoError(f"`{name}` is not installed: pip install -e '.[all]' (make setup)")
    return found


def run_step(what: str, cmd: list[str], log: TextIO) -> None:
    print(f"demo: {what}: {' '.join(cmd)}", file=log, flush=True)
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log, check=False)
    if proc.returncode != 0:
        raise DemoError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}")


def ensure_bundle(opts: DemoOptions, log: TextIO) -> Bundle:
    """Reuse the bundle if it verifies, else build it from the recipe."""
    if not (opts.bundle / "manifest.json").is_file():
        cmd = [command("modelgen"), "build", str(opts.recipe), "--out", str(opts.bundle)]
        run_step("building the bundle (first run only)", cmd, log)
    bundle = load_bundle(opts.bundle)
    if not (opts.bundle / "replay" / "labels.json").is_file():
        cmd = [
            command("modelgen"),
            "samples",
            str(opts.bundle),
            "--out",
            str(opts.bundle / "replay"),
        ]
        run_step("writing the test split as replay files", cmd, log)
    return bundle


def node_layout(bundle: Bundle) -> dict[str, list[str]]:
    """Nodes and the sub-models each runs: the plan's devices when it has an assignment,
    else up to three nodes with two sub-models each in order (so hosting several shows)."""
    assignment = bundle.manifest.plan.assignment or {}
    ids = [s.id for s in bundle.manifest.submodels]
    if assignment:
        layout: dict[str, list[str]] = {}
        for sub in ids:
            layout.setdefault(assignment[sub], []).append(sub)
        return layout
    n = min(MAX_NODES, math.ceil(len(ids) / 2))
    per = math.ceil(len(ids) / n)
    return {f"node-{i + 1}": ids[i * per : (i + 1) * per] for i in range(n) if ids[i * per :]}


def site_config(bundle: Bundle, host: str, port: int, period_s: float) -> dict[str, Any]:
    audio = bundle.manifest.preprocess.kind == "audio"
    source = {
        "kind": "wav" if audio else "images",
        "folder": str((bundle.root / "replay").resolve()),
        "pattern": "*.wav" if audio else "*.png",
    }
    deadline = max(0.5 * period_s, 0.15)
    return {
        "site": "demo",
        "broker": {"host": host, "port": port},
        "tick": {
            "period_s": period_s,
            "deadline_s": deadline,
            "max_past_ticks": max(100, math.ceil(deadline / period_s) + 1),
        },
        "aggregator": {"stats_interval_s": 5},
        "nodes": {
            node: {"source": source, "submodels": subs, "stats_interval_s": 2}
            for node, subs in node_layout(bundle).items()
        },
    }


def start_broker(opts: DemoOptions, log: TextIO) -> BrokerProcess:
    """A private broker: mosquitto where installed (unless asked for amqtt), else amqtt."""
    try:
        if mosquitto_binary() is not None and not opts.embedded_broker:
            return Mosquitto(opts.workdir / "mosquitto").start()
        if amqtt_binary() is not None:
            print("demo: starting amqtt, the Python broker (not mosquitto)", file=log, flush=True)
            return Amqtt(opts.workdir / "amqtt").start()
    except BrokerError as exc:
        raise DemoError(str(exc)) from exc
    if opts.embedded_broker:
        raise DemoError("--embedded-broker needs amqtt: pip install -e '.[demo]'")
    raise DemoError(
        "no MQTT broker to start: install mosquitto (apt-get install mosquitto) or amqtt "
        "(pip install -e '.[demo]'), or name a running one with --broker HOST:PORT"
    )


def use_broker(opts: DemoOptions, log: TextIO) -> tuple[BrokerProcess | None, str, int]:
    """(the private broker started, or None for `--broker`; its host; its port)."""
    if opts.broker is not None:
        host, port = parse_broker(opts.broker)
        return None, host, port or 1883
    broker = start_broker(opts, log)
    return broker, broker.host, broker.port


class Children:
    """The demo's processes: started in order, stopped in reverse, never left behind."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, cmd: list[str], logdir: Path) -> None:
        out = (logdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        self.procs.append((name, proc))

    def start_site(self, opts: DemoOptions, config: Path, nodes: list[str]) -> None:
        """The aggregator, then each node, with the commands the units run."""
        common = ["--bundle", str(opts.bundle), "--config", str(config)]
        self.start("aggregator", [command("aggregator"), "run", *common], opts.workdir)
        for node in nodes:
            self.start(node, [command("edge-node"), "run", *common, "--node", node], opts.workdir)

    def check(self, logdir: Path) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                tail = (logdir / f"{name}.log").read_text(errors="replace")[-1500:]
                raise DemoError(f"{name} exited with {proc.returncode}:\n{tail}")

    def stop(self, names: list[str] | None = None) -> None:
        chosen = [(n, p) for n, p in reversed(self.procs) if names is None or n in names]
        for _, proc in chosen:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for _, proc in chosen:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _handle(msg: Message, site: str, tally: Tally, expected: int, out: TextIO) -> None:
    """A result (counted once every process is up), a status, or a node's stats."""
    if msg.topic == topics.result(site):
        result = json.loads(msg.payload)
        if tally.ready_at is not None and result["ts"] >= tally.ready_at:
            print(tally.add(result), file=out, flush=True)
        return
    parts = msg.topic.split("/")  # edvit/<site>/node/<id>/stats|status, .../aggregator/status
    if parts[-1] == "status":
        tally.status["/".join(parts[2:-1])] = msg.payload.decode(errors="replace")
        online = sum(v == topics.ONLINE for v in tally.status.values())
        if tally.ready_at is None and online == expected:
            tally.ready_at = time.time()
    elif parts[-1] == "stats" and parts[2] == "node":
        tally.node_stats[parts[3]] = json.loads(msg.payload)


def run_demo(
    opts: DemoOptions, out: TextIO = sys.stdout, log: TextIO = sys.stderr
) -> dict[str, Any]:
    """Run the site until `opts.ticks` results have arrived (or Ctrl-C); the final table."""
    bundle = ensure_bundle(opts, log)
    labels = json.loads((opts.bundle / "replay" / "labels.json").read_text())
    tally = Tally([i["label"] for i in labels["items"]], list(labels["classes"]))
    opts.workdir.mkdir(parents=True, exist_ok=True)
    children = Children()
    broker: BrokerProcess | None = None
    client: MqttClient | None = None
    try:
        broker, host, port = use_broker(opts, log)
        site = site_config(bundle, host, port, opts.period_s)
        config = opts.workdir / "site.yaml"
        config.write_text(yaml.safe_dump(site, sort_keys=False))
        print(f"demo: broker {host}:{port}, nodes {node_layout(bundle)}", file=log, flush=True)

        inbox: queue.Queue[Message] = queue.Queue(maxsize=10_000)
        client = MqttClient(
            BrokerConfig(host=host, port=port),
            client_id=topics.client_id("demo", "viewer"),
            status_topic=f"{topics.PREFIX}/demo/viewer/status",
            subscriptions=[
                (topics.result("demo"), 1),
                (f"{topics.PREFIX}/demo/node/+/status", 1),
                (f"{topics.PREFIX}/demo/node/+/stats", 1),
                (topics.aggregator_status("demo"), 1),
            ],
            inbox=inbox,
        )
        if not client.connect_and_wait(10):
            raise DemoError(f"the broker at {host}:{port} does not answer")
        children.start_site(opts, config, list(site["nodes"]))
        while len(tally.results) < opts.ticks:
            try:
                msg = inbox.get(timeout=1.0)
            except queue.Empty:
                children.check(opts.workdir)
                continue
            _handle(msg, "demo", tally, len(site["nodes"]) + 1, out)
    except KeyboardInterrupt:
        print("\ndemo: interrupted, stopping", file=log, flush=True)
    finally:
        children.stop([n for n, _ in children.procs if n != "aggregator"])  # final node stats
        time.sleep(0.3)
        if client is not None:
            while not inbox.empty():
                msg = inbox.get_nowait()
                if msg.topic != topics.result("demo"):
                    _handle(msg, "demo", tally, 0, out)
            client.stop()
        children.stop()
        if broker is not None:
            broker.stop()
    return tally.summary()


def default_workdir() -> Path:
    return Path(os.environ.get("XDG_RUNTIME_DIR", "/tmp")) / f"edvit-demo-{os.getpid()}"
