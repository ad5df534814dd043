"""`modelgen report`: a bundle's measured results, or a sweep's (`modelgen sweep`), as
markdown and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edvit.bundle import Precision, load_bundle
from modelgen.sizing import MIB
from modelgen.sweep import SWEEP_FILE


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend: files only, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Lay out, write as PNG, and free the figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


def _bar(path: Path, labels: list[str], values: list[float], ylabel: str, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(labels, values, color="#4c72b0")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    for i, v in enumerate(values):
        ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=8)
    save_figure(fig, path)


def _pct(v: Any) -> str:
    return f"{100 * v:.2f} %" if isinstance(v, float) else "–"


def write_report(directory: str | Path) -> Path:
    """Write `report.md`, `accuracy.png` and `submodels.png` into the bundle directory."""
    root = Path(directory)
    m = load_bundle(root).manifest
    metrics = m.metrics
    subs = metrics.get("per_submodel", [])
    base = metrics.get("base", {})
    names = ["base", *(s["id"] for s in subs)]
    _bar(
        root / "accuracy.png",
        ["base", "fused", "avg softmax"],
        [metrics.get(k) or 0.0 for k in ("base_acc", "fused_acc", "avg_softmax_acc")],
        "test accuracy",
        f"{len(subs)} sub-models",
    )
    _bar(
        root / "submodels.png",
        names,
        [base.get("latency_ms", 0.0), *(s["latency_ms"] for s in subs)],
        "ONNX latency, 1 thread (ms)",
        "per-sample latency",
    )
    lines = [
        f"# edvit bundle: {len(m.classes)} classes, {len(subs)} sub-models",
        "",
        f"Base `{m.base.arch}` ({m.base.spec}).",
        "",
        "| accuracy (test split) | value |",
        "|---|---|",
        f"| base model | {_pct(metrics.get('base_acc'))} |",
        f"| fused (MLP) | {_pct(metrics.get('fused_acc'))} |",
        f"| averaged softmax, w/o fusion training | {_pct(metrics.get('avg_softmax_acc'))} |",
        "",
        "| model | classes | heads | MiB | GMACs | ONNX ms | device |",
        "|---|---|---|---|---|---|---|",
        f"| base | all | {m.base.num_heads} | {m.base.size_mib:.3f} | {m.base.gmacs:.4f} | "
        f"{base.get('latency_ms', float('nan')):.2f} | – |",
    ]
    assignment = m.plan.assignment or {}
    for s in subs:
        lines.append(
            f"| {s['id']} | {', '.join(m.classes[c] for c in s['classes'])} | {s['heads']} | "
            f"{s['size_mib']:.3f} | {s['gmacs']:.4f} | {s['latency_ms']:.2f} | "
            f"{assignment.get(s['id'], '–')} |"
        )
    if quantized := [s for s in m.submodels if s.precision is Precision.int8]:
        worst = max(s.feature_error or 0.0 for s in quantized)
        shipped = sum(s.onnx.bytes for s in quantized) / MIB
        lines += [
            "",
            f"Sub-models' ONNX: int8, {shipped:.3f} MiB in all (MiB above: fp32 weights); "
            f"feature error at most {worst:.4f} relative RMS against fp32.",
        ]
    lines += ["", "![accuracy](accuracy.png) ![latency](submodels.png)", ""]
    if "grouping" in metrics:
        g = metrics["grouping"]
        lines.append(
            f"Grouping: {g['method']}; within-group affinity contiguous "
            f"{g['within_affinity']['contiguous']:.3f}, confusion "
            f"{g['within_affinity']['confusion']:.3f}."
        )
    out = root / "report.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def sweep_figure(rows: list[dict[str, Any]]) -> Any:
    """Accuracy, the busiest device's latency and size against N; the base as a line."""
    plt = pyplot()
    ns = [r["n"] for r in rows]
    panels = [
        ("test accuracy", "fused_acc", "base_acc"),
        ("latency per device (ms, 1 thread)", "device_latency_ms", "base_latency_ms"),
        ("ONNX per device (MiB)", "device_size_mib", "base_size_mib"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, (ylabel, key, base_key) in zip(axes, panels, strict=True):
        ax.plot(ns, [r[key] for r in rows], "o-", label="sub-models (fused)")
        ax.axhline(rows[0][base_key], color="k", linestyle="--", alpha=0.5, label="base")
        ax.set_xlabel("N sub-models")
        ax.set_ylabel(ylabel)
        ax.set_xticks(ns)
        ax.legend(fontsize=8)
    return fig


def confusion_figure(row: dict[str, Any]) -> Any:
    """The fused model's confusion matrix of one bundle of a sweep."""
    plt = pyplot()
    classes = row["classes"]
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    image = ax.imshow(row["confusion"], cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("fused prediction")
    ax.set_ylabel("true class")
    ax.set_title(f"N = {row['n']}: fused {100 * row['fused_acc']:.1f} %")
    fig.colorbar(image, ax=ax)
    return fig


def write_sweep_report(directory: str | Path) -> Path:
    """`sweep.md`, `sweep.png` and `confusion-n<N>.png` from the sweep's own sweep.json."""
    root = Path(directory)
    sweep = json.loads((root / SWEEP_FILE).read_text())
    rows = sorted(sweep["rows"], key=lambda r: r["n"])
    save_figure(sweep_figure(rows), root / "sweep.png")
    lines = [
        f"# edvit sweep of `{sweep['recipe']}`",
        "",
        "| N | fused | base | avg softmax | ms / device | base ms | MiB / device | base MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        save_figure(confusion_figure(r), root / f"confusion-n{r['n']}.png")
        lines.append(
            f"| {r['n']} | {_pct(r['fused_acc'])} | {_pct(r['base_acc'])} | "
            f"{_pct(r['avg_softmax_acc'])} | {r['device_latency_ms']:.2f} | "
            f"{r['base_latency_ms']:.2f} | {r['device_size_mib']:.3f} | {r['base_size_mib']:.3f} |"
        )
    lines += ["", "![sweep](sweep.png)", ""]
    lines += [f"![N = {r['n']}](confusion-n{r['n']}.png)" for r in rows]
    out = root / "sweep.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
