"""`modelgen build` end to end on tiny recipes, through the installed console scripts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tiny import tiny_digits, tiny_keywords_data

BIN = Path(sys.executable).parent

TINY = tiny_digits(
    "tiny-digits",
    dataset={**tiny_digits("")["dataset"], "background_classes": ["0"]},
    train={"epochs": 3, "batch_size": 32, "lr": 0.003},
    plan={"num_submodels": 2},
    distill={"epochs": 2, "batch_size": 32, "lr": 0.003},
    fusion={"epochs": 3},
)


def run(
    *args: str, check: bool = True, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=600, cwd=cwd
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("build")
    recipe = write_recipe(root / "tiny.yaml", TINY)
    out = root / "bundle"
    proc = run("modelgen", "build", str(recipe), "--out", str(out))
    return recipe, out, proc.stderr


def test_build_writes_a_bundle_that_validates(bundle: tuple[Path, Path, str]) -> None:
    _, out, log = bundle
    assert "data: loading" in log
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["id"] for s in manifest["submodels"]] == ["g0", "g1"]
    # the groups partition the classes, balanced
    classes = sorted(c for g in manifest["groups"].values() for c in g)
    assert classes == list(range(10))
    assert sorted(len(g) for g in manifest["groups"].values()) == [5, 5]
    # heads follow the plan: ceil(4 / 2) = 2 heads of dim 8
    assert all(s["heads"] == 2 and s["feature_dim"] == 16 for s in manifest["submodels"])
    assert manifest["plan"]["submodels"][0]["heads"] == 2
    # "0" is background: in a group like any class, never an event
    assert manifest["background_classes"] == ["0"]
    events = manifest["events"]
    assert sorted(events["thresholds"]) == [str(d) for d in range(1, 10)]
    assert all(0.5 <= t <= 1 for t in events["thresholds"].values())  # the floor
    assert (events["target_far"], events["patience"], events["refractory_s"]) == (0.01, 1, 1.0)
    for name in ("report.md", "accuracy.png", "submodels.png"):
        assert (out / name).is_file()
    ok = run("edvit", "validate", str(out))
    assert "every sha256 verified" in ok.stdout


def test_eval_matches_the_manifest_and_drop_degrades(bundle: tuple[Path, Path, str]) -> None:
    _, out, _ = bundle
    manifest = json.loads((out / "manifest.json").read_text())
    result = json.loads(run("modelgen", "eval", str(out), "--json").stdout)
    for key in ("base_acc", "fused_acc", "avg_softmax_acc"):
        assert 0.0 <= result[key] <= 1.0
        assert result[key] == manifest["metrics"][key]
    assert result["samples"] == len(manifest["split"]["record"]["test"])
    assert [s["id"] for s in result["per_submodel"]] == ["g0", "g1"]
    assert all(s["latency_ms"] > 0 for s in result["per_submodel"])
    dropped = json.loads(run("modelgen", "eval", str(out), "--drop", "g1", "--json").stdout)
    assert dropped["dropped"] == ["g1"]
    assert "kept_classes_fused_acc" in dropped
    bad = run("modelgen", "eval", str(out), "--drop", "g7", check=False)
    assert bad.returncode == 2
    assert "g7" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_rebuild_reuses_every_stage(bundle: tuple[Path, Path, str]) -> None:
    recipe, out, _ = bundle
    # a relative --out, from the bundle's parent folder
    log = run("modelgen", "build", str(recipe), "--out", out.name, cwd=out.parent).stderr
    assert "data: loading" not in log
    assert "base: training" not in log
    assert "distilling" not in log
    assert "fusion: training" not in log


def test_tampered_bundle_is_refused(bundle: tuple[Path, Path, str], tmp_path: Path) -> None:
    import shutil

    _, out, _ = bundle
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(".cache"))
    onnx = copy / "submodels" / "g0.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    proc = run("modelgen", "eval", str(copy), "--json", check=False)
    assert proc.returncode == 2
    assert "g0.onnx" in proc.stderr
    assert "sha256 mismatch" in proc.stderr


def test_recipe_errors_name_the_key(tmp_path: Path) -> None:
    bad = dict(TINY, train={**TINY["train"], "epochz": 3})
    proc = run("modelgen", "build", str(write_recipe(tmp_path / "r.yaml", bad)), "--out",
               str(tmp_path / "o"), check=False)  # fmt: skip
    assert proc.returncode == 2
    assert "train.epochz: unknown key" in proc.stderr
    mismatch = dict(TINY, preprocess={**TINY["preprocess"], "height": 16, "width": 16})
    proc = run("modelgen", "build", str(write_recipe(tmp_path / "m.yaml", mismatch)), "--out",
               str(tmp_path / "o"), check=False)  # fmt: skip
    assert proc.returncode == 2
    assert "model.arch" in proc.stderr
    assert "Traceback" not in proc.stderr
    for dataset, message in (
        ({"classes": ["1", "2"]}, "background_classes: Value error, ['0'] are not in classes"),
        ({"background_classes": ["ten"]}, "dataset.background_classes: ['ten'] are not classes"),
    ):
        wrong = dict(TINY, dataset={**TINY["dataset"], **dataset})
        proc = run("modelgen", "build", str(write_recipe(tmp_path / "b.yaml", wrong)), "--out",
                   str(tmp_path / "o"), check=False)  # fmt: skip
        assert proc.returncode == 2
        assert message in proc.stderr
        assert "Traceback" not in proc.stderr
    # a stream is heard by a microphone: stream calibration of an image recipe is an error
    streamed = dict(TINY, events={"stream": {"hours": 1.0}})
    proc = run("modelgen", "build", str(write_recipe(tmp_path / "s.yaml", streamed)), "--out",
               str(tmp_path / "o"), check=False)  # fmt: skip
    assert proc.returncode == 2
    assert "events.stream: stream calibration needs an audio preprocess" in proc.stderr
    windows = dict(TINY, **tiny_keywords_data(), events={})
    windows["dataset"]["stream_windows"] = 10
    proc = run("modelgen", "build", str(write_recipe(tmp_path / "w.yaml", windows)), "--out",
               str(tmp_path / "o"), check=False)  # fmt: skip
    assert proc.returncode == 2
    assert "dataset.stream_windows: name dataset.background_classes" in proc.stderr


def test_preprocessing_per_batch_builds_the_same_bundle(
    bundle: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """`preload_gib: 0` streams every split through preprocessing: same models, same bytes."""
    _, out, eager_log = bundle
    assert "in memory" in eager_log
    recipe = write_recipe(tmp_path / "lazy.yaml", dict(TINY, preload_gib=0))
    lazy = tmp_path / "lazy"
    log = run("modelgen", "build", str(recipe), "--out", str(lazy)).stderr
    assert "preprocessed per batch (above preload_gib)" in log

    def hashes(bundle_dir: Path) -> dict[str, str]:
        m = json.loads((bundle_dir / "manifest.json").read_text())
        files = [m["fusion"]["file"], m["base"]["safetensors"]]
        files += [s["safetensors"] for s in m["submodels"]]
        return {f["path"]: f["sha256"] for f in files}

    assert hashes(lazy) == hashes(out)
    # a rebuild finds the streamed data stage in the cache, and reads the samples again
    again = run("modelgen", "build", str(recipe), "--out", str(lazy)).stderr
    assert "data: loading" not in again
    assert "preprocessed per batch" in again


def test_normalisation_is_measured_unless_the_recipe_gives_it(tmp_path: Path) -> None:
    from edvit.config import load_config
    from edvit.config.recipe import Recipe
    from modelgen.build import _stage_data, open_workspace

    def stats(recipe: dict[str, Any]) -> tuple[list[float], list[float]]:
        path = write_recipe(tmp_path / "r.yaml", recipe)
        ws = open_workspace(load_config(path, Recipe), tmp_path, tmp_path / "cache", lambda _: None)
        spec = _stage_data(ws).preprocess
        return spec["mean"], spec["std"]

    mean, std = stats(TINY)
    assert 0.1 < mean[0] < 0.5  # digits: mostly dark 8x8 images
    assert 0.2 < std[0] < 0.5
    given = dict(TINY, preprocess={**TINY["preprocess"], "mean": [0.5], "std": [0.25]})
    assert stats(given) == ([0.5], [0.25])


def test_a_stage_computes_once_and_an_interrupted_one_is_not_done(tmp_path: Path) -> None:
    from modelgen.cache import StageCache, content_key

    cache = StageCache(tmp_path)
    key = content_key("demo", {"x": 1})
    calls: list[int] = []

    def compute() -> int:
        calls.append(1)
        return 41

    def save(value: int, d: Path) -> None:
        (d / "v").write_text(str(value))

    def load(d: Path) -> int:
        return int((d / "v").read_text()) + 1

    def fail() -> int:
        raise KeyboardInterrupt

    assert cache.stage("demo", key, compute, save, load) == 42  # loaded from what was saved
    assert cache.stage("demo", key, compute, save, load) == 42
    assert calls == [1]
    other = content_key("demo", {"x": 2})
    with pytest.raises(KeyboardInterrupt):
        cache.stage("demo", other, fail, save, load)
    assert not cache.done("demo", other)

    def half(d: Path) -> None:
        (d / "v").write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.store("demo", other, half)  # interrupted while writing: not done either
    assert not cache.done("demo", other)
    assert cache.stage("demo", other, compute, save, load) == 42
    assert calls == [1, 1]


def test_device_is_checked(tmp_path: Path) -> None:
    import torch

    from modelgen.build import BuildError, resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(BuildError, match="device: cuda:1 requested"):
            resolve_device("cuda:1")
        cuda = write_recipe(tmp_path / "c.yaml", dict(TINY, device="cuda"))
        proc = run("modelgen", "build", str(cuda), "--out", str(tmp_path / "o"), check=False)
        assert proc.returncode == 2
        assert "device: cuda requested" in proc.stderr
        assert "Traceback" not in proc.stderr
    gpu = write_recipe(tmp_path / "g.yaml", dict(TINY, device="gpu"))
    proc = run("modelgen", "build", str(gpu), "--out", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2
    assert "device: String should match pattern" in proc.stderr


@pytest.mark.slow
def test_audio_build_on_generated_keywords(tmp_path: Path) -> None:
    words = tmp_path / "words"
    run("modelgen", "dataset", "keywords", "--out", str(words), "--per-word", "12")
    recipe = dict(
        TINY,
        name="tiny-keywords",
        **tiny_keywords_data(),
        model={"arch": "vit:img=16x32,patch=4,chans=1,embed=32,depth=1,heads=4"},
    )
    out = tmp_path / "bundle"
    run("modelgen", "build", str(write_recipe(tmp_path / "kw.yaml", recipe)), "--out", str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == ["yes", "no", "up", "down"]
    assert manifest["preprocess"]["kind"] == "audio"
    result = json.loads(run("modelgen", "eval", str(out), "--json").stdout)
    assert result["fused_acc"] == manifest["metrics"]["fused_acc"]
    other = tmp_path / "other"
    run("modelgen", "dataset", "keywords", "--out", str(other), "--per-word", "3", "--seed", "1")
    fresh = json.loads(run("modelgen", "eval", str(out), "--data", str(other), "--json").stdout)
    assert fresh["samples"] == 4 * 3
    assert 0.0 <= fresh["fused_acc"] <= 1.0
    # replay files: float WAV, read back bit-exact
    from edvit import media

    run("modelgen", "samples", str(out), "--out", str(tmp_path / "s"), "--data", str(other))
    labels = json.loads((tmp_path / "s" / "labels.json").read_text())
    assert len(labels["items"]) == 12
    item = labels["items"][0]
    replayed = media.read_wav(tmp_path / "s" / item["file"], 16000)
    original = media.read_wav(other / item["source"], 16000)
    np.testing.assert_array_equal(replayed, original)
    # the clips as one long recording, streamed by a node: a missing file is a config error
    site = tmp_path / "site.yaml"
    site.write_text(
        "site: kw\nnodes:\n  mic: {source: {kind: recording, path: long.wav}, "
        f"submodels: {[s['id'] for s in manifest['submodels']]}}}\n"
    )
    node = ("edge-node", "run", "--bundle", str(out), "--node", "mic", "--config", str(site))
    missing = run(*node, "--validate-config", check=False)
    assert missing.returncode == 2
    assert f"nodes.mic.source.path: {tmp_path / 'long.wav'}: no such sound file" in missing.stderr
    clips = [media.read_wav(tmp_path / "s" / i["file"], 16000) for i in labels["items"]]
    media.write_wav(tmp_path / "long.wav", np.concatenate(clips), 16000)
    assert run(*node, "--validate-config").returncode == 0


def test_samples_replay_the_test_split_losslessly(
    bundle: tuple[Path, Path, str], tmp_path: Path
) -> None:
    from edvit import media

    _, out, _ = bundle
    run("modelgen", "samples", str(out), "--out", str(tmp_path / "s"))
    labels = json.loads((tmp_path / "s" / "labels.json").read_text())
    result = json.loads(run("modelgen", "eval", str(out), "--predictions", "--json").stdout)
    preds = result["predictions"]
    assert [i["source"] for i in labels["items"]] == [p["source"] for p in preds]
    assert [i["label"] for i in labels["items"]] == [p["label"] for p in preds]
    assert sorted(p.name for p in (tmp_path / "s").glob("*.png")) == [
        i["file"] for i in labels["items"]
    ]
    # the file holds the digit itself: 8×8, one channel, values 0..255 scaled from 0..16
    first = media.read_image(tmp_path / "s" / labels["items"][0]["file"])
    assert first.shape == (8, 8, 1)
    assert first.dtype == np.uint8
    assert sum(p["fused"] == p["label"] for p in preds) / len(preds) == result["fused_acc"]
