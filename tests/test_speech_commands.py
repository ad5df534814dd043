"""The speech_commands loader on a tiny tree in Speech Commands v2's layout, made here with
real WAV files: classes and folding, the lists honoured, the fallback split, _silence_ cut
from disjoint stretches of noise, determinism, errors, the recipe and the build's data stage."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edvit import media
from edvit.config import load_config
from edvit.config.dataset import SpeechCommandsDataset
from edvit.config.recipe import Recipe
from modelgen.datasets import Dataset, DatasetError, apply_split, load_dataset, split_dataset
from modelgen.datasets.keywords import KEYWORDS, SILENCE, UNKNOWN

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "config" / "modelgen" / "speech-commands.yaml"
SR = 16000
OTHER = ("bed", "bird", "cat")  # folded into _unknown_
SPEAKERS = ("0a7c2a8d", "1b4c9b89", "2c1a9e1f", "3d9b0d8a")  # 2 train, 1 val, 1 test
VAL_SPEAKER, TEST_SPEAKER = SPEAKERS[2], SPEAKERS[3]
# _background_noise_: linear ramps, so a clip's first sample and slope give where in the
# recording it was cut and at which gain.
RAMPS = {"a_ramp": (12.0, 0.1, 0.9), "b_ramp": (15.0, -0.8, -0.2)}  # seconds, from, to
PART_INDEX = {"train": 0, "val": 1, "test": 2}


def make_tree(root: Path, lists: bool = True) -> Path:
    """Keywords: one clip of each speaker; other words: six (two speakers say them twice);
    clips of 1 s or 0.6 s (Speech Commands has some shorter ones)."""
    val, test = [], []
    for f, word in enumerate((*KEYWORDS, *OTHER)):
        (root / word).mkdir(parents=True)
        takes = [(s, 0) for s in SPEAKERS]
        if word in OTHER:
            takes += [(SPEAKERS[0], 1), (SPEAKERS[1], 1)]
        for k, (speaker, n) in enumerate(takes):
            seconds = 1.0 if k % 2 == 0 else 0.6
            t = np.arange(int(seconds * SR)) / SR
            name = f"{word}/{speaker}_nohash_{n}.wav"
            media.write_wav(root / name, 0.3 * np.sin(2 * np.pi * (200 + 50 * f) * t), SR)
            if speaker == VAL_SPEAKER:
                val.append(name)
            elif speaker == TEST_SPEAKER:
                test.append(name)
    noise = root / "_background_noise_"
    noise.mkdir()
    for stem, (seconds, lo, hi) in RAMPS.items():
        media.write_wav(noise / f"{stem}.wav", np.linspace(lo, hi, int(seconds * SR)), SR)
    (noise / "README.md").write_text("not a recording")
    if lists:
        (root / "validation_list.txt").write_text("\n".join(val) + "\n")
        (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "speech_commands_v0.02")


def spec(root: Path, **fields: Any) -> SpeechCommandsDataset:
    fields.setdefault("split", {"val_fraction": 0.1, "test_fraction": 0.1, "seed": 0})
    return SpeechCommandsDataset(root=root, **fields)


def parts(ds: Dataset) -> dict[str, str]:
    """Source → the part the dataset fixes for it."""
    assert ds.official_val is not None
    assert ds.official_test is not None
    part = ["train"] * len(ds)
    for i in ds.official_val:
        part[i] = "val"
    for i in ds.official_test:
        part[i] = "test"
    return dict(zip(ds.sources, part, strict=True))


def speaker(source: str) -> str:
    return source.split("/")[1].split("_nohash_")[0]


def listed(root: Path, name: str) -> set[str]:
    return set((root / name).read_text().split())


def test_twelve_classes_other_words_folded_and_the_lists_honoured(tree: Path) -> None:
    ds = load_dataset(spec(tree))
    assert ds.kind == "audio"
    assert ds.sample_rate == SR
    assert ds.classes == [*KEYWORDS, UNKNOWN, SILENCE]
    # per part: 2/1/1 clips of each keyword, so _unknown_ and _silence_ get 2/1/1 as well
    assert ds.counts() == {**dict.fromkeys(KEYWORDS, 4), UNKNOWN: 4, SILENCE: 4}
    of = parts(ds)
    val, test = listed(tree, "validation_list.txt"), listed(tree, "testing_list.txt")
    words = [s for s in ds.sources if not s.startswith(SILENCE)]
    for source in words:
        assert of[source] == ("val" if source in val else "test" if source in test else "train")
    # every keyword clip is there, in the part its list gives
    for word in KEYWORDS:
        assert {s for s in words if s.startswith(f"{word}/")} == {
            f"{word}/{s}_nohash_0.wav" for s in SPEAKERS
        }
    unknown = [s for i, s in enumerate(ds.sources) if ds.classes[ds.labels[i]] == UNKNOWN]
    assert {s.split("/")[0] for s in unknown} <= set(OTHER)
    assert sorted(of[s] for s in unknown) == ["test", "train", "train", "val"]
    # the lists keep speakers apart, and so does the loader
    by_part: dict[str, set[str]] = {"train": set(), "val": set(), "test": set()}
    for source in words:
        by_part[of[source]].add(speaker(source))
    assert by_part == {"train": set(SPEAKERS[:2]), "val": {VAL_SPEAKER}, "test": {TEST_SPEAKER}}
    # samples are the files: 1 s or 0.6 s of mono float32
    for sample, source in zip(ds.samples, ds.sources, strict=True):
        assert sample.dtype == np.float32
        assert sample.ndim == 1
        if not source.startswith(SILENCE):
            assert len(sample) == len(media.read_wav(tree / source, SR))
    assert {len(s) for s in ds.samples} == {SR, int(0.6 * SR)}


def test_the_build_split_is_the_fixed_one(tree: Path) -> None:
    s = spec(tree)
    ds = load_dataset(s)
    split, record = split_dataset(ds, s.split)
    assert record.official_val
    assert record.official_test
    of = parts(ds)
    for part in ("train", "val", "test"):
        assert sorted(getattr(record, part)) == sorted(k for k, v in of.items() if v == part)
    assert split.sizes() == {"train": 24, "val": 12, "test": 12}
    # what eval and a lazy build do: the recorded names applied to a fresh load
    again = apply_split(record, load_dataset(s))
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(again.part(part), split.part(part))


def _decode(clip: np.ndarray, stem: str) -> tuple[int, float]:
    """(start sample in the recording, gain in dB) of a clip cut from a ramp."""
    seconds, lo, hi = RAMPS[stem]
    slope = (hi - lo) / (int(seconds * SR) - 1)
    gain = float(clip[-1] - clip[0]) / (slope * (len(clip) - 1))
    start = (float(clip[0]) / gain - lo) / slope
    return round(start), 20 * np.log10(gain)


NAME = re.compile(r"^_silence_/(train|val|test)-(\d{5})-([a-z_]+)([+-]\d+)dB$")


@pytest.mark.parametrize("fractions", [(0.1, 0.1), (0.2, 0.3)])
def test_silence_is_cut_at_every_gain_from_disjoint_stretches(
    tree: Path, fractions: tuple[float, float]
) -> None:
    val_f, test_f = fractions
    gains = [0.0, -10.0, -20.0, -30.0, -60.0]
    split = {"val_fraction": val_f, "test_fraction": test_f, "seed": 3}
    ds = load_dataset(spec(tree, silence_share=5, silence_gains_db=gains, split=split))
    of = parts(ds)
    clips = [(s, x) for s, x in zip(ds.sources, ds.samples, strict=True) if s.startswith(SILENCE)]
    # five times one keyword's mean count (2/1/1) in each part
    assert sorted(of[s] for s, _ in clips) == ["test"] * 5 + ["train"] * 10 + ["val"] * 5
    cuts = {"train": (0.0, 1 - val_f - test_f), "val": (1 - val_f - test_f, 1 - test_f)}
    cuts["test"] = (1 - test_f, 1.0)
    seen: dict[str, set[tuple[str, float]]] = {"train": set(), "val": set(), "test": set()}
    for source, clip in clips:
        m = NAME.match(source)
        assert m is not None, source
        part, k, stem, gain = m.group(1), int(m.group(2)), m.group(3), float(m.group(4))
        assert of[source] == part
        assert len(clip) == SR
        assert clip.dtype == np.float32
        assert stem == ("a_ramp", "b_ramp")[k % 2]  # the recordings in turn
        assert gain == gains[(k // 2) % len(gains)]  # each round at the next gain
        start, measured_db = _decode(clip, stem)
        assert abs(measured_db - gain) < 0.01
        length = int(RAMPS[stem][0] * SR)
        lo, hi = (int(length * c) for c in cuts[part])
        assert lo <= start
        assert start + SR <= hi
        seen[part].add((stem, gain))
    assert seen["train"] == {(stem, g) for stem in RAMPS for g in gains}
    quiet = [x for s, x in clips if s.endswith("-60dB")]
    assert quiet
    assert max(float(np.sqrt(np.mean(x**2))) for x in quiet) < 1e-3  # near-silence


def test_without_the_lists_the_seeded_split(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "sc", lists=False)
    split = {"val_fraction": 0.25, "test_fraction": 0.25, "seed": 0}
    ds = load_dataset(spec(root, split=split))
    of = parts(ds)
    assert ds.counts() == {**dict.fromkeys(KEYWORDS, 4), UNKNOWN: 4, SILENCE: 4}
    for c in ds.classes:  # stratified: 4 clips → 2 train, 1 val, 1 test, in every class
        members = [of[s] for i, s in enumerate(ds.sources) if ds.classes[ds.labels[i]] == c]
        assert sorted(members) == ["test", "train", "train", "val"], c
    record = split_dataset(ds, spec(root, split=split).split)[1]
    assert set(record.test) == {k for k, v in of.items() if v == "test"}
    again = load_dataset(spec(root, split=split))
    assert parts(again) == of
    other = parts(load_dataset(spec(root, split={**split, "seed": 1})))
    assert {k: v for k, v in other.items() if not k.startswith(SILENCE)} != {
        k: v for k, v in of.items() if not k.startswith(SILENCE)
    }


def test_deterministic_given_the_seed(tree: Path) -> None:
    one, two = load_dataset(spec(tree, silence_share=3)), load_dataset(spec(tree, silence_share=3))
    assert one.sources == two.sources
    np.testing.assert_array_equal(one.labels, two.labels)
    assert parts(one) == parts(two)
    for a, b in zip(one.samples, two.samples, strict=True):
        np.testing.assert_array_equal(a, b)
    split = {"val_fraction": 0.1, "test_fraction": 0.1, "seed": 7}
    reseeded = load_dataset(spec(tree, silence_share=3, split=split))
    # the listed parts stay; the _unknown_ sample and the silence cuts are drawn anew
    words = {k: v for k, v in parts(one).items() if k.split("/")[0] in KEYWORDS}
    assert {k: v for k, v in parts(reseeded).items() if k in words} == words
    silence = [x for s, x in zip(one.sources, one.samples, strict=True) if s.startswith(SILENCE)]
    redrawn = [
        x for s, x in zip(reseeded.sources, reseeded.samples, strict=True) if s.startswith(SILENCE)
    ]
    assert any(not np.array_equal(a, b) for a, b in zip(silence, redrawn, strict=True))


def test_unknown_share_classes_and_max_per_class(tree: Path) -> None:
    every = load_dataset(spec(tree, unknown_share=None))
    assert every.counts()[UNKNOWN] == 6 * len(OTHER)
    double = load_dataset(spec(tree, unknown_share=2.0))
    assert double.counts()[UNKNOWN] == 8  # 4/2/2, within 12/3/3 available
    few = load_dataset(spec(tree, classes=["no", "yes", UNKNOWN]))
    assert few.classes == ["no", "yes", UNKNOWN]
    # a keyword left out is dropped, not folded into _unknown_
    assert {s.split("/")[0] for s in few.sources} - set(OTHER) == {"no", "yes"}
    assert few.counts() == {"no": 4, "yes": 4, UNKNOWN: 4}
    capped = load_dataset(spec(tree, max_per_class=3))
    yes = [s for s in capped.sources if s.startswith("yes/")]
    assert yes == [f"yes/{s}_nohash_0.wav" for s in SPEAKERS[:3]]  # the first, sorted
    assert capped.counts()["yes"] == 3


def test_without_silence_no_noise_folder_is_needed(tree: Path) -> None:
    for p in (tree / "_background_noise_").iterdir():
        p.unlink()
    (tree / "_background_noise_").rmdir()
    with pytest.raises(DatasetError, match=re.escape(str(tree / "_background_noise_"))):
        load_dataset(spec(tree))
    ds = load_dataset(spec(tree, classes=[*KEYWORDS, UNKNOWN]))
    assert SILENCE not in ds.classes
    assert len(ds) == 44


def test_bad_folders_and_lists_are_errors_naming_the_path(tmp_path: Path, tree: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=f"dataset root {re.escape(str(missing))} does not"):
        load_dataset(spec(missing))
    vlist = tree / "validation_list.txt"
    good = vlist.read_text()
    vlist.write_text(good + "left/ffffffff_nohash_0.wav\n")
    line = len(good.splitlines()) + 1
    gone = re.escape(str(tree / "left" / "ffffffff_nohash_0.wav"))
    with pytest.raises(DatasetError, match=rf"validation_list\.txt:{line}: names {gone}, which"):
        load_dataset(spec(tree))
    vlist.write_text(good + "../outside.wav\n")
    with pytest.raises(DatasetError, match=rf"validation_list\.txt:{line}: names .*outside\.wav"):
        load_dataset(spec(tree))
    vlist.write_text(good + (tree / "testing_list.txt").read_text().split()[0] + "\n")
    with pytest.raises(DatasetError, match=r"is in the val list too"):
        load_dataset(spec(tree))
    vlist.unlink()
    with pytest.raises(DatasetError, match=f"{re.escape(str(vlist))} is missing but"):
        load_dataset(spec(tree))
    vlist.write_text(good)
    noise = tree / "_background_noise_"
    for p in noise.glob("*.wav"):
        p.unlink()
    with pytest.raises(DatasetError, match=f"{re.escape(str(noise))}: no sound files"):
        load_dataset(spec(tree))
    media.write_wav(noise / "short.wav", np.zeros(SR * 5), SR)  # val stretch: 0.5 s
    with pytest.raises(DatasetError, match=r"no recording has 1 s in its val stretch"):
        load_dataset(spec(tree))
    for p in (tree / "go").iterdir():
        p.unlink()
    (tree / "go").rmdir()
    with pytest.raises(DatasetError, match=f"{re.escape(str(tree / 'go'))}: no such word"):
        load_dataset(spec(tree))
    with pytest.raises(DatasetError, match="no class 'marvin'"):
        load_dataset(spec(tree, classes=["yes", "marvin"]))


def test_the_recipe_loads_and_matches_the_keywords_model() -> None:
    recipe = load_config(RECIPE, Recipe)
    assert isinstance(recipe.dataset, SpeechCommandsDataset)
    assert recipe.dataset.root == Path("../../data/speech_commands_v0.02")
    assert recipe.dataset.background_classes == [SILENCE, UNKNOWN]
    keywords = load_config(REPO / "config" / "modelgen" / "keywords.yaml", Recipe)
    assert recipe.preprocess == keywords.preprocess
    assert recipe.model == keywords.model
    assert recipe.dataset.sample_rate == getattr(recipe.preprocess, "sample_rate", None)


def test_the_build_data_stage_loads_it(tmp_path: Path, tree: Path) -> None:
    """`modelgen build`'s data stage on the recipe with its root pointed at the tiny tree."""
    from modelgen.build import _stage_data, open_workspace

    recipe = load_config(RECIPE, Recipe)
    recipe = recipe.model_copy(update={"dataset": recipe.dataset.model_copy(update={"root": tree})})
    ws = open_workspace(recipe, RECIPE.parent, tmp_path / "cache", lambda _: None)
    data = _stage_data(ws)
    assert data.classes == [*KEYWORDS, UNKNOWN, SILENCE]
    assert {p: len(y) for p, y in data.y.items()} == {"train": 24, "val": 12, "test": 12}
    assert data.x["test"].shape == (12, 1, 32, 32)
    record = data.split["record"]
    assert record["official_val"]
    assert record["official_test"]
    tested = {s for s in record["test"] if not s.startswith(SILENCE)}
    assert {s for s in tested if s.split("/")[0] in KEYWORDS} == {
        f"{w}/{TEST_SPEAKER}_nohash_0.wav" for w in KEYWORDS
    }
    assert data.split["dataset"]["kind"] == "speech_commands"
    assert data.split["dataset"]["root"] == str(tree.resolve())


def test_stratified_split_keeps_fixed_val_and_test_parts() -> None:
    from modelgen.datasets import stratified_split

    labels = np.asarray([0, 0, 0, 0, 1, 1, 1, 1])
    fixed_val, fixed_test = np.asarray([1, 5]), np.asarray([2, 6])
    split = stratified_split(labels, 0.3, 0.3, 0, fixed_test, fixed_val)
    assert split.val.tolist() == [1, 5]
    assert split.test.tolist() == [2, 6]
    assert split.train.tolist() == [0, 3, 4, 7]
    with pytest.raises(ValueError, match="overlap"):
        stratified_split(labels, 0.3, 0.3, 0, fixed_test, np.asarray([2]))
