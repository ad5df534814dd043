"""Stage 4: class-group importance (KL / Fisher / magnitude / random) and structured pruning.

A tiny ViT (8×8 one-channel images, embed 64, 2 blocks, 4 heads of 16) is trained for a few
seconds on synthetic data (a fixed random template per class plus noise), so that rankings
have structure to find. No pretrained weights, no network.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from modelgen.importance import (
    COMPONENTS,
    Importance,
    KLImportance,
    MagnitudeImportance,
    RandomImportance,
    ViT,
    collapse_logits,
    order_by_importance,
    rank_components,
)
from modelgen.model import ModelConfig, build_vit
from modelgen.pruning import Kept, prune_for_group, slice_vit
from modelgen.sizing import count_params
from modelgen.vit_shape import parse_arch

SHAPE = parse_arch("vit:img=8,patch=2,chans=1,embed=64,depth=2,heads=4")
NUM_CLASSES = 10
GROUP = [7, 2, 5]  # deliberately not sorted: the head keeps the group's order
KL = KLImportance()
IMPORTANCES = {"kl": KL, "magnitude": MagnitudeImportance(), "random": RandomImportance(seed=0)}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    templates = torch.randn(NUM_CLASSES, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    return templates[y] + 0.8 * torch.randn(n, 1, 8, 8, generator=gen), y  # (n, 1, 8, 8), (n,)


@pytest.fixture(scope="module")
def trained() -> VisionTransformer:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_vit(ModelConfig(SHAPE, NUM_CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for step in range(80):
        x, y = _data(64, 100 + step)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def x_group() -> torch.Tensor:
    x, y = _data(400, 1)
    return x[torch.isin(y, torch.tensor(GROUP))][:64]  # (64, 1, 8, 8): the group's samples


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = torch.stack([a.argsort().argsort(), b.argsort().argsort()]).float()
    return float(torch.corrcoef(ranks)[0, 1])


def _kl(p_logits: torch.Tensor, q_logp: torch.Tensor) -> float:
    logp = torch.log_softmax(p_logits, dim=1)
    return float((logp.exp() * (logp - q_logp)).sum(1).mean())


# ─── the contract of slicing ────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("importance", IMPORTANCES.values(), ids=IMPORTANCES.keys())
def test_pruning_nothing_reproduces_the_base(trained: ViT, importance: Importance) -> None:
    x = torch.randn(16, 1, 8, 8)
    everything = list(range(NUM_CLASSES))
    result = prune_for_group(
        trained, SHAPE, SHAPE.num_heads, x, everything, importance, num_outputs=NUM_CLASSES
    )
    with torch.no_grad():
        assert (result.model(x) - trained(x)).abs().max() <= 1e-5
    assert result.kept == Kept.everything(trained)


def test_slicing_every_class_in_another_order_permutes_the_logits(trained: ViT) -> None:
    x = torch.randn(8, 1, 8, 8)
    order = [3, 9, 0, 1, 2, 4, 5, 6, 7, 8]
    sub = slice_vit(trained, SHAPE, Kept.everything(trained), order)
    with torch.no_grad():
        assert (sub(x) - trained(x)[:, order]).abs().max() <= 1e-5


@pytest.mark.parametrize("heads_k", [1, 2, 3])
@pytest.mark.parametrize("with_others", [True, False])
def test_pruned_model_is_the_planned_standard_vit(
    trained: ViT, x_group: torch.Tensor, heads_k: int, with_others: bool
) -> None:
    outputs = len(GROUP) + int(with_others)
    result = prune_for_group(
        trained, SHAPE, heads_k, x_group, GROUP, MagnitudeImportance(), outputs
    )
    sub_shape = SHAPE.with_heads(heads_k)
    assert result.config == ModelConfig(sub_shape, outputs)
    assert sum(p.numel() for p in result.model.parameters()) == count_params(sub_shape, outputs)
    fresh = build_vit(result.config)  # same module type and keys: what export/load rebuild
    fresh.load_state_dict(result.model.state_dict())
    assert result.model(x_group[:4]).shape == (4, outputs)
    assert len(result.kept.channels) == sub_shape.embed_dim
    assert all(len(h) == heads_k for h in result.kept.heads)
    assert all(len(n) == sub_shape.mlp_hidden for n in result.kept.neurons)


def test_group_logits_survive_pruning_and_kl_beats_the_baselines(
    trained: ViT, x_group: torch.Tensor
) -> None:
    """Sanity of an s = 3/4 and 1/2 cut, and the point of KL ranking: on the objective it
    ranks by (KL to the base's group distribution), it beats magnitude and random."""
    with torch.no_grad():
        base = trained(x_group)[:, GROUP]  # (B, |G|)
        for k in (3, 2):
            kl = {}
            for method, importance in IMPORTANCES.items():
                sub = prune_for_group(trained, SHAPE, k, x_group, GROUP, importance, len(GROUP))
                out = sub.model(x_group)  # (B, |G|)
                kl[method] = _kl(base, torch.log_softmax(out, dim=1))
                if method == "kl" and k == 3:
                    assert torch.corrcoef(torch.stack([out.flatten(), base.flatten()]))[0, 1] > 0.8
            assert kl["kl"] < kl["magnitude"]
            assert kl["kl"] < kl["random"]


def test_others_row_starts_at_the_gibbs_bound_of_the_others_logit(
    trained: ViT, x_group: torch.Tensor
) -> None:
    x = torch.randn(16, 1, 8, 8)
    result = prune_for_group(trained, SHAPE, SHAPE.num_heads, x_group, GROUP, KL)
    others = [c for c in range(NUM_CLASSES) if c not in GROUP]
    with torch.no_grad():
        out, base = result.model(x), trained(x)
        assert (out[:, :3] - base[:, GROUP]).abs().max() <= 1e-5  # nothing cut: exact
        assert (out[:, 3] <= torch.logsumexp(base[:, others], dim=1) + 1e-5).all()

        # Equal rows for the other classes: the bound is tight, "others" is exactly their LSE.
        same = copy.deepcopy(trained)
        same.head.weight[others] = same.head.weight[others[0]].clone()
        same.head.bias[others] = same.head.bias[others[0]].clone()
        sub = slice_vit(same, SHAPE, Kept.everything(same), GROUP, len(GROUP) + 1)
        lse = torch.logsumexp(same(x)[:, others], dim=1)
        assert (sub(x)[:, 3] - lse).abs().max() <= 1e-4


# ─── rankings ───────────────────────────────────────────────────────────────────────────────


def test_collapsed_distribution_sums_the_other_classes(trained: ViT) -> None:
    logits = trained(torch.randn(5, 1, 8, 8)).detach()
    probs = logits.softmax(1)
    others = [c for c in range(NUM_CLASSES) if c not in GROUP]
    want = torch.cat([probs[:, GROUP], probs[:, others].sum(1, keepdim=True)], dim=1)
    assert torch.allclose(collapse_logits(logits, GROUP).exp(), want, atol=1e-6)
    assert collapse_logits(logits, range(NUM_CLASSES)).shape == (5, NUM_CLASSES)  # no "others"


def test_head_kl_is_the_exact_ablation_and_finds_planted_heads(
    trained: ViT, x_group: torch.Tensor
) -> None:
    model = copy.deepcopy(trained)
    hd = SHAPE.head_dim
    with torch.no_grad():
        model.blocks[0].attn.proj.weight[:, 1 * hd : 2 * hd] *= 8.0  # block 0, head 1: loud
        model.blocks[1].attn.proj.weight[:, 2 * hd : 3 * hd] = 0.0  # block 1, head 2: silent
    scores = KLImportance(batch_size=20)(model, x_group, GROUP, "heads")  # (depth, h)
    order = order_by_importance(scores)
    assert int(order[0, 0]) == 1
    assert int(order[1, -1]) == 2
    assert float(scores[1, 2]) <= 1e-6

    # The batched suffix passes equal a plain full forward with one head zeroed.
    with torch.no_grad():
        ref = collapse_logits(model(x_group), GROUP)
        for layer, head in [(0, 0), (1, 3)]:
            keep = torch.ones(SHAPE.embed_dim)
            keep[head * hd : (head + 1) * hd] = 0.0
            handle = model.blocks[layer].attn.proj.register_forward_pre_hook(
                lambda _m, a, keep=keep: (a[0] * keep,)
            )
            q = collapse_logits(model(x_group), GROUP)
            handle.remove()
            exact = float((ref.exp() * (ref - q)).sum(1).mean())
            assert float(scores[layer, head]) == pytest.approx(exact, rel=1e-4, abs=1e-7)


def _zero_channel(model: ViT, c: int) -> None:
    """Every weight that reads or writes residual channel c set to 0."""
    with torch.no_grad():
        for t in (model.patch_embed.proj.weight, model.patch_embed.proj.bias):
            t[c] = 0.0
        model.cls_token[..., c] = 0.0
        model.pos_embed[..., c] = 0.0
        for blk in model.blocks:
            for ln in (blk.norm1, blk.norm2):
                ln.weight[c], ln.bias[c] = 0.0, 0.0
            blk.attn.qkv.weight[:, c] = 0.0
            blk.attn.proj.weight[c], blk.attn.proj.bias[c] = 0.0, 0.0
            blk.mlp.fc1.weight[:, c] = 0.0
            blk.mlp.fc2.weight[c], blk.mlp.fc2.bias[c] = 0.0, 0.0
        model.norm.weight[c], model.norm.bias[c] = 0.0, 0.0
        model.head.weight[:, c] = 0.0


def test_fisher_ranks_a_dead_channel_and_a_dead_neuron_last(
    trained: ViT, x_group: torch.Tensor
) -> None:
    model = copy.deepcopy(trained)
    _zero_channel(model, 17)
    with torch.no_grad():
        model.blocks[1].mlp.fc1.weight[100] = 0.0
        model.blocks[1].mlp.fc1.bias[100] = 0.0
        model.blocks[1].mlp.fc2.weight[:, 100] = 0.0
    ranking = rank_components(model, x_group, GROUP, KL)
    assert int(ranking.channels[-1]) == 17
    assert int(ranking.neurons[1, -1]) == 100
    assert float(KL(model, x_group, GROUP, "channels")[17]) == 0.0


def test_fisher_approximates_the_exact_ablation_kl(trained: ViT, x_group: torch.Tensor) -> None:
    """½·F_cc against the KL of actually zeroing each unit (same masks): the rank agreement
    is what pruning uses."""
    x = x_group[:32]
    hidden = SHAPE.mlp_hidden
    act = trained.blocks[0].mlp.act
    with torch.no_grad():
        ref = collapse_logits(trained(x), GROUP)
        exact = torch.zeros(hidden)
        for n in range(hidden):
            keep = torch.ones(hidden)
            keep[n] = 0.0
            handle = act.register_forward_hook(lambda _m, _i, out, keep=keep: out * keep)
            q = collapse_logits(trained(x), GROUP)
            handle.remove()
            exact[n] = (ref.exp() * (ref - q)).sum(1).mean()
    fisher = KL(trained, x, GROUP, "neurons")[0]
    assert _spearman(fisher, exact) > 0.95


def test_rankings_are_deterministic_and_batch_independent(
    trained: ViT, x_group: torch.Tensor
) -> None:
    pairs = [
        (KLImportance(batch_size=64), KLImportance(batch_size=7)),
        (MagnitudeImportance(), MagnitudeImportance()),
        (RandomImportance(seed=5), RandomImportance(seed=5)),
    ]
    for one, other in pairs:
        a = rank_components(trained, x_group, GROUP, one)
        b = rank_components(trained, x_group, GROUP, other)
        assert torch.equal(a.heads, b.heads)
        if not isinstance(one, KLImportance):  # Fisher sums in another order: see below
            assert torch.equal(a.channels, b.channels)
            assert torch.equal(a.neurons, b.neurons)
    c = rank_components(trained, x_group, GROUP, RandomImportance(seed=6))
    five = rank_components(trained, x_group, GROUP, RandomImportance(seed=5))
    assert not torch.equal(c.channels, five.channels)
    for component in COMPONENTS:
        s64 = KLImportance(batch_size=64)(trained, x_group, GROUP, component)
        s7 = KLImportance(batch_size=7)(trained, x_group, GROUP, component)
        assert torch.allclose(s64, s7, rtol=1e-4, atol=1e-9)


def test_ranking_leaves_the_model_as_it_was(trained: ViT, x_group: torch.Tensor) -> None:
    model = copy.deepcopy(trained).train()
    model.head.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    rank_components(model, x_group, GROUP, KL)
    prune_for_group(model, SHAPE, 2, x_group, GROUP, KL)
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    for module in model.modules():
        assert not module._forward_hooks
        assert not module._forward_pre_hooks


# ─── validation ─────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"heads_k": 0}, "heads_k"),
        ({"heads_k": 5}, "heads_k"),
        ({"group_classes": [1, 1]}, "repeats"),
        ({"group_classes": [3, 10]}, "outside"),
        ({"group_classes": []}, "at least one"),
        ({"num_outputs": 5}, "num_outputs"),
        ({"group_classes": list(range(10)), "num_outputs": 11}, "every class"),
        ({"x_group": torch.zeros(0, 1, 8, 8)}, "non-empty"),
        ({"shape": parse_arch("vit:img=8,patch=2,chans=1,embed=64,depth=3,heads=4")}, "match"),
    ],
)
def test_bad_requests_raise_clear_errors(
    trained: ViT, x_group: torch.Tensor, kwargs: dict[str, object], match: str
) -> None:
    args: dict[str, object] = {
        "model": trained,
        "shape": SHAPE,
        "heads_k": 2,
        "x_group": x_group,
        "group_classes": GROUP,
        "importance": KL,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        prune_for_group(**args)  # type: ignore[arg-type]


def test_kl_importance_needs_a_positive_batch() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        KLImportance(batch_size=0)


def test_slice_refuses_uneven_blocks(trained: ViT) -> None:
    every = Kept.everything(trained)
    uneven = Kept(every.channels, ((0, 1), (0, 1, 2)), every.neurons)
    with pytest.raises(ValueError, match="same number"):
        slice_vit(trained, SHAPE, uneven)
    with pytest.raises(ValueError, match="multiple of the head dim"):
        slice_vit(trained, SHAPE, Kept(every.channels[:40], every.heads, every.neurons))
