"""Random-weight bundles for the benchmarks: what a node and the aggregator load, at any shape.

Latency, size, memory and start-up time do not depend on the weights, so a benchmark need not
train: Alg. 1's plan for N contiguous groups (no budget: ⌈h / N⌉ heads each), every sub-model
exported by `modelgen.export` (its parity check included), a fusion MLP over their features,
and a manifest written and verified by `write_manifest` like any bundle `modelgen build` makes.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import torch

from edvit.bundle import Manifest, write_manifest
from edvit.config.dataset import DigitsDataset, SplitRecord, SplitSection
from edvit.preprocess import AudioPreprocess, ImagePreprocess
from modelgen.export import base_entry, export_fusion, export_submodel, fusion_entry, submodel_entry
from modelgen.fusion_model import TorchFusionMLP
from modelgen.grouping import contiguous_groups
from modelgen.model import ModelConfig, build_vit
from modelgen.planning import make_plan
from modelgen.vit_shape import ViTShape


def random_bundle(
    out: Path,
    shape: ViTShape,
    n: int,
    classes: int,
    preprocess: ImagePreprocess | AudioPreprocess,
    arch: str | None = None,
) -> Path:
    """A bundle at `out` of the N sub-models Alg. 1 cuts from `shape` for `classes` classes
    (random weights, seed 0) and the fusion MLP over them; `arch` names the base (its spec
    string by default)."""
    torch.manual_seed(0)
    plan = make_plan(shape, classes, contiguous_groups(classes, n))
    entries = []
    for sp in plan.submodels:
        config = ModelConfig(shape.with_heads(sp.heads), sp.outputs)
        onnx, st = export_submodel(build_vit(config).eval(), config, out, sp.id)
        entries.append(submodel_entry(sp, config, onnx, st))
    fusion = TorchFusionMLP([e.id for e in entries], [e.feature_dim for e in entries], classes)
    fusion.eval()
    write_manifest(
        out,
        Manifest(
            schema_version=1,
            created=dt.datetime.now(dt.UTC),
            classes=[str(c) for c in range(classes)],
            groups={s.id: s.classes for s in plan.submodels},
            base=base_entry(arch or shape.spec(), shape, classes),
            preprocess=preprocess,
            submodels=entries,
            fusion=fusion_entry(fusion, export_fusion(fusion, out)),
            plan=plan,
            split=SplitSection(  # synthetic: no dataset behind it
                dataset=DigitsDataset(kind="digits"),
                record=SplitRecord(
                    seed=0, val_fraction=0, test_fraction=0, train=[], val=[], test=[]
                ),
            ),
            metrics={},
        ),
    )
    return out
