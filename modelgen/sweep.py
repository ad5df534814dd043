"""`modelgen sweep`: one recipe built at several N, sharing the cached base (the paper's
Fig. 3): accuracy, per-device latency and size against N, and a confusion matrix per bundle.

    OUT/n<N>/        the bundle of each N (`modelgen build` with plan.num_submodels = N)
    OUT/.cache/      the stages they share: the base model is trained once
    OUT/sweep.json   one row per N, from each bundle's own evaluation (`modelgen eval`)

`modelgen report OUT` draws it (`modelgen.report.write_sweep_report`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edvit.bundle import Manifest
from edvit.config.recipe import Recipe

SWEEP_FILE = "sweep.json"


def with_n(recipe: Recipe, n: int) -> Recipe:
    """`recipe` cut into `n` sub-models (a devices file would fix N: it is dropped)."""
    plan = recipe.plan.model_copy(update={"num_submodels": n, "devices": None})
    return recipe.model_copy(update={"plan": plan})


def _per_device(manifest: Manifest, per_sub: list[dict[str, Any]], key: str) -> float:
    """The busiest device's sum of `key` over its sub-models (each sub-model on its own
    device when the plan assigns none)."""
    assignment = manifest.plan.assignment or {}
    devices: dict[str, float] = {}
    for sub in per_sub:
        device = assignment.get(sub["id"], sub["id"])
        devices[device] = devices.get(device, 0.0) + float(sub[key])
    return max(devices.values())


def _confusion(predictions: list[dict[str, Any]], classes: int) -> list[list[int]]:
    """rows: true class, columns: the fused prediction."""
    matrix = np.zeros((classes, classes), dtype=int)
    for p in predictions:
        matrix[p["label"], p["fused"]] += 1
    return matrix.tolist()


def sweep_row(n: int, bundle_dir: Path, manifest: Manifest, seconds: float) -> dict[str, Any]:
    """What the report draws for the bundle of N = `n`, from its own evaluation."""
    from modelgen.evaluate import evaluate_bundle

    ev = evaluate_bundle(bundle_dir, predictions=True)
    per_sub = ev["per_submodel"]
    return {
        "n": n,
        "bundle": bundle_dir.name,
        "samples": ev["samples"],
        "base_acc": ev["base_acc"],
        "fused_acc": ev["fused_acc"],
        "avg_softmax_acc": ev["avg_softmax_acc"],
        "base_latency_ms": ev["base"]["latency_ms"],
        "base_size_mib": ev["base"]["onnx_mib"],
        "device_latency_ms": _per_device(manifest, per_sub, "latency_ms"),
        "device_size_mib": _per_device(manifest, per_sub, "onnx_mib"),  # files as shipped
        "heads": [s["heads"] for s in per_sub],
        "classes": manifest.classes,
        "confusion": _confusion(ev["predictions"], len(manifest.classes)),
        "build_seconds": seconds,
    }


def run_sweep(
    recipe: Recipe,
    recipe_dir: Path,
    ns: Sequence[int],
    out: Path,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build and evaluate `recipe` at every N of `ns` into `out`; write and return sweep.json."""
    from modelgen.build import build

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in ns:
        bundle_dir = out / f"n{n}"
        started = time.perf_counter()
        manifest = build(with_n(recipe, n), recipe_dir, bundle_dir, log, out / ".cache")
        rows.append(sweep_row(n, bundle_dir, manifest, time.perf_counter() - started))
        log(f"sweep N={n}: fused {rows[-1]['fused_acc']:.4f}, base {rows[-1]['base_acc']:.4f}")
    result = {"recipe": recipe.name, "ns": list(ns), "rows": rows}
    (out / SWEEP_FILE).write_text(json.dumps(result, indent=1) + "\n")
    return result
