"""Export parity: ONNX Runtime vs torch sub-models, numpy vs torch fusion (incl. missing nodes)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from edvit.bundle import sha256_file
from edvit.fusion import FusionError, NumpyFusionMLP, hidden_size
from modelgen.export import (
    ONNX_ATOL,
    OPSET,
    ExportError,
    export_fusion,
    export_submodel,
    verify_fusion,
    verify_onnx,
)
from modelgen.fusion_model import TorchFusionMLP, load_fusion, save_fusion
from modelgen.model import ModelConfig, build_vit, features_and_logits, load_model
from modelgen.vit_shape import parse_arch

TINY = "vit:img=8,patch=2,chans=1,embed=32,depth=1,heads=2"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _tiny(outputs: int = 4, seed: int = 0) -> tuple[VisionTransformer, ModelConfig]:
    torch.manual_seed(seed)
    config = ModelConfig(parse_arch(TINY), outputs)
    model = build_vit(config).eval()
    with torch.no_grad():  # timm zero-inits the head: give the logits something to compare
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model, config


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[VisionTransformer, Path, Path]:
    torch.set_num_threads(1)
    model, config = _tiny()
    out = tmp_path_factory.mktemp("bundle")
    onnx_ref, st_ref = export_submodel(model, config, out, "g0")
    assert onnx_ref.path == "submodels/g0.onnx"
    assert st_ref.path == "submodels/g0.safetensors"
    assert onnx_ref.sha256 == sha256_file(out / onnx_ref.path)
    assert onnx_ref.bytes == (out / onnx_ref.path).stat().st_size
    return model, out / onnx_ref.path, out / st_ref.path


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_matches_torch(exported: tuple[VisionTransformer, Path, Path], batch: int) -> None:
    model, onnx_path, _ = exported
    x = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(batch))
    diff = verify_onnx(model, onnx_path, x)
    assert diff < ONNX_ATOL


def test_onnx_graph_contract(exported: tuple[VisionTransformer, Path, Path]) -> None:
    _, onnx_path, _ = exported
    graph = onnx.load(str(onnx_path))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert OPSET >= 17
    assert [i.name for i in graph.graph.input] == ["input"]
    assert [o.name for o in graph.graph.output] == ["features", "logits"]
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param  # symbolic batch
    assert [d.dim_value for d in dims[1:]] == [1, 8, 8]


def test_safetensors_roundtrip(exported: tuple[VisionTransformer, Path, Path]) -> None:
    model, _, st_path = exported
    loaded, config = load_model(st_path)
    assert config.num_outputs == 4
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        for a, b in zip(features_and_logits(model, x), features_and_logits(loaded, x), strict=True):
            assert torch.equal(a, b)


def test_verify_onnx_catches_a_different_model(
    exported: tuple[VisionTransformer, Path, Path],
) -> None:
    _, onnx_path, _ = exported
    other, _ = _tiny(seed=1)
    with pytest.raises(ExportError, match="differs from torch"):
        verify_onnx(other, onnx_path, torch.randn(2, 1, 8, 8))


def test_export_restores_training_mode(tmp_path: Path) -> None:
    model, config = _tiny()
    model.train()
    export_submodel(model, config, tmp_path, "g1")
    assert model.training


# ---- fusion ---------------------------------------------------------------------------------

ORDER = ["g0", "g1", "g2"]
DIMS = [16, 32, 16]


def _fusion(seed: int = 0, dropout: float = 0.0) -> TorchFusionMLP:
    torch.manual_seed(seed)
    module = TorchFusionMLP(ORDER, DIMS, num_classes=7, feature_dropout=dropout)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return module.eval()


def _features(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {s: torch.randn(batch, d, generator=g) for s, d in zip(ORDER, DIMS, strict=True)}


def test_fusion_shape_follows_the_paper() -> None:
    module = _fusion()
    assert module.in_dim == 64
    assert module.hidden == hidden_size(64) == 32  # λ = 0.5
    assert tuple(module.fc1.weight.shape) == (32, 64)
    assert tuple(module.fc2.weight.shape) == (7, 32)


def test_numpy_fusion_equals_torch_with_and_without_missing(tmp_path: Path) -> None:
    module = _fusion()
    path = tmp_path / "fusion.safetensors"
    save_fusion(module, path)
    mlp = NumpyFusionMLP.load(path)
    feats = _features(6)
    subsets = [
        c for r in range(1, len(ORDER) + 1) for c in itertools.combinations(ORDER, r)
    ]  # every non-empty set of present sub-models
    for present in subsets:
        case = {s: feats[s] for s in present}
        with torch.no_grad():
            want = module.forward_features(case).numpy()
        got = mlp.forward({s: v.numpy() for s, v in case.items()})
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=f"present={present}")
        probs = mlp.probabilities({s: v.numpy() for s, v in case.items()})
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(
            probs, torch.softmax(torch.from_numpy(want), dim=1).numpy(), atol=1e-6
        )


def test_missing_equals_explicit_zeros(tmp_path: Path) -> None:
    module = _fusion()
    save_fusion(module, tmp_path / "f.safetensors")
    mlp = NumpyFusionMLP.load(tmp_path / "f.safetensors")
    feats = {s: v.numpy() for s, v in _features(3).items()}
    zeroed = dict(feats, g1=np.zeros_like(feats["g1"]))
    np.testing.assert_array_equal(
        mlp.forward({"g0": feats["g0"], "g2": feats["g2"]}), mlp.forward(zeroed)
    )
    np.testing.assert_array_equal(mlp.forward(dict(feats, g1=None)), mlp.forward(zeroed))


def test_numpy_fusion_is_batch_invariant(tmp_path: Path) -> None:
    """The aggregator fuses one tick at a time, eval in batches: same bits either way."""
    module = _fusion()
    save_fusion(module, tmp_path / "f.safetensors")
    mlp = NumpyFusionMLP.load(tmp_path / "f.safetensors")
    feats = {s: v.numpy() for s, v in _features(9).items()}
    batch = mlp.forward(feats)
    for i in range(9):
        one = mlp.forward({s: v[i] for s, v in feats.items()})  # 1-D = one sample
        np.testing.assert_array_equal(one[0], batch[i])
    fp16 = {s: v.astype(np.float16) for s, v in feats.items()}  # the wire dtype is accepted
    assert mlp.forward(fp16).dtype == np.float32


def test_feature_dropout_zeroes_whole_blocks_without_rescaling() -> None:
    module = _fusion(dropout=0.5).train()
    x = torch.ones(400, module.in_dim)
    out = module.drop_blocks(x, torch.Generator().manual_seed(0))
    starts = np.cumsum([0, *DIMS])
    kept = []
    for b in range(len(ORDER)):
        block = out[:, starts[b] : starts[b + 1]]
        row_min, row_max = block.min(dim=1).values, block.max(dim=1).values
        assert torch.equal(row_min, row_max)  # a block is all kept or all zero
        assert set(row_min.tolist()) <= {0.0, 1.0}  # kept values are not rescaled
        kept.append(row_min)
    kept_t = torch.stack(kept, dim=1)
    assert (kept_t.sum(dim=1) >= 1).all()  # never every block dropped
    assert 0.35 < 1 - kept_t.mean().item() < 0.55  # ≈ p, a bit less: one block is always kept
    module.eval()
    with torch.no_grad():
        assert torch.equal(module(x), module.fc2(module.act(module.fc1(x))))


def test_fusion_load_checks_the_manifest(tmp_path: Path) -> None:
    from edvit.bundle import FusionEntry, file_ref

    module = _fusion()
    ref = export_fusion(module, tmp_path)
    entry = FusionEntry(file=ref, order=ORDER, feature_dims=DIMS, in_dim=64, hidden=32, out_dim=7)
    assert NumpyFusionMLP.load(tmp_path / ref.path, entry).out_dim == 7
    wrong = entry.model_copy(update={"order": ["g1", "g0", "g2"]})
    with pytest.raises(FusionError, match=r"order .* manifest \(fusion\.order\)"):
        NumpyFusionMLP.load(tmp_path / ref.path, wrong)
    wrong = entry.model_copy(update={"out_dim": 8})
    with pytest.raises(FusionError, match=r"fusion\.safetensors: out_dim"):
        NumpyFusionMLP.load(tmp_path / ref.path, wrong)
    assert file_ref(tmp_path, ref.path) == ref


def test_fusion_load_refuses_foreign_files(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    from edvit.fusion import fusion_metadata

    plain = tmp_path / "plain.safetensors"
    save_file({"fc1.weight": np.zeros((2, 2), np.float32)}, str(plain))
    with pytest.raises(FusionError, match=r"plain\.safetensors: no edvit\.fusion metadata"):
        NumpyFusionMLP.load(plain)
    renamed = tmp_path / "renamed.safetensors"
    tensors = {
        "fc1.w": np.zeros((2, 4), np.float32),
        "fc1.bias": np.zeros(2, np.float32),
        "fc2.weight": np.zeros((3, 2), np.float32),
        "fc2.bias": np.zeros(3, np.float32),
    }
    save_file(tensors, str(renamed), metadata=fusion_metadata(["a"], [4], 2, 3))
    with pytest.raises(FusionError, match=r"tensors \['fc1.bias'"):
        NumpyFusionMLP.load(renamed)
    tensors["fc1.weight"] = tensors.pop("fc1.w")
    tensors["fc2.bias"] = np.zeros(5, np.float32)
    save_file(tensors, str(renamed), metadata=fusion_metadata(["a"], [4], 2, 3))
    with pytest.raises(FusionError, match=r"fc2.weight: shape \(3, 2\), expected \(5, 2\)"):
        NumpyFusionMLP.load(renamed)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x01" * 40)
    with pytest.raises(FusionError, match=r"garbage\.safetensors: cannot read"):
        NumpyFusionMLP.load(garbage)


def test_numpy_fusion_rejects_bad_features(tmp_path: Path) -> None:
    save_fusion(_fusion(), tmp_path / "f.safetensors")
    mlp = NumpyFusionMLP.load(tmp_path / "f.safetensors")
    with pytest.raises(FusionError, match="unknown sub-models"):
        mlp.forward({"g9": np.zeros((1, 16), np.float32)})
    with pytest.raises(FusionError, match=r"g1: features of shape \(1, 16\), expected \(B, 32\)"):
        mlp.forward({"g1": np.zeros((1, 16), np.float32)})
    with pytest.raises(FusionError, match="nothing to fuse"):
        mlp.forward({})
    with pytest.raises(FusionError, match="batch 2 differs"):
        mlp.forward({"g0": np.zeros((1, 16), np.float32), "g2": np.zeros((2, 16), np.float32)})


def test_export_fusion_verifies_and_torch_reload(tmp_path: Path) -> None:
    module = _fusion()
    ref = export_fusion(module, tmp_path)
    assert ref.path == "fusion.safetensors"
    back = load_fusion(tmp_path / ref.path)
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(back(x), module(x))
    with pytest.raises(ExportError, match="numpy fusion differs"):
        verify_fusion(_fusion(seed=1), tmp_path / ref.path)
