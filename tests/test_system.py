"""The whole online system with real processes: a private mosquitto, three or more
`edge-node` processes (one hosting two sub-models), `aggregator run`, and a `mosquitto_sub`
reading the results, as a user would watch them.

Every tick must come out fused and complete, with the prediction `modelgen eval
--predictions` gives for the sample the tick showed (tick k → item k mod M) — for image
files, for relayed camera frames and for WAV files. A node killed with SIGKILL must turn into
partial results (its sub-model `missing`, at the deadline, equal to `eval --drop`) that keep
flowing and become complete again when it is back; a broker restart must be survived by every
process on its own.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker import Mosquitto, mosquitto_binary
from procs import stop_all
from tiny import tiny_keywords_data

BIN = Path(sys.executable).parent
SITE = "sys"
PERIOD = 0.25
DEADLINE = 0.5  # two periods: a node descheduled for a moment on 2 shared cores still counts
CHECKED_TICKS = 12  # consecutive ticks every scenario checks

DIGITS = {  # ~10 s to build; ~60 % fused accuracy, predictions spread over the classes
    "name": "tiny-digits-system",
    "seed": 0,
    "dataset": {
        "kind": "digits",
        "max_per_class": 40,
        "split": {"val_fraction": 0.2, "test_fraction": 0.25, "seed": 0},
    },
    "preprocess": {"kind": "image", "height": 8, "width": 8, "channels": 1},
    "model": {"arch": "vit:img=8,patch=2,chans=1,embed=64,depth=1,heads=8"},
    "train": {
        "epochs": 30,
        "batch_size": 32,
        "lr": 0.003,
        "label_smoothing": 0.0,
        "augment": False,
    },
    "plan": {"num_submodels": 4},
    "grouping": "confusion",
    "pruning": {"method": "kl", "samples": 32},
    "distill": {
        "epochs": 20,
        "batch_size": 32,
        "lr": 0.003,
        "label_smoothing": 0.0,
        "augment": False,
    },
    "fusion": {"epochs": 60},
    "threads": 1,
}

KEYWORDS = dict(
    DIGITS,
    name="tiny-keywords-system",
    **tiny_keywords_data(),
    model={"arch": "vit:img=16x32,patch=4,chans=1,embed=64,depth=1,heads=8"},
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        mosquitto_binary() is None or shutil.which("mosquitto_sub") is None,
        reason="mosquitto and mosquitto-clients are not installed (scripts/setup.sh)",
    ),
]


def run_tool(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=600, cwd=cwd
    )
    if proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc.stdout


@dataclass
class Bundle:
    """A built bundle, its replay files and what `modelgen eval` predicts for each item."""

    path: Path
    samples: Path
    pattern: str
    classes: list[str]
    predicted: list[str]  # item i → the fused label eval gives
    predicted_without: dict[str, list[str]]  # dropped sub-model → item → label

    def label(self, tick: int, missing: tuple[str, ...] = ()) -> str:
        labels = self.predicted_without[missing[0]] if missing else self.predicted
        return labels[tick % len(labels)]


def build(root: Path, recipe: dict[str, Any], drop: tuple[str, ...] = ()) -> Bundle:
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    out = root / "bundle"
    run_tool("modelgen", "build", "recipe.yaml", "--out", str(out), cwd=root)
    samples = root / "samples"
    run_tool("modelgen", "samples", str(out), "--out", str(samples))
    items = json.loads((samples / "labels.json").read_text())["items"]
    classes = json.loads((out / "manifest.json").read_text())["classes"]

    def predictions(*extra: str) -> list[str]:
        result = json.loads(
            run_tool("modelgen", "eval", str(out), "--predictions", "--json", *extra)
        )
        preds = result["predictions"]
        assert [p["source"] for p in preds] == [i["source"] for i in items]
        return [classes[p["fused"]] for p in preds]

    ext = "wav" if items[0]["file"].endswith(".wav") else "png"
    return Bundle(
        path=out,
        samples=samples,
        pattern=f"*.{ext}",
        classes=classes,
        predicted=predictions(),
        predicted_without={sub: predictions("--drop", sub) for sub in drop},
    )


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    bundle = build(tmp_path_factory.mktemp("digits"), DIGITS, drop=("g2",))
    assert len(set(bundle.predicted)) >= 3, "a bundle predicting one class would prove little"
    return bundle


@pytest.fixture(scope="module")
def keywords(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    root = tmp_path_factory.mktemp("keywords")
    run_tool("modelgen", "dataset", "keywords", "--out", str(root / "words"), "--per-word", "8")
    return build(root, KEYWORDS)


# --- a site of real processes -----------------------------------------------------------------


@dataclass
class Line:
    topic: str
    payload: str

    @property
    def result(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.payload)
        return data


class Site:
    """Config, node and aggregator processes and a mosquitto_sub, all in one work folder.

    Every process started here is in `procs`; `close()` stops them (SIGTERM, then SIGKILL)
    and the fixture calls it whatever happened.
    """

    def __init__(
        self, workdir: Path, broker: Mosquitto, bundle: Bundle, nodes: dict[str, Any]
    ) -> None:
        self.workdir = workdir
        self.broker = broker
        self.bundle = bundle
        self.config = workdir / "site.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "site": SITE,
                    "broker": {"host": "127.0.0.1", "port": 1, "keepalive": 5},
                    "tick": {"period_s": PERIOD, "deadline_s": DEADLINE, "max_past_ticks": 40},
                    "aggregator": {"stats_interval_s": 1.0, "buffer_ticks": 16},
                    "nodes": nodes,
                }
            )
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: set[str] = set()  # processes a test killed on purpose
        self._runs: dict[str, int] = {}
        self.results = workdir / "mosquitto_sub.txt"
        self._spawn(
            "mosquitto_sub",
            [
                str(shutil.which("mosquitto_sub")),
                *("-h", broker.host, "-p", str(broker.port), "-v", "-q", "1"),
                *("-t", f"edvit/{SITE}/result"),
                *("-t", f"edvit/{SITE}/node/+/status"),
                *("-t", f"edvit/{SITE}/aggregator/status"),
            ],
            stdout=self.results,
        )

    def _spawn(self, name: str, cmd: list[str], stdout: Path | None = None) -> None:
        run = self._runs.get(name, 0) + 1
        self._runs[name] = run
        out = stdout or self.workdir / f"{name}.{run}.out"
        err = self.workdir / f"{name}.{run}.err"
        with out.open("w") as o, err.open("w") as e:
            self.procs[name] = subprocess.Popen(cmd, stdout=o, stderr=e, stdin=subprocess.DEVNULL)

    def start_node(self, node: str) -> None:
        self._spawn(
            node,
            [
                str(BIN / "edge-node"),
                *("run", "--bundle", str(self.bundle.path), "--node", node),
                *("--config", str(self.config), "--broker", self.broker.address),
            ],
        )

    def start_aggregator(self) -> None:
        self._spawn(
            "aggregator",
            [
                str(BIN / "aggregator"),
                *("run", "--bundle", str(self.bundle.path), "--config", str(self.config)),
                *("--broker", self.broker.address),
            ],
        )

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.kill()
        proc.wait(5)

    def stderr(self, name: str) -> str:
        path = self.workdir / f"{name}.{self._runs[name]}.err"
        return path.read_text(errors="replace")

    def lines(self) -> list[Line]:
        """What mosquitto_sub printed so far (complete lines only)."""
        text = self.results.read_text(errors="replace")
        out = []
        for raw in text.splitlines(keepends=True):
            if raw.endswith("\n") and " " in raw:
                topic, payload = raw.rstrip("\n").split(" ", 1)
                out.append(Line(topic, payload))
        return out

    def result_lines(self) -> list[dict[str, Any]]:
        return [line.result for line in self.lines() if line.topic == f"edvit/{SITE}/result"]

    def wait_for(self, done: Callable[[list[Line]], bool], what: str, timeout: float) -> list[Line]:
        """Poll mosquitto_sub's output until `done(lines)`; fail naming `what` on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines()
            if done(lines):
                return lines
            for name, proc in self.procs.items():
                if proc.poll() is not None and name not in self.killed:
                    raise AssertionError(
                        f"{name} exited {proc.returncode} while waiting for {what}:\n"
                        + self.stderr(name)[-3000:]
                    )
            if time.monotonic() > deadline:
                tail = [f"{ln.topic} {ln.payload[:120]}" for ln in lines[-8:]]
                raise AssertionError(
                    f"no {what} within {timeout} s; last lines:\n" + "\n".join(tail)
                )
            time.sleep(0.1)

    def wait_status(self, name: str, status: str, timeout: float = 60, since: int = 0) -> None:
        """Wait until the newest status `name` published (in output lines from `since` on)
        is `status`."""
        topic = (
            f"edvit/{SITE}/aggregator/status"
            if name == "aggregator"
            else f"edvit/{SITE}/node/{name}/status"
        )

        def seen(lines: list[Line]) -> bool:
            mine = [ln.payload for ln in lines[since:] if ln.topic == topic]
            return bool(mine) and mine[-1] == status

        self.wait_for(seen, f"status {status!r} of {name}", timeout)

    def wait_ticks(self, first: int, count: int, timeout: float = 30) -> dict[int, dict[str, Any]]:
        """Results of ticks first … first+count-1, each exactly once; fails when one has
        not come out within `timeout`."""
        want = set(range(first, first + count))

        def have(lines: list[Line]) -> bool:
            got = {r["tick"] for r in self.result_lines()}
            return want <= got

        self.wait_for(have, f"results for ticks {first}…{first + count - 1}", timeout)
        out: dict[int, dict[str, Any]] = {}
        for r in self.result_lines():
            if r["tick"] in want:
                assert r["tick"] not in out, f"tick {r['tick']} came out twice"
                out[r["tick"]] = r
        return out

    def close(self) -> None:
        """SIGTERM every process, SIGKILL what is left after 15 s (idempotent)."""
        stop_all(self.procs.values())


@pytest.fixture
def sites() -> Iterator[list[Site]]:
    """Every Site a test makes is closed after it, so no process outlives the test."""
    made: list[Site] = []
    yield made
    for site in made:
        site.close()


def next_tick(after: float) -> int:
    """The first tick due after wall time `after`, plus one period of margin."""
    return int(after / PERIOD) + 2


def start_site(
    sites: list[Site], tmp_path: Path, broker: Mosquitto, bundle: Bundle, nodes: dict[str, Any]
) -> Site:
    site = Site(tmp_path, broker, bundle, nodes)
    sites.append(site)
    site.start_aggregator()
    for node in nodes:
        site.start_node(node)
    site.wait_status("aggregator", "online")
    for node in nodes:
        site.wait_status(node, "online")
    return site


def check_complete(bundle: Bundle, results: dict[int, dict[str, Any]]) -> None:
    for tick, r in sorted(results.items()):
        assert r["complete"] is True, f"tick {tick}: {r}"
        assert r["missing"] == []
        assert r["label"] == bundle.label(tick), f"tick {tick}: {r['label']} != eval"
        assert 0 <= r["latency_ms"] < 5000
        assert r["ts"] == pytest.approx(tick * PERIOD, abs=1e-6)  # replayed at its due time


def clean_exits(site: Site, names: list[str]) -> None:
    site.close()
    for name in names:
        assert site.procs[name].returncode == 0, f"{name}: {site.stderr(name)[-3000:]}"
        assert "Traceback" not in site.stderr(name), site.stderr(name)


def images(bundle: Bundle) -> dict[str, Any]:
    return {"kind": "images", "folder": str(bundle.samples), "pattern": bundle.pattern}


def file_nodes(bundle: Bundle, kind: str = "images") -> dict[str, Any]:
    source = {"kind": kind, "folder": str(bundle.samples), "pattern": bundle.pattern}
    return {
        "n-a": {"source": source, "submodels": ["g0", "g1"]},
        "n-b": {"source": source, "submodels": ["g2"]},
        "n-c": {"source": source, "submodels": ["g3"]},
    }


# --- scenarios --------------------------------------------------------------------------------


def test_end_to_end_images(
    digits: Bundle, mosquitto: Mosquitto, tmp_path: Path, sites: list[Site]
) -> None:
    nodes = file_nodes(digits)
    site = start_site(sites, tmp_path, mosquitto, digits, nodes)
    first = next_tick(time.time())
    results = site.wait_ticks(first, CHECKED_TICKS)
    check_complete(digits, results)
    clean_exits(site, ["aggregator", *nodes])


def test_end_to_end_relay(
    digits: Bundle, mosquitto: Mosquitto, tmp_path: Path, sites: list[Site]
) -> None:
    """One camera node relays its frames (JPEG, quality 100); two compute-only nodes."""
    relay = {"kind": "relay", "camera": "cam", "wait": 0.2}
    nodes = {
        "cam": {
            "source": images(digits),
            "submodels": ["g0"],
            "publish_frames": True,
            "jpeg_quality": 100,
        },
        "pi-1": {"source": relay, "submodels": ["g1", "g2"]},
        "pi-2": {"source": relay, "submodels": ["g3"]},
    }
    site = start_site(sites, tmp_path, mosquitto, digits, nodes)
    first = next_tick(time.time())
    check_complete(digits, site.wait_ticks(first, CHECKED_TICKS))
    clean_exits(site, ["aggregator", *nodes])


def test_end_to_end_audio(
    keywords: Bundle, mosquitto: Mosquitto, tmp_path: Path, sites: list[Site]
) -> None:
    nodes = file_nodes(keywords, kind="wav")
    site = start_site(sites, tmp_path, mosquitto, keywords, nodes)
    first = next_tick(time.time())
    check_complete(keywords, site.wait_ticks(first, CHECKED_TICKS))
    clean_exits(site, ["aggregator", *nodes])


def test_killed_node_gives_partial_results_until_restarted(
    digits: Bundle, mosquitto: Mosquitto, tmp_path: Path, sites: list[Site]
) -> None:
    nodes = file_nodes(digits)
    site = start_site(sites, tmp_path, mosquitto, digits, nodes)
    first = next_tick(time.time())
    check_complete(digits, site.wait_ticks(first, 4))

    killed_at = time.time()
    site.killed.add("n-b")
    site.kill("n-b")  # SIGKILL: no `stopped`, the broker publishes the will
    site.wait_status("n-b", "offline", timeout=10)
    gone = next_tick(killed_at)  # ticks due after the kill: n-b cannot have sent them
    partial = site.wait_ticks(gone, 6, timeout=20)
    for tick, r in sorted(partial.items()):
        assert r["complete"] is False, f"tick {tick}: {r}"
        assert r["missing"] == ["g2"]
        assert r["label"] == digits.label(tick, missing=("g2",)), f"tick {tick} != eval --drop g2"
        assert r["latency_ms"] >= DEADLINE * 1000 - 50  # emitted at the deadline, not before

    site.killed.discard("n-b")
    site.start_node("n-b")
    site.wait_status("n-b", "online")
    back = next_tick(time.time())
    check_complete(digits, site.wait_ticks(back, 6))
    # results kept flowing: every tick from before the kill to after the restart came out
    ticks = sorted(r["tick"] for r in site.result_lines() if first <= r["tick"] < back + 6)
    assert ticks == list(range(first, back + 6))
    clean_exits(site, ["aggregator", *nodes])


def test_broker_restart_mid_stream(
    digits: Bundle, mosquitto: Mosquitto, tmp_path: Path, sites: list[Site]
) -> None:
    nodes = file_nodes(digits)
    site = start_site(sites, tmp_path, mosquitto, digits, nodes)
    check_complete(digits, site.wait_ticks(next_tick(time.time()), 4))

    before = len(site.lines())
    mosquitto.restart()  # every client loses its connection; retained statuses are gone
    restarted = time.time()
    for name in ("aggregator", *nodes):  # each re-announces itself after its reconnect
        site.wait_status(name, "online", timeout=30, since=before)

    def resumed(lines: list[Line]) -> bool:
        after = [r for r in site.result_lines() if r["tick"] * PERIOD > restarted]
        return sum(1 for r in after if r["complete"]) >= 6

    site.wait_for(resumed, "complete results after the broker restart", timeout=40)
    # from the first complete tick after the restart on, every tick is complete and right
    after = [r for r in site.result_lines() if r["tick"] * PERIOD > restarted]
    start = min(r["tick"] for r in after if r["complete"])
    check_complete(digits, site.wait_ticks(start, 6))
    clean_exits(site, ["aggregator", *nodes])
