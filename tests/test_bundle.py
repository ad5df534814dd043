"""A tiny real bundle (two ViT sub-models + fusion), loaded back, and refused when tampered with."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from edvit.bundle import (
    DIR_MODE,
    FILE_MODE,
    MANIFEST,
    SCHEMA_VERSION,
    Bundle,
    BundleError,
    EventsEntry,
    Manifest,
    canonical_json,
    file_ref,
    load_bundle,
    write_manifest,
)
from edvit.fusion import NumpyFusionMLP
from edvit.onnx import ort_session
from modelgen.export import (
    base_entry,
    export_fusion,
    export_submodel,
    fusion_entry,
    submodel_entry,
)
from modelgen.fusion_model import TorchFusionMLP
from modelgen.model import ModelConfig, build_vit, features_and_logits
from modelgen.planning.plan import make_plan
from modelgen.vit_shape import parse_arch

from blocker import run_blocked

BASE = "vit:img=8,patch=2,chans=1,embed=32,depth=1,heads=2"
CLASSES = ["zero", "one", "two", "three", "four"]
GROUPS = [[0, 1], [2, 3, 4]]


@dataclass
class Built:
    root: Path
    models: dict[str, VisionTransformer]
    fusion: TorchFusionMLP


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Build the bundle the way `modelgen build` will: plan, export, fusion, manifest; under
    a strict umask, which must not make any file unreadable to the services."""
    torch.set_num_threads(1)
    umask = os.umask(0o077)
    try:
        return _build(tmp_path_factory)
    finally:
        os.umask(umask)


def _build(tmp_path_factory: pytest.TempPathFactory) -> Built:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("built") / "bundle"
    root.mkdir()
    base = parse_arch(BASE)
    plan = make_plan(base, len(CLASSES), GROUPS)
    subs, models = [], {}
    for sub_plan, heads in zip(plan.submodels, [1, 2], strict=True):
        config = ModelConfig(base.with_heads(heads), sub_plan.outputs)
        model = build_vit(config).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        onnx_ref, st_ref = export_submodel(model, config, root, sub_plan.id)
        subs.append(submodel_entry(sub_plan, config, onnx_ref, st_ref))
        models[sub_plan.id] = model
    base_config = ModelConfig(base, len(CLASSES))
    base_onnx, base_st = export_submodel(build_vit(base_config).eval(), base_config, root, "base")
    fusion = TorchFusionMLP(
        [s.id for s in subs], [s.feature_dim for s in subs], len(CLASSES)
    ).eval()
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        created=datetime.now(UTC),
        classes=CLASSES,
        groups={s.id: s.classes for s in subs},
        base=base_entry(BASE, base, len(CLASSES), 0.5, onnx=base_onnx, safetensors=base_st),
        preprocess={"kind": "image", "height": 8, "width": 8, "channels": 1},
        submodels=subs,
        fusion=fusion_entry(fusion, export_fusion(fusion, root)),
        plan=plan,
        split={
            "dataset": {"kind": "digits"},
            "record": {
                "seed": 0,
                "val_fraction": 0.0,
                "test_fraction": 0.5,
                "train": ["a"],
                "val": [],
                "test": ["b", "c"],
            },
        },
        metrics={"fused_acc": 0.5},
    )
    written = write_manifest(root, manifest)
    assert written.digest is not None
    return Built(root, models, fusion)


def test_load_roundtrip(built: Built) -> None:
    bundle = load_bundle(built.root)
    m = bundle.manifest
    assert m.classes == CLASSES
    assert m.groups == {"g0": [0, 1], "g1": [2, 3, 4]}
    assert [(s.id, s.heads, s.feature_dim, s.outputs) for s in m.submodels] == [
        ("g0", 1, 16, 3),
        ("g1", 2, 32, 4),
    ]
    assert m.fusion.order == ["g0", "g1"]
    assert (m.fusion.in_dim, m.fusion.hidden, m.fusion.out_dim) == (48, 24, 5)
    assert m.base.spec.startswith("vit:img=8,patch=2,chans=1,embed=32")
    g1 = bundle.submodel("g1")
    assert bundle.path(g1.onnx) == built.root / "submodels" / "g1.onnx"
    assert bundle.model_hash("g1") == g1.onnx.sha256[:16]
    assert bundle.model_hash("g0") != bundle.model_hash("g1")
    with pytest.raises(KeyError, match="no sub-model 'g7'"):
        bundle.model_hash("g7")
    assert m.base.onnx is not None
    assert bundle.path(m.base.onnx).is_file()
    assert load_bundle(built.root / MANIFEST).manifest == m  # the manifest's path works too


def test_digest_is_sha256_of_canonical_json_without_digest(built: Built) -> None:
    raw = json.loads((built.root / MANIFEST).read_text())
    digest = raw.pop("digest")
    text = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert digest == hashlib.sha256(text.encode()).hexdigest()
    assert canonical_json(raw) == text.encode()


def test_bundle_runs_like_torch(built: Built) -> None:
    """ONNX features from the bundle fused in numpy equal the torch pipeline."""
    bundle = load_bundle(built.root)
    fusion = NumpyFusionMLP.from_bundle(bundle)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    onnx_feats, torch_feats = {}, {}
    for sub in bundle.manifest.submodels:
        sess = ort_session(bundle.path(sub.onnx))
        feat, _ = sess.run(sub.onnx_outputs, {sub.onnx_input: x.numpy()})
        onnx_feats[sub.id] = feat
        with torch.no_grad():
            torch_feats[sub.id] = features_and_logits(built.models[sub.id], x)[0]
    with torch.no_grad():
        want = built.fusion.forward_features(torch_feats).numpy()
    np.testing.assert_allclose(fusion.forward(onnx_feats), want, atol=1e-4)
    with torch.no_grad():  # one node down
        want_partial = built.fusion.forward_features({"g1": torch_feats["g1"]}).numpy()
    np.testing.assert_allclose(fusion.forward({"g1": onnx_feats["g1"]}), want_partial, atol=1e-4)


# ---- tampering ------------------------------------------------------------------------------


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_manifest(root: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads((root / MANIFEST).read_text())
    change(data)
    (root / MANIFEST).write_text(json.dumps(data, indent=2))


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value


def _swap_onnx_and_fix_its_hash(root: Path) -> None:
    """An attacker who updates the file's sha256 in the manifest still breaks the digest."""
    shutil.copy(root / "submodels/g0.onnx", root / "submodels/g1.onnx")
    ref = file_ref(root, "submodels/g1.onnx")
    _edit_manifest(root, lambda d: _set(d, "submodels.1.onnx", ref.model_dump()))


def _symlink_out(root: Path) -> None:
    outside = root.parent / "outside.onnx"
    shutil.copy(root / "submodels/g0.onnx", outside)
    (root / "submodels/g0.onnx").unlink()
    (root / "submodels/g0.onnx").symlink_to(outside)


TAMPER: dict[str, tuple[Callable[[Path], object], str]] = {
    "flip onnx byte": (
        lambda r: _flip(r / "submodels/g1.onnx"),
        r"submodels/g1\.onnx: sha256 mismatch \(expected [0-9a-f]{12}…, got [0-9a-f]{12}…\) "
        r"\(manifest\.json submodels\[1\]\.onnx\); the bundle was altered or is incomplete",
    ),
    "flip fusion byte": (
        lambda r: _flip(r / "fusion.safetensors"),
        r"fusion\.safetensors: sha256 mismatch .*fusion\.file",
    ),
    "flip base onnx byte": (
        lambda r: _flip(r / "submodels/base.onnx"),
        r"submodels/base\.onnx: sha256 mismatch .*\(manifest\.json base\.onnx\)",
    ),
    "truncate safetensors": (
        lambda r: (r / "submodels/g0.safetensors").write_bytes(
            (r / "submodels/g0.safetensors").read_bytes()[:-10]
        ),
        r"submodels/g0\.safetensors: size mismatch \(expected \d+ bytes, got \d+\)",
    ),
    "delete onnx": (
        lambda r: (r / "submodels/g1.onnx").unlink(),
        r"submodels/g1\.onnx: missing .*; the bundle is incomplete",
    ),
    "delete manifest": (
        lambda r: (r / MANIFEST).unlink(),
        r"manifest\.json: missing; .* is not a bundle",
    ),
    "edit class name": (
        lambda r: _edit_manifest(r, lambda d: _set(d, "classes.1", "uno")),
        r"manifest\.json: digest mismatch \(expected [0-9a-f]{12}…, got [0-9a-f]{12}…\); "
        r"the manifest was edited",
    ),
    "swap onnx, fix its hash": (
        _swap_onnx_and_fix_its_hash,
        r"manifest\.json: digest mismatch",
    ),
    "remove digest": (
        lambda r: _edit_manifest(r, lambda d: d.pop("digest")),
        r"manifest\.json: digest: missing",
    ),
    "dotdot path": (
        lambda r: _edit_manifest(r, lambda d: _set(d, "submodels.0.onnx.path", "../x")),
        r"manifest\.json: submodels\[0\]\.onnx\.path: .*'\.\./x' leaves the bundle",
    ),
    "absolute path": (
        lambda r: _edit_manifest(r, lambda d: _set(d, "fusion.file.path", "/etc/passwd")),
        r"manifest\.json: fusion\.file\.path: .*'/etc/passwd' is absolute",
    ),
    "symlink out of the bundle": (
        _symlink_out,
        r"manifest\.json: submodels\[0\]\.onnx\.path: 'submodels/g0\.onnx' resolves outside",
    ),
    "bad sha256": (
        lambda r: _edit_manifest(r, lambda d: _set(d, "submodels.1.onnx.sha256", "ab12")),
        r"manifest\.json: submodels\[1\]\.onnx\.sha256: expected 64 lowercase hex digits "
        r"\(a sha256\), got 'ab12'",
    ),
    "unknown key": (
        lambda r: _edit_manifest(r, lambda d: _set(d, "base.colour", "red")),
        r"manifest\.json: base\.colour: unknown key",
    ),
    "fusion order": (
        lambda r: _edit_manifest(r, lambda d: _set(d, "fusion.order", ["g0", "g3"])),
        r"manifest\.json: fusion\.order \['g0', 'g3'\] must list each sub-model id once",
    ),
    "corrupt json": (
        lambda r: (r / MANIFEST).write_bytes((r / MANIFEST).read_bytes()[:-40]),
        r"manifest\.json: not valid JSON",
    ),
    "NaN in json": (
        lambda r: (r / MANIFEST).write_text(
            (r / MANIFEST).read_text().replace('"fused_acc": 0.5', '"fused_acc": NaN')
        ),
        r"manifest\.json: not valid JSON: NaN",
    ),
}


@pytest.mark.parametrize("case", list(TAMPER))
def test_tampered_bundle_is_refused(built: Built, tmp_path: Path, case: str) -> None:
    root = tmp_path / "bundle"
    shutil.copytree(built.root, root)
    load_bundle(root)  # intact copy loads
    tamper, message = TAMPER[case]
    tamper(root)
    with pytest.raises(BundleError, match=message) as info:
        load_bundle(root)
    assert str(root) in str(info.value)  # names the file in this bundle


def test_all_bad_files_are_reported_at_once(built: Built, tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    shutil.copytree(built.root, root)
    (root / "submodels/g0.onnx").unlink()
    _flip(root / "fusion.safetensors")
    with pytest.raises(BundleError) as info:
        load_bundle(root)
    assert len(info.value.problems) == 2


def test_bundle_files_are_world_readable(built: Built) -> None:
    """The services run under another uid (DynamicUser=): every file 0644, folders 0755."""
    modes = {
        p.relative_to(built.root).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in [built.root, *built.root.rglob("*")]
    }
    assert modes.pop("submodels/g0.safetensors") == FILE_MODE  # safetensors writes 0600
    assert {m for p, m in modes.items() if (built.root / p).is_file()} == {FILE_MODE}
    assert {m for p, m in modes.items() if (built.root / p).is_dir()} == {DIR_MODE}


def test_files_checks_only_the_files_a_process_loads(built: Built, tmp_path: Path) -> None:
    """A node hashes its ONNX files, the aggregator the fusion file; the rest may differ."""
    root = tmp_path / "bundle"
    shutil.copytree(built.root, root)
    _flip(root / "submodels/base.safetensors")
    _flip(root / "submodels/g1.onnx")
    with pytest.raises(BundleError) as info:
        load_bundle(root)
    assert len(info.value.problems) == 2
    load_bundle(root, files=lambda m: m.onnx_files(["g0"]))
    load_bundle(root, files=lambda m: [m.fusion.file])
    with pytest.raises(BundleError, match=r"g1\.onnx: sha256 mismatch") as info:
        load_bundle(root, files=lambda m: m.onnx_files(["g0", "g1"]))
    assert len(info.value.problems) == 1
    _edit_manifest(root, lambda d: _set(d, "classes.0", "nil"))
    with pytest.raises(BundleError, match="digest mismatch"):  # the manifest is always checked
        load_bundle(root, files=lambda m: [m.fusion.file])


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)
def test_an_unreadable_file_is_a_clear_error(built: Built) -> None:
    """A bundle copied with a 0600 file, read by a service user: the file and the fix."""
    with tempfile.TemporaryDirectory() as tmp:  # pytest's tmp_path is not traversable by nobody
        top = Path(tmp)
        top.chmod(DIR_MODE)
        root = top / "bundle"
        shutil.copytree(built.root, root)
        (root / "submodels/g0.onnx").chmod(0o600)
        code = (
            "import sys\n"
            "from edvit.bundle import BundleError, load_bundle\n"
            "try:\n"
            "    load_bundle(sys.argv[1], files=lambda m: m.onnx_files(sys.argv[2:]))\n"
            "except BundleError as exc:\n"
            "    sys.exit(str(exc))\n"
        )

        def as_nobody(*subs: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*NOBODY, sys.executable, "-c", code, str(root), *subs],
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            )

        assert as_nobody("g1").returncode == 0, as_nobody("g1").stderr  # g0 is not loaded
        proc = as_nobody("g0", "g1")
        assert proc.returncode == 1
        assert f"{root / 'submodels/g0.onnx'}: cannot read: Permission denied" in proc.stderr
        assert f"chmod -R a+rX {root}" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_verify_false_skips_hashes_but_not_paths(built: Built, tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    shutil.copytree(built.root, root)
    _flip(root / "submodels/g1.onnx")
    assert isinstance(load_bundle(root, verify=False), Bundle)
    _edit_manifest(root, lambda d: _set(d, "submodels.0.onnx.path", "../x"))
    with pytest.raises(BundleError, match=r"leaves the bundle"):
        load_bundle(root, verify=False)


def test_write_manifest_refuses_a_bundle_that_would_not_load(built: Built, tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    shutil.copytree(built.root, root)
    before = (root / MANIFEST).read_bytes()
    manifest = load_bundle(root).manifest
    bad = manifest.model_copy(
        update={
            "fusion": manifest.fusion.model_copy(
                update={"file": file_ref(root, "submodels/g0.onnx")}
            )
        }
    )
    with pytest.raises(BundleError, match="two entries name the same file"):
        write_manifest(root, bad)  # model_copy does not validate; write_manifest does
    _flip(root / "fusion.safetensors")
    with pytest.raises(BundleError, match=r"fusion\.safetensors: sha256 mismatch"):
        write_manifest(root, manifest)
    assert (root / MANIFEST).read_bytes() == before  # nothing half-written


def test_file_ref_stays_inside(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "x").write_bytes(b"x")
    with pytest.raises(BundleError, match="not inside the bundle"):
        file_ref(tmp_path / "b", tmp_path / "x")
    with pytest.raises(BundleError, match="not inside the bundle"):
        file_ref(tmp_path / "b", "../x")
    (tmp_path / "b" / "y.bin").write_bytes(b"hello")
    ref = file_ref(tmp_path / "b", tmp_path / "b" / "y.bin")
    assert (ref.path, ref.bytes) == ("y.bin", 5)
    assert ref.sha256 == hashlib.sha256(b"hello").hexdigest()


def test_nodes_and_aggregator_need_no_torch(built: Built) -> None:
    """edvit.bundle and edvit.fusion load and fuse with torch, timm and modelgen unimportable."""
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from edvit.bundle import load_bundle\n"
        "from edvit.fusion import NumpyFusionMLP\n"
        "b = load_bundle(sys.argv[1])\n"
        "f = NumpyFusionMLP.from_bundle(b)\n"
        "print(f.probabilities({'g1': np.ones((2, 32), np.float32)}).shape)\n"
    )
    run = run_blocked(code, ("torch", "timm", "modelgen", "onnx"), str(built.root), timeout=60)
    assert run.proc.returncode == 0, run.proc.stderr
    assert run.proc.stdout.strip() == "(2, 5)"
    assert run.attempts == []


def test_background_classes_and_event_rules_round_trip(built: Built, tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    shutil.copytree(built.root, root)
    manifest = load_bundle(root).manifest
    assert manifest.background_classes == []  # a bundle written without them: defaults
    assert manifest.events == EventsEntry()
    rules = EventsEntry(thresholds={"one": 0.75, "two": 0.9}, patience=3, refractory_s=2.5)
    written = write_manifest(
        root,
        manifest.model_copy(update={"background_classes": ["zero"], "events": rules}),
    )
    again = load_bundle(root).manifest
    assert again == written
    assert again.background_classes == ["zero"]
    assert again.event_classes == ["one", "two", "three", "four"]
    assert again.events == rules
    good = (root / MANIFEST).read_text()
    assert json.loads(good)["events"]["thresholds"] == {"one": 0.75, "two": 0.9}
    for change, message in (
        (lambda d: _set(d, "background_classes", ["nine"]), r"\['nine'\] are not in classes"),
        (
            lambda d: _set(d, "events.thresholds", {"zero": 0.5}),
            r"events.thresholds: \['zero'\] are not classes that fire",
        ),
        (lambda d: _set(d, "events.thresholds", {"one": 1.5}), "less than or equal to 1"),
    ):
        (root / MANIFEST).write_text(good)
        _edit_manifest(root, change)
        with pytest.raises(BundleError, match=message):
            load_bundle(root, verify=False)
