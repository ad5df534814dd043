"""SubmodelRunner on a real bundle made by the installed `modelgen build` (tiny digits ViT):
two sub-models hosted at once, outputs equal to plain ONNX Runtime sessions."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge_node.runner import RunnerError, SubmodelRunner, latency_summary
from edvit.bundle import Bundle, load_bundle
from edvit.preprocess import preprocess
from edvit.stats import Window

from tiny import build_bundle, tiny_digits

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    recipe = tiny_digits(
        "runner-digits",
        dataset={
            "kind": "digits",
            "max_per_class": 20,
            "split": {"val_fraction": 0.2, "test_fraction": 0.25, "seed": 0},
        },
        train={"epochs": 1, "batch_size": 32, "lr": 0.003},
        plan={"num_submodels": 2},
        grouping="contiguous",
        pruning={"method": "kl", "samples": 16},
        distill={"epochs": 1, "batch_size": 32, "lr": 0.003},
        fusion={"epochs": 1},
    )
    return build_bundle(tmp_path_factory.mktemp("runner"), recipe, timeout=300)


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Bundle:
    return load_bundle(bundle_dir)


def digit_images(n: int) -> list[np.ndarray]:
    """Real handwritten digits as 8x8 HWx1 uint8, what an image source would deliver."""
    from sklearn.datasets import load_digits

    images = load_digits().images[:n]
    return [np.round(img * 255 / 16).astype(np.uint8)[:, :, None] for img in images]


def plain_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_two_submodels_match_plain_onnx_runtime(bundle: Bundle) -> None:
    spec = bundle.manifest.preprocess
    runner = SubmodelRunner(bundle, ["g0", "g1"])
    assert runner.input_shape == (1, 8, 8)
    runner.warm_up()
    assert runner.latency.count == 0  # warm-up runs are not statistics
    direct = {s: plain_session(bundle.path(bundle.submodel(s).onnx)) for s in ("g0", "g1")}
    images = digit_images(12)
    for image in images:
        x = preprocess(spec, image)
        got = runner.run(x)
        assert list(got) == ["g0", "g1"]
        for sub_id, feats in got.items():
            entry = bundle.submodel(sub_id)
            assert feats.dtype == np.float32
            assert feats.shape == (entry.feature_dim,)
            want, _ = direct[sub_id].run(None, {"input": x[None]})
            np.testing.assert_allclose(feats, want[0], rtol=0, atol=1e-6)
        assert not np.allclose(got["g0"], got["g1"])  # two different models really ran
    stats = runner.stats()
    assert stats["count"] == len(images)
    assert 0 < stats["p50_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    for sub_id in ("g0", "g1"):
        sub = stats["per_submodel"][sub_id]
        assert sub["count"] == len(images)
        assert sub["p50_ms"] > 0


def test_threads_and_single_submodel(bundle: Bundle) -> None:
    x = preprocess(bundle.manifest.preprocess, digit_images(1)[0])
    one = SubmodelRunner(bundle, ["g1"]).run(x)
    two_threads = SubmodelRunner(bundle, ["g1", "g0"], threads=2).run(x)
    assert list(two_threads) == ["g1", "g0"]
    np.testing.assert_allclose(one["g1"], two_threads["g1"], atol=1e-6)


def test_bad_inputs_are_refused(bundle: Bundle) -> None:
    runner = SubmodelRunner(bundle, ["g0"])
    with pytest.raises(ValueError, match=r"input shape \(3, 8, 8\) != the sub-models' \(1, 8, 8\)"):
        runner.run(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"input shape \(1, 1, 8, 8\)"):
        runner.run(np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match="float32 numpy array, got float64"):
        runner.run(np.zeros((1, 8, 8)))
    assert runner.latency.count == 0


def test_bad_hosting_requests_name_the_problem(bundle: Bundle) -> None:
    with pytest.raises(RunnerError, match="no sub-model 'g7'"):
        SubmodelRunner(bundle, ["g0", "g7"])
    with pytest.raises(RunnerError, match="listed twice"):
        SubmodelRunner(bundle, ["g0", "g0"])
    with pytest.raises(RunnerError, match="at least one"):
        SubmodelRunner(bundle, [])
    with pytest.raises(RunnerError, match="not the string"):
        SubmodelRunner(bundle, "g0")


def test_onnx_changed_after_load_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy, ignore=shutil.ignore_patterns(".cache"))
    loaded = load_bundle(copy)  # verified intact here …
    onnx = copy / "submodels" / "g1.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))  # … and swapped before the node builds its sessions
    with pytest.raises(RunnerError, match=r"g1\.onnx: sha256 mismatch for sub-model g1"):
        SubmodelRunner(loaded, ["g0", "g1"])


def test_latency_stats_window_is_bounded() -> None:
    stats = Window(size=10)
    assert latency_summary(stats) == {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    for ms in range(1, 101):
        stats.add(ms / 1000)
    summary = latency_summary(stats)
    assert summary["count"] == 100
    assert summary["max_ms"] == 100.0
    assert summary["p50_ms"] == pytest.approx(95.5)  # only the last 10 calls: 91…100
