"""`modelgen build`: recipe → verified bundle, one cached stage after another.

Stages: data (load, split, fit the front-end's normalisation, preprocess), base model,
class groups, plan, one sub-model per group (prune, then distil), fusion MLP, export
(ONNX + safetensors, parity-checked), evaluation of the exported bundle, manifest, report,
signature (with a key).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.numpy import load_file as load_arrays
from safetensors.numpy import save_file as save_arrays
from timm.models.vision_transformer import VisionTransformer

from edvit.bundle import (
    SCHEMA_VERSION,
    EventsEntry,
    Manifest,
    Precision,
    SubmodelEntry,
    write_manifest,
)
from edvit.config import DevicesFile, load_config
from edvit.config.recipe import ExportSpec, Grouping, PruneMethod, Recipe
from edvit.fusion import hidden_size, softmax
from edvit.plan import SubmodelPlan
from edvit.preprocess import (
    AudioPreprocess,
    fit_normalization,
    parse_preprocess,
    preprocess_batch,
)
from edvit.signing import SIGNATURE, remove_signature, sign_bundle
from modelgen.cache import StageCache, content_key
from modelgen.calibration import calibrate_thresholds
from modelgen.datasets.base import Dataset
from modelgen.distill import distill
from modelgen.export import (
    base_entry,
    export_fusion,
    export_submodel,
    fusion_entry,
    submodel_entry,
)
from modelgen.fusion_model import TorchFusionMLP
from modelgen.grouping import class_groups
from modelgen.importance import Importance, KLImportance, MagnitudeImportance
from modelgen.inputs import Inputs, LazyInputs, inputs_nbytes
from modelgen.model import ModelConfig, build_vit, features_and_logits, load_model, save_model
from modelgen.planning import Plan, make_plan
from modelgen.pruning import prune_for_group
from modelgen.train import accuracy, cross_entropy_loss, fit, predict, seed_everything
from modelgen.vit_shape import ShapeError, ViTShape, parse_arch

Log = Callable[[str], None]
PARTS = ("train", "val", "test")


class BuildError(Exception):
    """A recipe that cannot be built as written; the message says what to change."""


@dataclass
class Prepared:
    """The preprocessed splits, the fitted front-end and the split record."""

    key: str
    x: dict[str, Inputs]
    y: dict[str, np.ndarray]
    classes: list[str]
    preprocess: dict[str, Any]
    split: dict[str, Any]


@dataclass
class Base:
    key: str
    model: VisionTransformer
    logits: dict[str, np.ndarray]
    metrics: dict[str, Any]


@dataclass
class Sub:
    key: str
    plan: SubmodelPlan
    model: VisionTransformer
    config: ModelConfig
    metrics: dict[str, Any]


@dataclass
class Workspace:
    """A loaded recipe and where its stages are cached: what every stage reads."""

    recipe: Recipe
    recipe_dir: Path
    shape: ViTShape
    cache: StageCache
    log: Log
    device: torch.device


def open_workspace(
    recipe: Recipe, recipe_dir: Path, cache_dir: Path, log: Log = print
) -> Workspace:
    """Check the recipe against itself and set torch's threads; stages run on the result."""
    torch.set_num_threads(recipe.threads)
    shape = _check_shape(recipe)
    device = resolve_device(recipe.device)
    log(f"torch: {device}, {recipe.threads} CPU threads")
    return Workspace(recipe, recipe_dir, shape, StageCache(cache_dir), log, device)


def resolve_device(name: str) -> torch.device:
    """`auto` → the first CUDA GPU, else Apple's MPS, else the CPU; a named one must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        name = "mps" if torch.backends.mps.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        raise BuildError(f"device: {name} requested but torch sees no such CUDA device")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise BuildError("device: mps requested but torch has no MPS backend here")
    return device


def _check_shape(recipe: Recipe) -> ViTShape:
    try:
        shape = parse_arch(recipe.model.arch)
    except ShapeError as exc:
        raise BuildError(f"model.arch: {exc}") from None
    spec = parse_preprocess(recipe.preprocess.model_dump())
    want = (spec.in_chans, *spec.input_size)
    have = (shape.in_chans, *shape.img_size)
    if want != have:
        raise BuildError(f"model.arch takes input {have} (C, H, W) but preprocess gives {want}")
    return shape


def _stream_windows(
    recipe: Recipe, dataset: Dataset, train: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray]:
    """`dataset.stream_windows` windows across pairs of training clips and their labels
    (none for images or 0); drawn from the split's seed, which the data key holds."""
    count = getattr(recipe.dataset, "stream_windows", 0)
    spec = recipe.preprocess
    if not count or dataset.sample_rate is None or not isinstance(spec, AudioPreprocess):
        return [], np.zeros(0, dtype=np.int64)
    from modelgen.streams import splice_windows

    background = set(recipe.dataset.background_classes)
    keywords = frozenset(c for c, name in enumerate(dataset.classes) if name not in background)
    clip = spec.clip_samples
    windows, labels = splice_windows(
        [dataset.samples[i] for i in train],
        [int(dataset.labels[i]) for i in train],
        keywords,
        count,
        clip,
        dataset.sample_rate,
        np.random.default_rng([recipe.dataset.split.seed, 0x5714CE]),
    )
    return windows, np.asarray(labels, dtype=np.int64)


def _stage_data(ws: Workspace) -> Prepared:
    from edvit.config.dataset import SplitRecord
    from modelgen.datasets import load_dataset, split_dataset
    from modelgen.datasets.base import check_preprocess
    from modelgen.datasets.split import apply_split

    recipe, recipe_dir, cache, log = ws.recipe, ws.recipe_dir, ws.cache, ws.log

    # background classes change no sample (the manifest records them, not the data key),
    # except the labels of stream windows, which say which classes are keywords
    windowed = bool(getattr(recipe.dataset, "stream_windows", 0))
    excluded = set() if windowed else {"background_classes"}
    dataset_spec = recipe.dataset.model_dump(mode="json", exclude=excluded)
    if "root" in dataset_spec:  # resolved, so the bundle can be re-evaluated from anywhere
        dataset_spec["root"] = str((recipe_dir / dataset_spec["root"]).resolve())
    given = sorted({"mean", "std"} & recipe.preprocess.model_fields_set)  # else measured
    key = content_key(
        "data", dataset_spec, recipe.preprocess.model_dump(mode="json"), *([given] if given else [])
    )
    lazy_key = content_key(key, "lazy")  # a lazy stage keeps labels only: its own directory
    dataset, split = None, None
    if not cache.done("data", key) and not cache.done("data", lazy_key):
        log("data: loading and preprocessing")
        dataset = load_dataset(recipe.dataset, recipe_dir)
        check_preprocess(
            dataset, recipe.preprocess.kind, getattr(recipe.preprocess, "sample_rate", None)
        )
        split, record = split_dataset(dataset, recipe.dataset.split)
        spec = recipe.preprocess
        if not given:
            spec = fit_normalization(spec, [dataset.samples[i] for i in split.train])
        lazy = inputs_nbytes(spec, len(dataset)) > recipe.preload_gib * 2**30
        arrays: dict[str, np.ndarray] = {}
        for part in PARTS:
            idx = split.part(part)
            if not lazy:
                arrays[f"x_{part}"] = preprocess_batch(spec, [dataset.samples[i] for i in idx])
            arrays[f"y_{part}"] = dataset.labels[idx].astype(np.int64)
        windows, window_labels = _stream_windows(recipe, dataset, split.train)
        if windows:
            log(f"data: {len(windows)} training windows across pairs of training clips")
            if not lazy:
                extra = preprocess_batch(spec, windows)
                arrays["x_train"] = np.concatenate([arrays["x_train"], extra])
            arrays["y_train"] = np.concatenate([arrays["y_train"], window_labels])
        meta = {
            "classes": dataset.classes,
            "preprocess": spec.model_dump(mode="json"),
            "split": {"dataset": dataset_spec, "record": record.model_dump(mode="json")},
        }

        def write(d: Path) -> None:
            save_arrays(arrays, str(d / "arrays.safetensors"))
            (d / "meta.json").write_text(json.dumps(meta))

        # Not `cache.stage`: which of the two keys is written is known only once loaded.
        cache.store("data", lazy_key if lazy else key, write)
    lazy = not cache.done("data", key)  # the preprocessed arrays, when cached, are faster
    d = cache.path("data", lazy_key if lazy else key)
    arrays = load_arrays(str(d / "arrays.safetensors"))
    meta = json.loads((d / "meta.json").read_text())
    x: dict[str, Inputs] = {}
    if lazy:  # the samples themselves are not cached: read again, the recorded split applied
        if dataset is None or split is None:
            dataset = load_dataset(recipe.dataset, recipe_dir)
            split = apply_split(SplitRecord.model_validate(meta["split"]["record"]), dataset)
        spec = parse_preprocess(meta["preprocess"])
        for part in PARTS:
            x[part] = LazyInputs(spec, [dataset.samples[i] for i in split.part(part)])
        windows, _ = _stream_windows(recipe, dataset, split.train)
        x["train"] = LazyInputs(spec, [*(dataset.samples[i] for i in split.train), *windows])
    else:
        x = {p: arrays[f"x_{p}"] for p in PARTS}
    sizes = {p: len(arrays[f"y_{p}"]) for p in PARTS}
    how = "preprocessed per batch (above preload_gib)" if lazy else "in memory"
    log(f"data: {len(meta['classes'])} classes, split {sizes}, {how}")
    return Prepared(
        key=key,
        x=x,
        y={p: arrays[f"y_{p}"] for p in PARTS},
        classes=meta["classes"],
        preprocess=meta["preprocess"],
        split=meta["split"],
    )


def _load_checkpoint(model: VisionTransformer, recipe: Recipe, recipe_dir: Path) -> None:
    from safetensors.torch import load_file

    if recipe.model.checkpoint is None:
        return
    path = recipe_dir / recipe.model.checkpoint
    try:
        state = load_file(str(path))
    except (OSError, ValueError) as exc:
        raise BuildError(f"model.checkpoint: cannot read {path}: {exc}") from None
    head = {k for k in state if k.startswith("head.")}
    own = model.state_dict()
    if any(state[k].shape != own[k].shape for k in head if k in own):
        state = {k: v for k, v in state.items() if k not in head}  # a new head for our classes
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith("head.")]:
        raise BuildError(
            f"model.checkpoint: {path} does not fit {recipe.model.arch}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


@dataclass
class Trained:
    """What a training stage computes; saved as `<name>.safetensors`, metrics, logits."""

    model: VisionTransformer
    config: ModelConfig
    metrics: dict[str, Any]
    logits: dict[str, np.ndarray] = field(default_factory=dict)


def _save_trained(trained: Trained, d: Path, name: str) -> None:
    save_model(trained.model, trained.config, d / f"{name}.safetensors")
    if trained.logits:
        save_arrays(dict(trained.logits), str(d / "logits.safetensors"))
    (d / "metrics.json").write_text(json.dumps(trained.metrics))


def _load_trained(ws: Workspace, d: Path, name: str) -> Trained:
    """The stage's model on the workspace's device, its metrics and logits (if any)."""
    model, config = load_model(d / f"{name}.safetensors")
    model.to(ws.device)
    logits = d / "logits.safetensors"
    metrics = json.loads((d / "metrics.json").read_text())
    return Trained(model, config, metrics, load_arrays(str(logits)) if logits.is_file() else {})


def _stage_base(ws: Workspace, data: Prepared) -> Base:
    recipe, shape, log = ws.recipe, ws.shape, ws.log
    key = content_key(
        "base",
        data.key,
        recipe.model.model_dump(mode="json"),
        recipe.train.model_dump(),
        recipe.seed,
    )
    config = ModelConfig(shape, len(data.classes))

    def compute() -> Trained:
        log(f"base: training {shape.spec()} for {recipe.train.epochs} epochs")
        seed_everything(recipe.seed)
        if recipe.model.pretrained:
            import timm

            model = cast(
                VisionTransformer,
                timm.create_model(
                    recipe.model.arch, pretrained=True, num_classes=len(data.classes)
                ),
            )
        else:
            model = build_vit(config)
            _load_checkpoint(model, recipe, ws.recipe_dir)
        model.to(ws.device)
        start = time.perf_counter()
        losses = fit(
            model,
            data.x["train"],
            {"label": data.y["train"]},
            cross_entropy_loss(recipe.train.label_smoothing),
            recipe.train,
            recipe.seed,
            "base",
        )
        logits = {p: predict(model, data.x[p]) for p in PARTS}
        metrics = {
            "train_seconds": time.perf_counter() - start,
            "losses": losses,
            **{f"{p}_acc": accuracy(logits[p], data.y[p]) for p in PARTS},
        }
        return Trained(model, config, metrics, logits)

    def load(d: Path) -> Base:
        t = _load_trained(ws, d, "base")
        return Base(key, t.model, t.logits, t.metrics)

    base = ws.cache.stage("base", key, compute, partial(_save_trained, name="base"), load)
    log(f"base: test accuracy {base.metrics['test_acc']:.4f}")
    return base


def _groups(
    base: Base, data: Prepared, method: Grouping, n: int
) -> tuple[list[list[int]], dict[str, Any]]:
    c = len(data.classes)
    if n > c:
        raise BuildError(f"plan: {n} sub-models for {c} classes; at most one per class")
    return class_groups(softmax(base.logits["val"]), data.y["val"], c, n, method)


# How a pruned sub-model is ranked, chosen once from the recipe (random-init prunes nothing).
IMPORTANCE: dict[PruneMethod, Importance] = {
    PruneMethod.kl: KLImportance(),
    PruneMethod.magnitude: MagnitudeImportance(),
}


def _stage_submodel(ws: Workspace, base: Base, data: Prepared, sp: SubmodelPlan) -> Sub:
    recipe, shape, log = ws.recipe, ws.shape, ws.log
    key = content_key(
        "sub",
        base.key,
        sp.classes,
        sp.heads,
        sp.outputs,
        recipe.pruning.model_dump(mode="json"),
        recipe.distill.model_dump(),
        recipe.seed,
    )

    def compute() -> Trained:
        start = time.perf_counter()
        seed = recipe.seed + zlib.crc32(sp.id.encode()) % 1_000_000
        config = ModelConfig(shape.with_heads(sp.heads), sp.outputs)
        importance = IMPORTANCE.get(recipe.pruning.method)
        if importance is None:  # random-init: a fresh model of the planned shape
            seed_everything(seed)
            model = build_vit(config).to(ws.device)
        else:
            rng = np.random.default_rng(seed)
            mine = np.flatnonzero(np.isin(data.y["train"], sp.classes))
            take = rng.choice(mine, size=min(len(mine), recipe.pruning.samples), replace=False)
            result = prune_for_group(
                base.model,
                shape,
                sp.heads,
                torch.from_numpy(data.x["train"][np.sort(take)]),
                sp.classes,
                importance,
                num_outputs=sp.outputs,
            )
            model = result.model
        prune_s = time.perf_counter() - start
        log(f"{sp.id}: {sp.heads} heads, distilling for {recipe.distill.epochs} epochs")
        distill(
            model,
            data.x["train"],
            data.y["train"],
            base.logits["train"],
            sp.classes,
            sp.outputs,
            recipe.distill,
            seed,
            sp.id,
        )
        metrics = {"prune_seconds": prune_s, "train_seconds": time.perf_counter() - start - prune_s}
        return Trained(model, config, metrics)

    def load(d: Path) -> Sub:
        t = _load_trained(ws, d, "sub")
        return Sub(key, sp, t.model, t.config, t.metrics)

    return ws.cache.stage("sub", key, compute, partial(_save_trained, name="sub"), load)


def _features(sub: Sub, x: Inputs) -> np.ndarray:
    """The sub-model's CLS pre-logit features, (N, D)."""
    return predict(
        sub.model, x, forward=lambda m, inp: features_and_logits(cast(VisionTransformer, m), inp)[0]
    )


def _stage_fusion(
    recipe: Recipe, subs: Sequence[Sub], data: Prepared, cache: StageCache, log: Log
) -> TorchFusionMLP:
    from edvit.config.recipe import TrainSpec
    from modelgen.fusion_model import load_fusion, save_fusion

    key = content_key("fusion", [s.key for s in subs], recipe.fusion.model_dump(), recipe.seed)

    def compute() -> TorchFusionMLP:
        log("fusion: training the MLP on the sub-models' features")
        feats = np.concatenate([_features(s, data.x["train"]) for s in subs], axis=1)
        dims = [s.config.shape.embed_dim for s in subs]
        seed_everything(recipe.seed)
        module = TorchFusionMLP(
            [s.plan.id for s in subs],
            dims,
            len(data.classes),
            hidden=hidden_size(sum(dims), recipe.fusion.hidden_ratio),
            feature_dropout=recipe.fusion.feature_dropout,
        )
        spec = TrainSpec(
            epochs=recipe.fusion.epochs,
            batch_size=recipe.fusion.batch_size,
            lr=recipe.fusion.lr,
            weight_decay=recipe.fusion.weight_decay,
            label_smoothing=0.0,
            augment=False,
        )
        fit(
            module,
            feats,
            {"label": data.y["train"]},
            cross_entropy_loss(0.0),
            spec,
            recipe.seed,
            "fusion",
        )
        return module

    file = "fusion.safetensors"
    return cache.stage(
        "fusion",
        key,
        compute,
        lambda m, d: save_fusion(m, d / file),
        lambda d: load_fusion(d / file),
    )


def _events(
    ws: Workspace, subs: Sequence[Sub], fusion: TorchFusionMLP, data: Prepared
) -> EventsEntry:
    """The manifest's event rules, thresholds calibrated on the fused model's validation
    predictions: per clip (one batched forward pass), or on a stream of the validation
    clips (`events.stream`, modelgen.stream_events); none without validation data."""
    recipe, log = ws.recipe, ws.log
    spec = recipe.events
    rules = {"patience": spec.patience, "refractory_s": spec.refractory_s}
    if not len(data.y["val"]):
        log("events: no validation data, thresholds not calibrated")
        return EventsEntry(**rules)

    def fused(x: Inputs) -> np.ndarray:
        feats = np.concatenate([_features(s, x) for s in subs], axis=1)
        return softmax(predict(fusion, feats))

    front_end = parse_preprocess(data.preprocess)
    if spec.stream is not None and isinstance(front_end, AudioPreprocess):
        from edvit.config.dataset import SplitRecord
        from modelgen.stream_events import stream_events

        record = SplitRecord.model_validate(data.split["record"])
        return stream_events(recipe, ws.recipe_dir, record, data.classes, front_end, fused, log)
    probs = fused(data.x["val"])
    thresholds = calibrate_thresholds(
        probs,
        data.y["val"],
        data.classes,
        recipe.dataset.background_classes,
        spec.target_far,
        spec.min_threshold,
    )
    log(f"events: thresholds for a false-accept rate of {spec.target_far:g}: {thresholds}")
    return EventsEntry(thresholds=thresholds, target_far=spec.target_far, **rules)


def prepare(ws: Workspace) -> tuple[Prepared, Base]:
    """The data and the trained base model (cached)."""
    data = _stage_data(ws)
    background = ws.recipe.dataset.background_classes
    if unknown := [c for c in background if c not in data.classes]:
        raise BuildError(
            f"dataset.background_classes: {unknown} are not classes of the dataset "
            f"(has {data.classes})"
        )
    return data, _stage_base(ws, data)


def train_submodel(ws: Workspace, base: Base, data: Prepared, sp: SubmodelPlan) -> Sub:
    """One sub-model: pruned from the base for its group, then distilled (cached)."""
    return _stage_submodel(ws, base, data, sp)


def build(
    recipe: Recipe,
    recipe_dir: Path,
    out: Path,
    log: Log = print,
    cache_dir: Path | None = None,
    sign: Ed25519PrivateKey | None = None,
) -> Manifest:
    """Run every stage of `recipe` and write the bundle to `out` (cache: `out/.cache`), signed
    with `sign` if given (else a signature left from an earlier build is removed)."""
    from modelgen.evaluate import evaluate_bundle
    from modelgen.report import write_report

    started = time.perf_counter()
    out = out.resolve()  # export names files under it; a relative root would be joined twice
    ws = open_workspace(recipe, recipe_dir, cache_dir or out / ".cache", log)
    devices = None
    if recipe.plan.devices is not None:
        devices = load_config(recipe_dir / recipe.plan.devices, DevicesFile).devices
    n = recipe.plan.num_submodels or len(devices or [])

    data, base = prepare(ws)
    groups, grouping = _groups(base, data, recipe.grouping, n)
    plan = make_plan(
        ws.shape,
        len(data.classes),
        groups,
        devices=devices,
        budget_mib=recipe.plan.budget_mib,
        rate_hz=recipe.plan.rate_hz,
        solver=recipe.plan.solver.value,
    )
    log(f"plan: heads {[s.heads for s in plan.submodels]}, total {plan.total_mib:.2f} MiB")
    subs = [train_submodel(ws, base, data, sp) for sp in plan.submodels]
    fusion = _stage_fusion(recipe, subs, data, ws.cache, log)
    events = _events(ws, subs, fusion, data)

    log("export: ONNX + safetensors, parity-checked")
    manifest = _export(recipe, ws.shape, data, base, plan, subs, fusion, out)
    manifest = manifest.model_copy(
        update={"background_classes": list(recipe.dataset.background_classes), "events": events}
    )
    metrics = evaluate_bundle(out)
    metrics["grouping"] = grouping
    metrics["build_seconds"] = time.perf_counter() - started
    metrics["base_train"] = {k: v for k, v in base.metrics.items() if k != "losses"}
    metrics["submodel_train"] = {s.plan.id: s.metrics for s in subs}
    manifest = write_manifest(out, manifest.model_copy(update={"metrics": metrics}))
    write_report(out)
    if sign is not None:
        log(f"signed by key id {sign_bundle(out, sign).key_id} → {out / SIGNATURE}")
    elif remove_signature(out):
        log(f"removed {out / SIGNATURE}: it signed an earlier build (sign with --sign KEY)")
    log(
        f"done: base {metrics['base_acc']:.4f}, fused {metrics['fused_acc']:.4f}, "
        f"in {metrics['build_seconds']:.0f} s → {out}"
    )
    return manifest


def build_file(
    recipe_path: Path,
    out: Path,
    log: Log = print,
    sign: Ed25519PrivateKey | None = None,
    cache_dir: Path | None = None,
) -> Manifest:
    """`modelgen build RECIPE --out DIR [--sign KEY] [--cache DIR]`: relative paths in the
    recipe are from its folder."""
    recipe = load_config(recipe_path, Recipe)
    try:
        return build(recipe, recipe_path.resolve().parent, out, log, cache_dir, sign)
    except BuildError as exc:
        raise BuildError(f"{recipe_path}: {exc}") from None


def _int8(spec: ExportSpec, data: Prepared, out: Path, entry: SubmodelEntry) -> SubmodelEntry:
    """The entry's ONNX quantized (calibrated on training samples when static), its feature
    error measured on test samples."""
    from modelgen.quantize import quantize_submodel

    batch = 16
    calibration = [
        np.asarray(data.x["train"][i : i + batch])
        for i in range(0, min(spec.calibration_samples, len(data.x["train"])), batch)
    ]
    check = [np.asarray(data.x["test"][i : i + batch]) for i in range(0, 64, batch)]
    check = [c for c in check if len(c)]
    onnx_ref, error = quantize_submodel(out, entry.onnx, spec, calibration, check)
    return entry.model_copy(
        update={"onnx": onnx_ref, "precision": Precision.int8, "feature_error": error}
    )


def _export(
    recipe: Recipe,
    shape: ViTShape,
    data: Prepared,
    base: Base,
    plan: Plan,
    subs: Sequence[Sub],
    fusion: TorchFusionMLP,
    out: Path,
) -> Manifest:
    shutil.rmtree(out / "submodels", ignore_errors=True)
    sample = torch.from_numpy(data.x["test"][:4])
    for model in (base.model, *(s.model for s in subs)):
        model.cpu()  # ONNX export and its parity check with ONNX Runtime run on the CPU
    entries = []
    for s in subs:
        onnx_ref, st_ref = export_submodel(s.model, s.config, out, s.plan.id, sample)
        entry = submodel_entry(s.plan, s.config, onnx_ref, st_ref)
        if recipe.export.precision is Precision.int8:
            entry = _int8(recipe.export, data, out, entry)
        entries.append(entry)
    base_config = ModelConfig(shape, len(data.classes))
    base_onnx, base_st = export_submodel(base.model, base_config, out, "base", sample)
    fusion_ref = export_fusion(fusion, out)
    return write_manifest(
        out,
        Manifest(
            schema_version=SCHEMA_VERSION,
            created=dt.datetime.now(dt.UTC),
            classes=data.classes,
            groups={s.plan.id: list(s.plan.classes) for s in subs},
            base=base_entry(
                recipe.model.arch,
                shape,
                len(data.classes),
                test_accuracy=base.metrics["test_acc"],
                onnx=base_onnx,
                safetensors=base_st,
            ),
            preprocess=data.preprocess,
            submodels=entries,
            fusion=fusion_entry(fusion, fusion_ref),
            plan=plan,
            split=data.split,
            metrics={},
        ),
    )
