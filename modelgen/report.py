"""`modelgen report`: a bundle's measured results as markdown and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edvit.bundle import load_bundle


def _bar(path: Path, labels: list[str], values: list[float], ylabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(labels, values, color="#4c72b0")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    for i, v in enumerate(values):
        ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
