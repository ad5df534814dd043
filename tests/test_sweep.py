"""`modelgen sweep` on a tiny recipe and `modelgen report` of the sweep: one base for every N,
each row equal to that bundle's own `modelgen eval`, plots drawn from those rows."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelgen.report import confusion_figure, sweep_figure

from tiny import BIN, tiny_digits


def modelgen(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(BIN / "modelgen"), *map(str, args)], capture_output=True, text=True, cwd=cwd
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    root = tmp_path_factory.mktemp("sweep")
    (root / "recipe.yaml").write_text(yaml.safe_dump(tiny_digits("tiny-sweep")))
    proc = modelgen("sweep", "recipe.yaml", "--ns", "1", "2", "--out", "out", cwd=root)
    out = root / "out"
    return out, json.loads((out / "sweep.json").read_text()), proc.stderr


def test_every_n_built_on_one_base(swept: tuple[Path, dict[str, Any], str]) -> None:
    out, sweep, log = swept
    assert [r["n"] for r in sweep["rows"]] == [1, 2]
    assert log.count("base: training") == 1  # the second build took it from the cache
    for row in sweep["rows"]:
        manifest = json.loads((out / row["bundle"] / "manifest.json").read_text())
        assert len(manifest["submodels"]) == row["n"]
        ev = json.loads(modelgen("eval", out / row["bundle"], "--json", cwd=out).stdout)
        for key in ("fused_acc", "base_acc", "avg_softmax_acc", "samples"):
            assert row[key] == ev[key]
        assert row["device_size_mib"] == max(s["onnx_mib"] for s in ev["per_submodel"])
        assert sum(map(sum, row["confusion"])) == ev["samples"]
        correct = sum(row["confusion"][c][c] for c in range(len(row["classes"])))
        assert correct / ev["samples"] == pytest.approx(ev["fused_acc"])
    one, two = sweep["rows"]
    assert two["device_size_mib"] < one["device_size_mib"]  # smaller sub-models at N = 2


def test_report_of_a_sweep(swept: tuple[Path, dict[str, Any], str]) -> None:
    out, sweep, _ = swept
    written = modelgen("report", out, cwd=out).stdout.strip()
    assert written == str(out / "sweep.md")
    for name in ("sweep.png", "confusion-n1.png", "confusion-n2.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = sweep["rows"]
    fig = sweep_figure(rows)
    labels = [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]
    assert labels == [
        ("N sub-models", "test accuracy"),
        ("N sub-models", "latency per device (ms, 1 thread)"),
        ("N sub-models", "ONNX per device (MiB)"),
    ]
    for ax, key, base in zip(
        fig.axes,
        ("fused_acc", "device_latency_ms", "device_size_mib"),
        ("base_acc", "base_latency_ms", "base_size_mib"),
        strict=True,
    ):
        fused, base_line = ax.get_lines()
        assert list(fused.get_xdata()) == [1, 2]
        assert list(fused.get_ydata()) == [r[key] for r in rows]
        assert list(base_line.get_ydata()) == [rows[0][base]] * 2
    matrix = confusion_figure(rows[1]).axes[0]
    assert (matrix.get_xlabel(), matrix.get_ylabel()) == ("fused prediction", "true class")
    assert matrix.images[0].get_array().tolist() == rows[1]["confusion"]
    assert f"| 2 | {100 * rows[1]['fused_acc']:.2f} %" in (out / "sweep.md").read_text()
