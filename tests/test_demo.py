"""`edvit demo` end to end: builds on first run, runs the site, prints the table, cleans up."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
TINY = {
    "name": "tiny-demo",
    "dataset": {"kind": "digits", "max_per_class": 30, "split": {"test_fraction": 0.25}},
    "preprocess": {"kind": "image", "height": 8, "width": 8, "channels": 1},
    "model": {"arch": "vit:img=8,patch=2,chans=1,embed=32,depth=1,heads=4"},
    "train": {"epochs": 3, "batch_size": 32, "lr": 0.003},
    "plan": {"num_submodels": 3},
    "pruning": {"samples": 16},
    "distill": {"epochs": 2, "batch_size": 32, "lr": 0.003},
    "fusion": {"epochs": 3},
    "threads": 1,
}
FIELDS = {"ticks", "accuracy", "complete_share", "latency_ms_p50", "latency_ms_p99", "per_node"}


def demo(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edvit"), "demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def leftovers(marker: str) -> list[str]:
    """Processes still running whose command line names `marker` (the demo's bundle)."""
    proc = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True, check=False)
    return [line for line in proc.stdout.splitlines() if "pgrep" not in line]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    root = tmp_path_factory.mktemp("demo")
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    bundle = root / "bundle"
    proc = demo("--bundle", str(bundle), "--recipe", str(recipe), "--ticks", "6",
                "--period", "0.25", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return bundle, json.loads(proc.stdout), proc.stderr


def test_first_run_builds_then_reports(first_run: tuple[Path, dict[str, Any], str]) -> None:
    bundle, summary, log = first_run
    assert "building the bundle" in log
    assert (bundle / "manifest.json").is_file()
    assert set(summary) == FIELDS
    assert summary["ticks"] == 6
    assert summary["complete_share"] == 1.0
    assert 0.0 <= summary["accuracy"] <= 1.0
    assert 0.0 < summary["latency_ms_p50"] <= summary["latency_ms_p99"]
    # 3 sub-models: two nodes, one of them hosting two
    assert sorted(summary["per_node"]) == ["node-1", "node-2"]
    assert all(n["ticks"] and n["inference_ms_p50"] > 0 for n in summary["per_node"].values())
    assert log.count("truth") == 6  # a live line per result (on stderr with --json)
    assert leftovers(str(bundle)) == []


def test_later_runs_reuse_the_bundle_and_can_use_the_embedded_broker(
    first_run: tuple[Path, dict[str, Any], str],
) -> None:
    bundle, _, _ = first_run
    before = (bundle / "manifest.json").stat().st_mtime
    proc = demo("--bundle", str(bundle), "--ticks", "4", "--period", "0.25",
                "--embedded-broker", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "building" not in proc.stderr
    assert "embedded broker" in proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["ticks"] == 4
    assert summary["complete_share"] == 1.0
    assert (bundle / "manifest.json").stat().st_mtime == before
    assert leftovers(str(bundle)) == []


def test_interrupt_stops_everything(first_run: tuple[Path, dict[str, Any], str]) -> None:
    bundle, _, _ = first_run
    proc = subprocess.Popen(
        [str(BIN / "edvit"), "demo", "--bundle", str(bundle), "--ticks", "100000",
         "--period", "0.25"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while "truth" not in proc.stdout.readline():
            assert time.monotonic() < deadline, "no result within 60 s"
        assert len(leftovers(str(bundle))) >= 3  # aggregator and two nodes are running
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "accuracy" in out  # the final table still comes
    assert leftovers(str(bundle)) == []
