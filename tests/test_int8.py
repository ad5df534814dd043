"""int8 bundles: `export.precision: int8` quantizes the sub-models the nodes run, records it
in the manifest, holds the feature error to its budget, and evaluates as deployed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml

from edvit.bundle import Precision, load_bundle
from edvit.config.recipe import ExportSpec, Quantization
from modelgen.quantize import QuantizationError, feature_error, quantize_onnx, verify_quantized

from tiny import tiny_digits

BIN = Path(sys.executable).parent
RECIPE = tiny_digits(
    "tiny-int8",
    train={"epochs": 8, "batch_size": 32, "lr": 0.005},
    plan={"num_submodels": 2},
    distill={"epochs": 4, "batch_size": 32, "lr": 0.005},
)


def build(root: Path, name: str, export: dict[str, Any] | None, check: bool = True) -> Any:
    """`modelgen build` into `root/name`, every trained stage shared through `root/cache`."""
    recipe = RECIPE if export is None else {**RECIPE, "export": export}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = subprocess.run(
        [str(BIN / "modelgen"), "build", str(path), "--out", str(root / name),
         "--cache", str(root / "cache")],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("int8")
    logs = {"fp32": build(root, "fp32", None).stderr}
    for mode in Quantization:
        logs[mode.value] = build(
            root, mode.value, {"precision": "int8", "quantization": mode.value}
        ).stderr
    return root, logs


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_int8_reuses_the_trained_models(bundles: tuple[Path, dict[str, str]]) -> None:
    root, logs = bundles
    assert "distilling" in logs["fp32"]
    for mode in Quantization:
        assert "base: training" not in logs[mode.value]
        assert "distilling" not in logs[mode.value]
        assert "fusion: training" not in logs[mode.value]
        fp32, int8 = load_bundle(root / "fp32").manifest, load_bundle(root / mode.value).manifest
        # the torch weights are the very same; only what the nodes run changed
        for a, b in zip(fp32.submodels, int8.submodels, strict=True):
            assert a.safetensors.sha256 == b.safetensors.sha256
            assert a.onnx.sha256 != b.onnx.sha256


@pytest.mark.parametrize(
    ("mode", "op"),
    [(Quantization.dynamic, "MatMulInteger"), (Quantization.static, "QuantizeLinear")],
)
def test_the_manifest_records_int8_and_its_error(
    bundles: tuple[Path, dict[str, str]], mode: Quantization, op: str
) -> None:
    root, _ = bundles
    bundle = load_bundle(root / mode.value)  # hashes verified
    fp32 = load_bundle(root / "fp32").manifest
    assert all(s.precision is Precision.fp32 and s.feature_error is None for s in fp32.submodels)
    budget = ExportSpec().feature_error_budget
    for sub, ref in zip(bundle.manifest.submodels, fp32.submodels, strict=True):
        assert sub.precision is Precision.int8
        assert sub.feature_error is not None
        assert 0 < sub.feature_error <= budget
        assert op in _ops(bundle.path(sub.onnx))
        assert op not in _ops(root / "fp32" / ref.onnx.path)
    assert bundle.manifest.base.onnx is not None
    assert "MatMulInteger" not in _ops(bundle.path(bundle.manifest.base.onnx))  # base stays fp32
    assert "int8" in (root / mode.value / "report.md").read_text()


def test_int8_is_evaluated_as_deployed(bundles: tuple[Path, dict[str, str]]) -> None:
    root, _ = bundles
    results = {}
    for name in ("fp32", *Quantization):
        proc = subprocess.run(
            [str(BIN / "modelgen"), "eval", str(root / name), "--json"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        results[name] = json.loads(proc.stdout)
    fp32 = results["fp32"]
    for mode in Quantization:
        got = results[mode]
        subs = got["per_submodel"]
        assert [s["precision"] for s in subs] == ["int8", "int8"]
        if mode is Quantization.dynamic:  # static QDQ on a tiny graph: scales can outweigh
            assert all(
                s["onnx_mib"] < r["onnx_mib"]
                for s, r in zip(subs, fp32["per_submodel"], strict=True)
            )
        assert got["base_acc"] == fp32["base_acc"]  # the base is shipped fp32 in both
        # tiny models (10 classes, ~100 test samples): int8 answers nearly as fp32 does
        assert abs(got["fused_acc"] - fp32["fused_acc"]) <= 0.05


def test_a_feature_error_over_budget_fails_the_build(
    bundles: tuple[Path, dict[str, str]],
) -> None:
    root, _ = bundles
    proc = build(root, "strict", {"precision": "int8", "feature_error_budget": 1e-9}, check=False)
    assert proc.returncode == 2
    assert "g0.onnx" in proc.stderr
    assert "export.feature_error_budget" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_quantize_and_verify_directly(bundles: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    root, _ = bundles
    bundle = load_bundle(root / "fp32")
    fp32 = bundle.path(bundle.manifest.submodels[0].onnx)
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((4, 1, 8, 8)).astype(np.float32) for _ in range(2)]
    assert feature_error(fp32, fp32, batches) == 0.0
    int8 = quantize_onnx(fp32, tmp_path / "q.onnx", Quantization.dynamic)
    error = verify_quantized(fp32, int8, batches, budget=1.0, name=fp32)
    assert error > 0
    with pytest.raises(QuantizationError, match=r"g0\.onnx.*relative RMS"):
        verify_quantized(fp32, int8, batches, budget=error / 2, name=fp32)
    with pytest.raises(ValueError, match="calibration"):
        quantize_onnx(fp32, tmp_path / "s.onnx", Quantization.static)
