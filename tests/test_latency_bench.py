"""bench/latency.py on a tiny ViT: the JSON it writes, its ratios and the int8 export; a
real edge-node's own cost (bench/node_cost.py) on a real mosquitto."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

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


def test_node_cost_of_tiny_image_and_audio_nodes(tmp_path: Path, mosquitto: Mosquitto) -> None:
    out = tmp_path / "node_cost.json"
    argv = ["--node-cost", "--tiny", "--broker", mosquitto.address, "--steady", "1"]
    _bench().main([*argv, "--out", str(out)])
    report = json.loads(out.read_text())
    assert list(report["nodes"]) == ["tiny", "tiny-audio"]
    assert report["cpus"] >= 1
    assert len(report["load_average"]["start"]) == 3
    rows = report["nodes"]
    assert rows["tiny"]["source"] == "images"
    assert rows["tiny-audio"]["source"] == "recording"
    for row in rows.values():
        assert row["heads"] == 2  # ⌈4 / 2⌉
        # online once connected, after the warm-up; the first feature comes at the next tick
        assert 0 < row["online_s"] <= row["ready_s"] < 60
        assert row["ready_s"] - row["online_s"] < 5
        # Python, numpy, ONNX Runtime and paho are tens of MiB, whatever the model
        assert 20 < row["rss_steady_mib"] <= row["rss_peak_mib"] < 2000
        assert row["features_in_steady"] >= 3  # still publishing at 10 ticks/s
        assert row["exit_code"] == 0  # SIGTERM: a clean stop
        assert row["goals"] == {
            "rss_le_250_mb": row["rss_peak_mib"] * 2**20 <= 250e6,
            "ready_le_10_s": row["ready_s"] <= 10,
        }
    # librosa (numba, scipy) is loaded by the audio front-end only
    assert rows["tiny-audio"]["rss_peak_mib"] > rows["tiny"]["rss_peak_mib"]
