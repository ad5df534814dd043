"""`modelgen eval`: accuracy of the exported bundle, run the way the site runs it.

Sub-models and the base run in ONNX Runtime (one thread, as on a node) and the fusion in
numpy from the bundle's safetensors (as on the aggregator), so these figures are the
deployed system's, not the training framework's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edvit.bundle import Bundle, load_bundle
from edvit.fusion import NumpyFusionMLP, softmax
from edvit.onnx import ONNX_INPUT, ONNX_OUTPUTS, ort_session
from edvit.preprocess import preprocess_batch
from modelgen.sizing import MIB

LATENCY_RUNS = 20


class EvalError(Exception):
    """The bundle cannot be evaluated as asked (unknown sub-model, unusable data)."""


@dataclass(frozen=True)
class Samples:
    """Raw samples in evaluation order, their labels and their dataset names."""

    samples: list[np.ndarray]
    labels: np.ndarray
    sources: list[str]
    sample_rate: int | None


def bundle_samples(bundle: Bundle, data: Path | None = None) -> Samples:
    """The bundle's recorded test split, or every sample of `data` (same kind of dataset)."""
    from modelgen.datasets import load_dataset
    from modelgen.datasets.split import apply_split

    recorded = bundle.manifest.split
    if data is None:
        dataset = load_dataset(recorded.dataset)
        idx = apply_split(recorded.record, dataset).test
    else:
        if not hasattr(recorded.dataset, "root"):
            raise EvalError(f"--data: the bundle's dataset ({recorded.dataset.kind}) has no folder")
        other = recorded.dataset.model_copy(
            update={"root": data, "classes": bundle.manifest.classes, "max_per_class": None}
        )
        dataset = load_dataset(other)
        idx = np.arange(len(dataset.labels))
    if dataset.classes != bundle.manifest.classes:
        raise EvalError(f"dataset classes {dataset.classes} != bundle {bundle.manifest.classes}")
    return Samples(
        samples=[dataset.samples[i] for i in idx],
        labels=dataset.labels[idx],
        sources=[dataset.sources[i] for i in idx],
        sample_rate=dataset.sample_rate,
    )


def _run_each(session: Any, outputs: list[str], input_name: str, x: np.ndarray) -> list[np.ndarray]:
    """Outputs over `x` one sample at a time, as a node runs them: ONNX Runtime's results
    can differ in the last bits between batch sizes, and eval must predict what the site does.
    """
    rows = [session.run(outputs, {input_name: x[i : i + 1]}) for i in range(len(x))]
    return [np.concatenate([r[k] for r in rows]) for k in range(len(outputs))]


def _latency_ms(session: Any, x: np.ndarray) -> float:
    name = session.get_inputs()[0].name
    one = x[:1]
    session.run(None, {name: one})  # warm-up
    times = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        session.run(None, {name: one})
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def _acc(pred: np.ndarray, labels: np.ndarray) -> float | None:
    return float((pred == labels).mean()) if len(labels) else None


def evaluate_bundle(
    directory: str | Path,
    drop: Sequence[str] = (),
    data: Path | None = None,
    predictions: bool = False,
) -> dict[str, Any]:
    """The JSON of `modelgen eval`: base, fused and averaged-softmax accuracy, per sub-model."""
    bundle = load_bundle(directory)
    m = bundle.manifest
    ids = [s.id for s in m.submodels]
    if unknown := sorted(set(drop) - set(ids)):
        raise EvalError(f"--drop {', '.join(unknown)}: the bundle's sub-models are {ids}")
    spec = m.preprocess
    chosen = bundle_samples(bundle, data)
    labels = chosen.labels
    x = preprocess_batch(spec, chosen.samples)
    num_classes = len(m.classes)

    features: dict[str, np.ndarray | None] = {}
    scores = np.zeros((len(labels), num_classes), np.float32)  # the paper's w/o-retrain fusion
    per_sub = []
    for sub in m.submodels:
        session = ort_session(bundle.path(sub.onnx))
        feat, logits = _run_each(session, sub.onnx_outputs, sub.onnx_input, x)
        # Rounded as the wire carries them (fp16), so eval predicts what the aggregator does.
        features[sub.id] = None if sub.id in drop else feat.astype(np.float16).astype(np.float32)
        if sub.id not in drop:
            scores[:, sub.classes] = softmax(logits)[:, : len(sub.classes)]
        per_sub.append(
            {
                "id": sub.id,
                "classes": sub.classes,
                "heads": sub.heads,
                "size_mib": sub.size_mib,
                "precision": sub.precision.value,
                "onnx_mib": sub.onnx.bytes / MIB,
                "gmacs": sub.gmacs,
                "latency_ms": _latency_ms(session, x),
                "group_acc": _acc(
                    np.asarray(sub.classes)[logits[:, : len(sub.classes)].argmax(1)][
                        np.isin(labels, sub.classes)
                    ],
                    labels[np.isin(labels, sub.classes)],
                ),
            }
        )
    fused = NumpyFusionMLP.from_bundle(bundle).forward(features).argmax(axis=1)
    result: dict[str, Any] = {
        "samples": len(labels),
        "fused_acc": _acc(fused, labels),
        "avg_softmax_acc": _acc(scores.argmax(axis=1), labels),
        "per_submodel": per_sub,
        "dropped": list(drop),
    }
    if predictions:  # per sample, in evaluation order: what the site must reproduce
        result["predictions"] = [
            {"source": src, "label": int(y), "fused": int(p)}
            for src, y, p in zip(chosen.sources, labels, fused, strict=True)
        ]
    if m.base.onnx is not None:
        session = ort_session(bundle.path(m.base.onnx))
        _, base_logits = _run_each(session, list(ONNX_OUTPUTS), ONNX_INPUT, x)
        result["base_acc"] = _acc(base_logits.argmax(axis=1), labels)
        result["base"] = {
            "heads": m.base.num_heads,
            "size_mib": m.base.size_mib,
            "onnx_mib": m.base.onnx.bytes / MIB,
            "gmacs": m.base.gmacs,
            "latency_ms": _latency_ms(session, x),
        }
    if drop:
        lost = [c for s in m.submodels if s.id in drop for c in s.classes]
        kept = ~np.isin(labels, lost)
        result["kept_classes_fused_acc"] = _acc(fused[kept], labels[kept])
        if "base_acc" in result:
            result["kept_classes_base_acc"] = _acc(base_logits.argmax(axis=1)[kept], labels[kept])
    return result


def write_samples(directory: str | Path, out: Path, data: Path | None = None) -> Path:
    """The evaluation samples as files a node's replay source reads (PNG or float WAV, both
    lossless), named in evaluation order so tick k shows item k mod M, plus `labels.json`."""
    import json

    from edvit import media

    bundle = load_bundle(directory)
    chosen = bundle_samples(bundle, data)
    out.mkdir(parents=True, exist_ok=True)
    items = []
    for i, (sample, label, source) in enumerate(
        zip(chosen.samples, chosen.labels, chosen.sources, strict=True)
    ):
        name = f"{i:06d}.{'wav' if chosen.sample_rate else 'png'}"
        if chosen.sample_rate:
            media.write_wav(out / name, sample, chosen.sample_rate)
        else:
            media.write_image(out / name, sample)
        items.append({"file": name, "source": source, "label": int(label)})
    labels = out / "labels.json"
    labels.write_text(json.dumps({"classes": bundle.manifest.classes, "items": items}, indent=1))
    return labels
