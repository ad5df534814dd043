"""`edvit demo` end to end: builds on first run, runs the site, prints the table, cleans up."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker import mosquitto_binary
from tiny import BACKGROUND, tiny_keywords_data

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
# Trained enough to be clearly above chance (10 classes): its fused test accuracy is 0.88 on
# 130 samples here, and no 16 consecutive test samples fall below 0.69 (measured).
TINY = {
    "name": "tiny-demo",
    "dataset": {"kind": "digits", "max_per_class": 50, "split": {"test_fraction": 0.25}},
    "preprocess": {"kind": "image", "height": 8, "width": 8, "channels": 1},
    "model": {"arch": "vit:img=8,patch=2,chans=1,embed=32,depth=1,heads=4"},
    "train": {"epochs": 120, "batch_size": 32, "lr": 0.005, "label_smoothing": 0.0,
              "augment": False},
    "plan": {"num_submodels": 3},
    "pruning": {"samples": 16},
    "distill": {"epochs": 40, "batch_size": 32, "lr": 0.005, "label_smoothing": 0.0,
                "augment": False},
    "fusion": {"epochs": 60},
    "threads": 1,
}  # fmt: skip
TICKS = 16
ACCURACY_FLOOR = 0.5
FIELDS = {"ticks", "accuracy", "complete_share", "latency_ms_p50", "latency_ms_p99", "per_node"}


@dataclass(frozen=True)
class Demo:
    """Where a module's demo runs live: the bundle and the runtime folder (the broker's)."""

    root: Path

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "edvit"), "demo", "--bundle", str(self.bundle), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=self.env(),
        )

    def env(self) -> dict[str, str]:
        """The demo's work folder (and so its broker's config) under `root`."""
        (self.root / "run").mkdir(exist_ok=True)
        return {**os.environ, "XDG_RUNTIME_DIR": str(self.root / "run")}

    def leftovers(self) -> list[str]:
        """Processes still running whose command line names `root` (broker, nodes, aggregator)."""
        out = subprocess.run(
            ["pgrep", "-af", str(self.root)], capture_output=True, text=True, check=False
        )
        return [line for line in out.stdout.splitlines() if "pgrep" not in line]


def check_summary(summary: dict[str, Any], log: str) -> None:
    """A full run with no node dropped: every tick complete, well above chance."""
    assert set(summary) == FIELDS
    assert summary["ticks"] == TICKS
    assert summary["complete_share"] == 1.0
    assert summary["accuracy"] >= ACCURACY_FLOOR, summary
    assert 0.0 < summary["latency_ms_p50"] <= summary["latency_ms_p99"]
    # 3 sub-models: two nodes, one of them hosting two
    assert sorted(summary["per_node"]) == ["node-1", "node-2"]
    assert all(n["ticks"] and n["inference_ms_p50"] > 0 for n in summary["per_node"].values())
    assert log.count("truth") == TICKS  # a live line per result (on stderr with --json)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Demo, dict[str, Any], str]:
    """The first run builds the bundle, on mosquitto (the broker a site runs)."""
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; scripts/setup.sh)")
    demo = Demo(tmp_path_factory.mktemp("demo"))
    recipe = demo.root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    proc = demo.run("--recipe", str(recipe), "--ticks", str(TICKS), "--period", "0.25", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return demo, json.loads(proc.stdout), proc.stderr


def test_first_run_builds_then_reports_on_mosquitto(
    first_run: tuple[Demo, dict[str, Any], str],
) -> None:
    demo, summary, log = first_run
    assert "building the bundle" in log
    assert "starting amqtt" not in log
    assert (demo.bundle / "manifest.json").is_file()
    check_summary(summary, log)
    assert demo.leftovers() == []


def test_an_int8_bundle_runs_through_the_demo(
    first_run: tuple[Demo, dict[str, Any], str], tmp_path: Path
) -> None:
    """The same recipe with `export.precision: int8` (its trained models taken from the first
    run's cache): the nodes run the quantized sub-models and the site still answers."""
    demo, _, _ = first_run
    recipe = tmp_path / "int8.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "export": {"precision": "int8"}}))
    int8 = Demo(tmp_path)
    built = subprocess.run(
        [str(BIN / "modelgen"), "build", str(recipe), "--out", str(int8.bundle),
         "--cache", str(demo.bundle / ".cache")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    assert "distilling" not in built.stderr
    manifest = json.loads((int8.bundle / "manifest.json").read_text())
    assert {s["precision"] for s in manifest["submodels"]} == {"int8"}
    proc = int8.run("--ticks", str(TICKS), "--period", "0.25", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "building" not in proc.stderr
    check_summary(json.loads(proc.stdout), proc.stderr)
    assert int8.leftovers() == []


def test_later_runs_reuse_the_bundle_on_amqtt(first_run: tuple[Demo, dict[str, Any], str]) -> None:
    if importlib.util.find_spec("amqtt") is None:
        pytest.skip("amqtt is not installed (pip install -e '.[demo]')")
    demo, _, _ = first_run
    before = (demo.bundle / "manifest.json").stat().st_mtime
    proc = demo.run("--ticks", str(TICKS), "--period", "0.25", "--embedded-broker", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "building" not in proc.stderr
    assert "starting amqtt" in proc.stderr
    check_summary(json.loads(proc.stdout), proc.stderr)
    assert (demo.bundle / "manifest.json").stat().st_mtime == before
    assert demo.leftovers() == []


def _ctrl_c_as_a_terminal_sends_it() -> None:
    """A suite started in the background (`cmd &` in a script) passes SIGINT on ignored, and
    Python then never raises KeyboardInterrupt: give the demo the disposition Ctrl-C meets."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_interrupt_stops_everything(first_run: tuple[Demo, dict[str, Any], str]) -> None:
    demo, _, _ = first_run
    proc = subprocess.Popen(
        [str(BIN / "edvit"), "demo", "--bundle", str(demo.bundle), "--ticks", "100000",
         "--period", "0.25"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=demo.env(),
        preexec_fn=_ctrl_c_as_a_terminal_sends_it,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while "truth" not in proc.stdout.readline():
            assert time.monotonic() < deadline, "no result within 60 s"
        assert len(demo.leftovers()) >= 5  # the demo, its broker, the aggregator, two nodes
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "accuracy" in out  # the final table still comes
    assert demo.leftovers() == []


def test_keyword_demo_plays_a_recording_and_prints_its_events(tmp_path: Path) -> None:
    """`edvit demo --keywords` on a tiny keyword bundle with background classes: one pass
    over a recording of its test clips, each event printed with what was said there, and
    the hits and false accepts of the pass."""
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; scripts/setup.sh)")
    demo = Demo(tmp_path)
    made = subprocess.run(
        [str(BIN / "modelgen"), "dataset", "keywords", "--out", str(tmp_path / "words"),
         "--per-word", "10", "--heldout-per-word", "1", "--workers", "1"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    split = {"val_fraction": 0.2, "test_fraction": 0.4, "seed": 0}
    recipe = {
        **TINY,
        "name": "tiny-keyword-demo",
        **tiny_keywords_data("words", ["yes", "no", *BACKGROUND], BACKGROUND, split),
        "model": {"arch": "vit:img=16x32,patch=4,chans=1,embed=32,depth=1,heads=4"},
        "train": {**TINY["train"], "epochs": 30},
        "distill": {**TINY["distill"], "epochs": 10},
        "plan": {"num_submodels": 2},
    }
    (tmp_path / "kw.yaml").write_text(yaml.safe_dump(recipe))
    proc = demo.run("--keywords", "--recipe", str(tmp_path / "kw.yaml"), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "building the bundle" in proc.stderr
    assert "making the keyword dataset" not in proc.stderr  # it was there already
    *lines, last = proc.stdout.strip().splitlines()
    summary = json.loads(last)
    assert set(summary) == {"recording_s", "keywords", "hits", "hit_rate", "false_accepts"}
    assert summary["keywords"] == 8  # 4 test clips of each word, at most 8 in the recording
    assert summary["recording_s"] == 4 * summary["keywords"]  # 3 background clips a word
    events = [line for line in lines if line.startswith("event")]
    assert len(events) == summary["hits"] + summary["false_accepts"]
    assert all("said there:" in line for line in events)
    assert not any(line.split()[1] in ("_silence_", "_unknown_") for line in events)
    assert demo.leftovers() == []
