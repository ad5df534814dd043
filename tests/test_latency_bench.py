"""bench/latency.py on a tiny ViT: the JSON it writes, its ratios and the int8 export; a
real edge-node's own cost (bench/node_cost.py) on a real mosquitto."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from broker import Mosquitto

BENCH = Path(__file__).resolve().parent.parent / "bench" / "latency.py"


def _bench() -> ModuleType:
    if str(BENCH.parent) not in sys.path:  # as `python bench/latency.py` has it: its imports
        sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("bench_latency", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_ratios_and_smaller_int8(tmp_path: Path) -> None:
    out = tmp_path / "latency.json"
    _bench().main(["--tiny", "--ns", "2,10", "--rounds", "3", "--out", str(out)])
    (result,) = json.loads(out.read_text())
    rows = result["rows"]
    assert [r["n"] for r in rows] == [1, 2, 10]
    assert [r["heads"] for r in rows] == [4, 2, 1]  # ⌈4 / N⌉ heads, Alg. 1 without a budget
    base = rows[0]
    assert base["mac_limit"] == 1.0
    assert base["fp32"]["ratio"] == 1.0
    for row in rows:
        assert row["mac_limit"] >= 1.0
        assert row["gmacs_total"] > row["gmacs"] > 0
        for p in ("fp32", "int8"):
            figures = row[p]
            assert figures["latency_ms"] > 0
            assert figures["ratio"] > 0
            assert figures["efficiency"] == figures["ratio"] / row["mac_limit"]
            assert figures["mib"] > 0
    assert rows[-1]["mac_limit"] > rows[1]["mac_limit"] > 1.0
    assert base["int8"]["mib"] < base["fp32"]["mib"]
    assert base["int8"]["size_ratio"] > 1.0
    assert not out.with_suffix(".png").exists()  # --tiny draws no plot


def _node_cost(tmp_path: Path, broker: Mosquitto, *args: str) -> dict[str, Any]:
    out = tmp_path / "node_cost.json"
    argv = ["--node-cost", "--broker", broker.address, "--steady", "1", "--out", str(out)]
    _bench().main([*argv, *args])
    report: dict[str, Any] = json.loads(out.read_text())
    assert report["cpus"] >= 1
    assert len(report["load_average"]["start"]) == 3
    return report


def _check_start(start: dict[str, Any]) -> None:
    # online once connected, after the warm-up; the first feature comes at the next tick
    assert 0 < start["online_s"] <= start["ready_s"] < 60
    assert start["ready_s"] - start["online_s"] < 5
    # Python, numpy, ONNX Runtime and paho are tens of MiB, whatever the model
    assert 20 < start["rss_steady_mib"] <= start["rss_peak_mib"] < 2000
    assert start["features_in_steady"] >= 3  # still publishing at 10 ticks/s
    assert start["exit_code"] == 0  # SIGTERM: a clean stop


def test_node_cost_of_tiny_image_and_audio_nodes(tmp_path: Path, mosquitto: Mosquitto) -> None:
    rows = _node_cost(tmp_path, mosquitto, "--tiny")["nodes"]
    assert list(rows) == ["tiny", "tiny-audio"]
    assert rows["tiny"]["source"] == "images"
    assert rows["tiny-audio"]["source"] == "recording"
    for row in rows.values():
        assert row["heads"] == 2  # ⌈4 / 2⌉
        start = row["start"]
        _check_start(start)
        assert row["goals"] == {
            "rss_le_250_mb": start["rss_peak_mib"] * 2**20 <= 250e6,
            "ready_le_10_s": start["ready_s"] <= 10,
        }
    # The audio front-end is numpy alone: no librosa, scipy or numba (~240 MiB) beside it
    audio, image = (rows[k]["start"]["rss_peak_mib"] for k in ("tiny-audio", "tiny"))
    assert audio - image < 60
