"""Quality benchmark of the offline pipeline → bench/results/accuracy.json (+ accuracy.png).

For each dataset (digits, keywords) and N ∈ {1, 2, 3, 5, 10}: base, fused and averaged-
softmax accuracy, fused accuracy with one sub-model dropped (on the other groups' classes),
per-sub-model size and ONNX latency ratios to the base model, build wall time (the builds
are `modelgen sweep`'s, into bench/.work/<dataset>/, with its sweep.json), and the
baseline a user would pick instead: one model of the N-th sub-model's size, pruned from the
same base and distilled on all classes. At N = 5 it also compares pruning (KL vs magnitude vs
random init) and grouping (confusion vs contiguous); `--grouping-seeds` repeats the grouping
comparison over training seeds. Keyword bundles are also evaluated on the voices held out of
training (`modelgen dataset keywords` writes them beside the training corpus): unseen
espeak-ng voices, and Festival's HTS voice, an unseen engine. Run on purpose, not in the tests:

    .venv/bin/python bench/accuracy.py [--datasets digits keywords] [--ns 1 2 3 5 10]
    .venv/bin/python bench/accuracy.py --grouping-seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from edvit.config import load_config
from edvit.config.recipe import Grouping, PruneMethod, Recipe
from modelgen.build import Workspace, build, open_workspace, prepare, train_submodel
from modelgen.evaluate import evaluate_bundle
from modelgen.planning.plan import submodel_plan
from modelgen.report import pyplot, save_figure
from modelgen.sweep import run_sweep, with_n
from modelgen.train import accuracy, predict

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"


def _recipe(name: str) -> tuple[Recipe, Path]:
    path = ROOT / "config" / "modelgen" / f"{name}.yaml"
    return load_config(path, Recipe), path.parent


def _ensure_keywords(recipe: Recipe, recipe_dir: Path) -> dict[str, Path]:
    """The held-out corpora of the recipe's keyword dataset (made first if missing)."""
    from modelgen.datasets.keywords import corpus_dirs, generate_keywords

    root = (recipe_dir / str(getattr(recipe.dataset, "root", ""))).resolve()
    if not root.is_dir():
        generate_keywords(root, per_word=300, seed=0)
    return {k: d for k, d in corpus_dirs(root).items() if k != "train" and d.is_dir()}


def _single(ws: Workspace, n: int, heads: int) -> dict[str, Any]:
    """One model of the N-th sub-model's size: pruned from the base, distilled on all classes."""
    data, base = prepare(ws)
    c = len(data.classes)
    sp = submodel_plan(f"single{heads}", range(c), ws.shape, heads, c)
    sub = train_submodel(ws, base, data, sp)
    return {
        "n": n,
        "heads": heads,
        "acc": accuracy(predict(sub.model, data.x["test"]), data.y["test"]),
    }


def _row(out: Path, n: int, fresh_seconds: float | None) -> dict[str, Any]:
    m = json.loads((out / "manifest.json").read_text())["metrics"]
    base = m["base"]
    subs = m["per_submodel"]
    row: dict[str, Any] = {
        "n": n,
        "base_acc": m["base_acc"],
        "fused_acc": m["fused_acc"],
        "avg_softmax_acc": m["avg_softmax_acc"],
        "heads": [s["heads"] for s in subs],
        "size_ratio": [s["size_mib"] / base["size_mib"] for s in subs],
        "latency_ratio": [s["latency_ms"] / base["latency_ms"] for s in subs],
        "gmacs_ratio": [s["gmacs"] / base["gmacs"] for s in subs],
        "build_seconds": m["build_seconds"],
        "grouping": m["grouping"],
        "groups": [s["classes"] for s in subs],
    }
    if fresh_seconds is not None:
        row["fresh_build_seconds"] = fresh_seconds
    if n >= 2:
        drops = []
        for s in subs:
            ev = evaluate_bundle(out, drop=[s["id"]])
            drops.append(
                {
                    "dropped": s["id"],
                    "fused_acc": ev["fused_acc"],
                    "kept_classes_fused_acc": ev["kept_classes_fused_acc"],
                    "kept_classes_base_acc": ev["kept_classes_base_acc"],
                }
            )
        row["drop_one"] = drops
        row["drop_one_worst_kept_gap"] = max(
            d["kept_classes_base_acc"] - d["kept_classes_fused_acc"] for d in drops
        )
    return row


def _load(name: str, threads: int | None) -> tuple[Recipe, Path]:
    recipe, recipe_dir = _recipe(name)
    if threads is not None:
        recipe = recipe.model_copy(update={"threads": threads})
    return recipe, recipe_dir


def grouping_by_seed(name: str, seeds: list[int], log: Any, threads: int | None) -> dict[str, Any]:
    """Fused accuracy at N = 5 with confusion vs contiguous groups, one pair of builds a seed.

    The seed changes every training draw (the base model's too) but not the split, so each
    pair is scored on the same test samples and the difference is paired.
    """
    recipe, recipe_dir = _load(name, threads)
    rows = []
    for seed in seeds:
        row: dict[str, Any] = {"seed": seed}
        for grouping in Grouping:
            r = with_n(recipe, 5)
            r = r.model_copy(update={"seed": seed, "grouping": grouping})
            out = WORK / name / f"n5-{grouping.value}-seed{seed}"
            metrics = build(r, recipe_dir, out, log, WORK / name / ".cache").metrics
            row["base_acc"] = metrics["base_acc"]
            row[grouping.value] = metrics["fused_acc"]
        rows.append(row)
        log(f"{name} seed {seed}: {json.dumps(row)}")
    diffs = np.array([r["confusion"] - r["contiguous"] for r in rows])
    return {
        "rows": rows,
        "confusion_minus_contiguous_mean": float(diffs.mean()),
        "confusion_minus_contiguous_sd": float(diffs.std(ddof=1)) if len(diffs) > 1 else None,
    }


def run_dataset(name: str, ns: list[int], log: Any, threads: int | None = None) -> dict[str, Any]:
    recipe, recipe_dir = _load(name, threads)
    heldout = _ensure_keywords(recipe, recipe_dir) if name == "keywords" else {}
    cache = WORK / name / ".cache"  # run_sweep's: the base is trained once for every build
    result: dict[str, Any] = {"dataset": name, "recipe": f"config/modelgen/{name}.yaml", "rows": []}
    fresh = not cache.exists()
    swept = run_sweep(recipe, recipe_dir, ns, WORK / name, log)
    for i, built in enumerate(swept["rows"]):
        n = built["n"]
        out = WORK / name / built["bundle"]
        row = _row(out, n, built["build_seconds"] if fresh and i == 0 else None)
        for corpus, folder in heldout.items():  # voices (and an engine) never trained on
            ev = evaluate_bundle(out, data=folder)
            row[corpus] = {k: ev[k] for k in ("samples", "base_acc", "fused_acc")}
        ws = open_workspace(recipe, recipe_dir, cache, log)
        row["single_model"] = _single(ws, n, max(row["heads"]))
        row["fused_minus_single"] = row["fused_acc"] - row["single_model"]["acc"]
        row["fused_minus_base"] = row["fused_acc"] - row["base_acc"]
        result["rows"].append(row)

    if 5 in ns:
        ablation: dict[str, Any] = {}
        for method in (PruneMethod.magnitude, PruneMethod.random_init):
            r = with_n(recipe, 5)
            r = r.model_copy(update={"pruning": r.pruning.model_copy(update={"method": method})})
            out = WORK / name / f"n5-{method.value}"
            build(r, recipe_dir, out, log, cache)
            m = json.loads((out / "manifest.json").read_text())["metrics"]
            ablation[f"pruning_{method.value}"] = {
                "fused_acc": m["fused_acc"],
                "mean_group_acc": float(np.mean([s["group_acc"] for s in m["per_submodel"]])),
            }
        kl = next(r for r in result["rows"] if r["n"] == 5)
        kl_m = json.loads((WORK / name / "n5" / "manifest.json").read_text())["metrics"]
        ablation["pruning_kl"] = {
            "fused_acc": kl["fused_acc"],
            "mean_group_acc": float(np.mean([s["group_acc"] for s in kl_m["per_submodel"]])),
        }
        other = Grouping.contiguous if recipe.grouping == Grouping.confusion else Grouping.confusion
        r = with_n(recipe, 5).model_copy(update={"grouping": other})
        out = WORK / name / f"n5-{other.value}"
        build(r, recipe_dir, out, log, cache)
        m = json.loads((out / "manifest.json").read_text())["metrics"]
        ablation[f"grouping_{other.value}"] = {"fused_acc": m["fused_acc"]}
        ablation[f"grouping_{recipe.grouping.value}"] = {"fused_acc": kl["fused_acc"]}
        result["ablation_n5"] = ablation
    return result


def _plot(results: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for res in results:
        ns = [r["n"] for r in res["rows"]]
        ax = axes[0]
        ax.plot(ns, [r["fused_acc"] for r in res["rows"]], "o-", label=f"{res['dataset']} fused")
        ax.plot(ns, [r["base_acc"] for r in res["rows"]], "k--", alpha=0.4)
        ax.plot(
            ns,
            [r["single_model"]["acc"] for r in res["rows"]],
            "x:",
            label=f"{res['dataset']} single",
        )
        axes[1].plot(ns, [max(r["latency_ratio"]) for r in res["rows"]], "o-", label=res["dataset"])
    axes[0].set(xlabel="N sub-models", ylabel="test accuracy", title="accuracy (dashed: base)")
    axes[1].set(xlabel="N sub-models", ylabel="max sub-model / base", title="ONNX latency ratio")
    for ax in axes:
        ax.legend(fontsize=8)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "keywords"])
    parser.add_argument("--ns", nargs="+", type=int, default=[5, 1, 2, 3, 10])
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: the recipe's); 1 on a busy machine"
    )
    parser.add_argument(
        "--grouping-seeds",
        nargs="+",
        type=int,
        help="instead: confusion vs contiguous grouping at N = 5 for these seeds, added to "
        "the datasets' results already in --out",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "accuracy.json")
    args = parser.parse_args()
    if args.grouping_seeds:
        found = {r["dataset"]: r for r in json.loads(args.out.read_text())["results"]}
        for name in args.datasets:
            if name not in found:
                parser.error(f"{args.out} has no {name} results yet: run the benchmark first")
            found[name]["grouping_by_seed"] = grouping_by_seed(
                name, args.grouping_seeds, print, args.threads
            )
        merge(args.out, list(found.values()))
        return
    started = time.perf_counter()
    results = [run_dataset(d, args.ns, print, args.threads) for d in args.datasets]
    for res in results:
        res["rows"].sort(key=lambda r: r["n"])
        res["bench_seconds"] = time.perf_counter() - started
    print(json.dumps(results))
    merge(args.out, results)


def merge(out: Path, results: list[dict[str, Any]]) -> None:
    """Write `results` into `out`, keeping the other datasets' results already there."""
    kept = []
    if out.is_file():
        names = {r["dataset"] for r in results}
        kept = [r for r in json.loads(out.read_text())["results"] if r["dataset"] not in names]
    merged = sorted(kept + results, key=lambda r: str(r["dataset"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": merged}, indent=1) + "\n")
    _plot(merged, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
