"""bench/latency.py on a tiny ViT: the JSON it writes, its ratios and the int8 export."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parent.parent / "bench" / "latency.py"


def _bench() -> ModuleType:
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
