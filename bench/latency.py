"""Latency at the paper's geometry → bench/results/latency.json (+ latency.png).

ViT-S/16 and ViT-B/16 at 224 px (ViT-L/16 with `--large`), the base and the largest
sub-model Alg. 1 gives for each N (10 classes, contiguous groups, no budget: ⌈h / N⌉ heads),
random weights (latency and size do not depend on them), exported by `modelgen.export` (its
parity check included), fp32 and ONNX Runtime dynamic int8 (per-channel QInt8 weights, by
modelgen.quantize as int8 bundles are).
Timed in ONNX Runtime with the node's session options (one intra-op thread) at batch 1, in
interleaved rounds (every model once per round), medians. Ratios are to the fp32 base of the
same run; the MAC limit of a ratio is base total MACs / sub total MACs (attention included),
efficiency = ratio / limit. Run on purpose (the machine should be quiet):

    .venv/bin/python bench/latency.py --models s,b
    .venv/bin/python bench/latency.py --profile     # ms per op type and per node, ViT-B N = 10
    .venv/bin/python bench/latency.py --node-cost   # a real edge-node's RSS and start-up time

`--node-cost` (bench/node_cost.py) writes `results/node_cost.json` instead: the ViT-B N = 10
sub-model, the same on a log-mel input, and the keyword recipe's geometry, each hosted by a
real `edge-node` on a private mosquitto (or `--broker HOST:PORT`).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edvit.config.recipe import Quantization
from edvit.onnx import ONNX_INPUT, ONNX_OUTPUTS, ort_session
from modelgen.export import SUBMODEL_DIR, export_submodel
from modelgen.grouping import contiguous_groups
from modelgen.model import ModelConfig, build_vit
from modelgen.planning import make_plan
from modelgen.quantize import quantize_onnx
from modelgen.report import pyplot, save_figure
from modelgen.sizing import MIB, vit_stats
from modelgen.vit_shape import ViTShape, parse_arch

from node_cost import GEOMETRIES, node_cost

ROOT = Path(__file__).resolve().parent.parent
CLASSES = 10  # CIFAR-10, as in the paper's ViT-B figures
ARCHS = {
    "s": "vit_small_patch16_224",
    "b": "vit_base_patch16_224",
    "l": "vit_large_patch16_224",
    "tiny": "vit:img=32,patch=8,chans=3,embed=32,depth=2,heads=4",  # for the test
}
PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class Model:
    """One model to time: the base (n = 1) or the largest sub-model Alg. 1 gives for n."""

    arch: str
    n: int
    config: ModelConfig

    @property
    def label(self) -> str:
        return f"{self.arch} N={self.n}"


def models_for(arch: str, ns: Sequence[int]) -> list[Model]:
    """The base of `arch` and, per N, the largest sub-model of Alg. 1's plan for it."""
    base = parse_arch(ARCHS[arch])
    out = [Model(arch, 1, ModelConfig(base, CLASSES))]
    for n in ns:
        plan = make_plan(base, CLASSES, contiguous_groups(CLASSES, n))
        sub = max(plan.submodels, key=lambda s: (s.params, s.outputs))
        out.append(Model(arch, n, ModelConfig(base.with_heads(sub.heads), sub.outputs)))
    return out


def export_both(model: Model, out_dir: Path) -> dict[str, Path]:
    """fp32 ONNX by our exporter (parity-checked) and its dynamic int8 quantization, as
    `export.precision: int8` writes it."""
    torch.manual_seed(0)
    sub_id = f"{model.arch}-n{model.n}"
    export_submodel(build_vit(model.config).eval(), model.config, out_dir, sub_id)
    fp32 = out_dir / SUBMODEL_DIR / f"{sub_id}.onnx"
    (out_dir / SUBMODEL_DIR / f"{sub_id}.safetensors").unlink()
    int8 = fp32.with_suffix(".int8.onnx")
    quantize_onnx(fp32, int8, Quantization.dynamic)
    return {"fp32": fp32, "int8": int8}


def _input(shape: ViTShape) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.standard_normal((1, shape.in_chans, *shape.img_size)).astype(np.float32)


def time_interleaved(
    sessions: Sequence[tuple[Any, np.ndarray]], rounds: int, warmup: int = 2
) -> list[list[float]]:
    """Seconds per run of each session, one run of each per round (round-robin)."""
    for sess, x in sessions:
        for _ in range(warmup):
            sess.run(list(ONNX_OUTPUTS), {ONNX_INPUT: x})
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for i, (sess, x) in enumerate(sessions):
            t0 = time.perf_counter()
            sess.run(list(ONNX_OUTPUTS), {ONNX_INPUT: x})
            times[i].append(time.perf_counter() - t0)
    return times


def run(
    arch_keys: Sequence[str], ns: Sequence[int], rounds: int, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Export, time and compare every model of `arch_keys`; the result rows per arch."""
    results: list[dict[str, Any]] = []
    for arch in arch_keys:
        models = models_for(arch, ns)
        with tempfile.TemporaryDirectory(prefix="edvit-latency-") as tmp:
            files = []
            for m in models:
                t0 = time.perf_counter()
                files.append(export_both(m, Path(tmp)))
                log(f"{m.label}: exported and quantized in {time.perf_counter() - t0:.1f} s")
            keys = [(i, p) for i in range(len(models)) for p in PRECISIONS]
            sessions = [(ort_session(files[i][p]), _input(models[i].config.shape)) for i, p in keys]
            times = time_interleaved(sessions, rounds)
            del sessions
            sizes = {(i, p): files[i][p].stat().st_size / MIB for i, p in keys}
        medians = {k: statistics.median(t) * 1e3 for k, t in zip(keys, times, strict=True)}
        base_stats = vit_stats(models[0].config.shape, CLASSES)
        base_total = base_stats.macs + base_stats.attention_macs
        rows = []
        for i, m in enumerate(models):
            s = vit_stats(m.config.shape, m.config.num_outputs)
            limit = base_total / (s.macs + s.attention_macs)
            row: dict[str, Any] = {
                "n": m.n,
                "heads": m.config.shape.num_heads,
                "embed_dim": m.config.shape.embed_dim,
                "gmacs": s.gmacs,
                "gmacs_total": s.gmacs_total,
                "mac_limit": limit,
                "linear_mac_ratio": base_stats.macs / s.macs,
            }
            for p in PRECISIONS:
                ratio = medians[(0, "fp32")] / medians[(i, p)]
                row[p] = {
                    "mib": sizes[(i, p)],
                    "latency_ms": medians[(i, p)],
                    "ratio": ratio,
                    "efficiency": ratio / limit,
                    "size_ratio": sizes[(0, "fp32")] / sizes[(i, p)],
                }
            rows.append(row)
            log(f"{m.label}: {json.dumps(row)}")
        results.append({"arch": ARCHS[arch], "rounds": rounds, "rows": rows})
    return results


def profile(arch: str, n: int, runs: int, top: int) -> dict[str, list[dict[str, Any]]]:
    """ONNX Runtime's profile of the fp32 sub-model for N: ms per op type, and per node with
    the block index dropped (`/blocks.*/attn/MatMul` is QKᵀ of every block together)."""
    model = models_for(arch, [n])[1]
    with tempfile.TemporaryDirectory(prefix="edvit-profile-") as tmp:
        path = export_both(model, Path(tmp))["fp32"]
        sess = ort_session(path, profile_prefix=str(Path(tmp) / "ort"))
        x = _input(model.config.shape)
        for _ in range(runs):
            sess.run(list(ONNX_OUTPUTS), {ONNX_INPUT: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    kernels = [
        ev for ev in events if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time")
    ]
    by_op = [(ev["args"]["op_name"], ev["dur"]) for ev in kernels]
    by_node = [
        (re.sub(r"blocks\.\d+", "blocks.*", ev["name"].removesuffix("_kernel_time")), ev["dur"])
        for ev in kernels
    ]
    return {"op": _ranked(by_op, runs, top), "node": _ranked(by_node, runs, top)}


def _ranked(durations: Sequence[tuple[str, float]], runs: int, top: int) -> list[dict[str, Any]]:
    """Total µs per key → the `top` keys by ms per run, with their share and count per run."""
    ms: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for key, dur in durations:
        ms[key] += dur / 1e3
        count[key] += 1
    total = sum(ms.values())
    ranked = sorted(ms.items(), key=lambda kv: -kv[1])[:top]
    return [
        {"name": k, "ms_per_run": v / runs, "share": v / total, "per_run": count[k] // runs}
        for k, v in ranked
    ]


def _list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _node_cost(
    nodes: list[str],
    broker: str | None,
    steady_s: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """bench/node_cost.py on `broker` (HOST:PORT), or on a private mosquitto."""
    from edvit.demo.brokers import Mosquitto

    with tempfile.TemporaryDirectory(prefix="edvit-node-cost-") as tmp:
        work = Path(tmp)
        if broker is not None:
            host, _, port = broker.rpartition(":")
            return node_cost(nodes, (host, int(port)), work, log, steady_s)
        with Mosquitto(work / "mosquitto") as private:
            return node_cost(nodes, (private.host, private.port), work, log, steady_s)


def _plot(results: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for res in results:
        rows = res["rows"][1:]
        ns = [r["n"] for r in rows]
        name = res["arch"].split("_")[1]
        axes[0].plot(ns, [r["fp32"]["ratio"] for r in rows], "o-", label=f"{name} fp32")
        axes[0].plot(ns, [r["int8"]["ratio"] for r in rows], "x-", label=f"{name} int8")
        axes[0].plot(ns, [r["mac_limit"] for r in rows], "k--", alpha=0.4)
        axes[1].plot(ns, [r["fp32"]["size_ratio"] for r in rows], "o-", label=f"{name} fp32")
        axes[1].plot(ns, [r["int8"]["size_ratio"] for r in rows], "x-", label=f"{name} int8")
    axes[0].set(xlabel="N", ylabel="base latency / sub latency", title="speed-up (dashed: MACs)")
    axes[1].set(xlabel="N", ylabel="fp32 base MiB / sub MiB", title="size ratio")
    for ax in axes:
        ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="s,b", help="comma list of s, b (and l)")
    parser.add_argument("--large", action="store_true", help="also ViT-L/16")
    parser.add_argument("--ns", default="2,3,5,10")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="ViT-S, N = 2, 10, 5 rounds")
    parser.add_argument("--tiny", action="store_true", help="a tiny ViT (tests), no plot")
    parser.add_argument("--profile", action="store_true", help="profile ViT-B N = 10 only")
    parser.add_argument(
        "--node-cost", action="store_true", help="a real edge-node's RSS and time to first feature"
    )
    parser.add_argument(
        "--nodes",
        help=f"--node-cost: comma list of {', '.join(GEOMETRIES)} (default vit-b, vit-b-audio, "
        "keywords; --tiny: tiny, tiny-audio)",
    )
    parser.add_argument(
        "--broker", help="--node-cost: this mosquitto (HOST:PORT), not a private one"
    )
    parser.add_argument(
        "--steady", type=float, default=5.0, help="--node-cost: s after 1st feature"
    )
    parser.add_argument(
        "--out", type=Path, help="default results/latency.json (--node-cost: node_cost.json)"
    )
    args = parser.parse_args(argv)
    if args.profile:
        print(json.dumps(profile("b", 10, runs=50, top=12), indent=1))
        return

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results_dir = ROOT / "bench" / "results"
    if args.node_cost:
        default = "tiny,tiny-audio" if args.tiny else "vit-b,vit-b-audio,keywords"
        nodes = _list(args.nodes or default)
        if unknown := [k for k in nodes if k not in GEOMETRIES]:
            parser.error(f"--nodes: unknown {unknown}; use {', '.join(GEOMETRIES)}")
        report = _node_cost(nodes, args.broker, args.steady, log)
        print(json.dumps(report))
        out = args.out or results_dir / "node_cost.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
        return
    args.out = args.out or results_dir / "latency.json"
    archs = [a.strip() for a in args.models.split(",") if a.strip()]
    ns = [int(n) for n in args.ns.split(",")]
    if args.quick:
        archs, ns, args.rounds = ["s"], [2, 10], 5
    if args.tiny:
        archs = ["tiny"]
    if args.large and "l" not in archs:
        archs.append("l")
    if unknown := [a for a in archs if a not in ARCHS]:
        parser.error(f"--models: unknown {unknown}; use s, b, l")

    results = run(archs, ns, args.rounds, log)
    print(json.dumps(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    if args.tiny:
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log("matplotlib is not installed: no plot")
        return
    _plot(results, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
