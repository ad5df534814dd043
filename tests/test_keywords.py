"""`generate_keywords`: real espeak-ng (and Festival) output, the 12-class layout, held-out
corpora, WAV format, determinism, folder hygiene."""

from __future__ import annotations

import json
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from edvit.config.dataset import AudioFolderDataset
from modelgen.datasets import load_dataset
from modelgen.datasets.keywords import (
    AUXILIARY,
    KEYWORDS,
    SILENCE,
    UNKNOWN,
    KeywordError,
    english_voices,
    festival_voices,
    generate_keywords,
    parse_wav_bytes,
    voice_split,
    voice_variants,
)

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"
)
WORDS = ("yes", "no")
CLASSES = [*WORDS, UNKNOWN, SILENCE]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three clips of two words, _unknown_ and _silence_, and one of each in every held-out
    corpus, made by a pool of two processes."""
    out = tmp_path_factory.mktemp("kw") / "keywords"
    summary = generate_keywords(
        out, per_word=3, seed=11, words=WORDS, workers=2, heldout_per_word=1
    )
    corpora = 2 + bool(voice_split(english_voices(), festival_voices())["unseen_engine"])
    assert summary.files == 4 * 3 + 4 * (corpora - 1)
    assert list(summary.corpora.values())[:2] == [out, out.with_name("keywords-unseen-voices")]
    return out


def _wavs(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.wav"))}


def test_ten_speech_commands_words() -> None:
    assert KEYWORDS == ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")


def test_voices_and_variants_are_espeaks_own() -> None:
    voices = english_voices()
    assert voices == sorted(voices)
    assert not any(v.startswith("mb/") for v in voices)  # MBROLA needs extra packages
    variants = voice_variants()
    assert variants[0] == ""
    assert {"m1", "f1", "croak", "whisper"} <= set(variants)


def test_wav_format_and_names(made: Path) -> None:
    files = _wavs(made)
    assert sorted(files) == [f"{w}/{w}_{i:05d}.wav" for w in sorted(CLASSES) for i in range(3)]
    meta = json.loads((made / "keywords.json").read_text())
    by_file = {s["file"]: s for s in meta["samples"]}
    for name in files:
        with wave.open(str(made / name)) as wav:
            assert wav.getframerate() == 16000
            assert wav.getnchannels() == 1
            assert wav.getsampwidth() == 2
            assert wav.getnframes() == 16000
            pcm = np.frombuffer(wav.readframes(16000), dtype="<i2")
        drawn = by_file[name]
        if drawn["word"] == SILENCE:  # no speech: no engine, no voice, quiet
            assert (drawn["engine"], drawn["voice"], drawn["spoken"]) == ("", "", "")
            assert np.sqrt(np.mean(pcm.astype(float) ** 2)) < 0.1 * 32767
        else:
            assert np.abs(pcm).max() > 1000  # a word, not silence
            # the training corpus: espeak-ng and Festival's diphone voices
            assert drawn["engine"] == "espeak-ng" or drawn["voice"].endswith("_diphone")
    for s in meta["samples"]:
        if s["word"] == UNKNOWN:
            assert s["spoken"] in AUXILIARY  # another word, never a keyword
        elif s["word"] != SILENCE:
            assert s["spoken"] == s["word"]
    assert meta["seed"] == 11
    assert meta["words"] == list(WORDS)
    assert meta["classes"] == CLASSES
    assert meta["engines_found"]["espeak-ng"] == english_voices()
    assert meta["engines_found"]["festival"] == festival_voices()
    assert [s["file"] for s in meta["samples"]] == [
        f"{w}/{w}_{i:05d}.wav" for w in CLASSES for i in range(3)
    ]
    ds = load_dataset(AudioFolderDataset(root=made))
    assert ds.classes == sorted(CLASSES)  # _silence_ and _unknown_ are classes
    assert ds.counts() == dict.fromkeys(sorted(CLASSES), 3)
    assert all(len(s) == 16000 for s in ds.samples)


def test_held_out_voices_are_in_their_own_corpora(made: Path) -> None:
    split = voice_split(english_voices(), festival_voices())
    assert split["unseen_voices"]  # every 5th espeak-ng voice
    assert not set(split["train"]) & set(split["unseen_voices"])
    # Festival's diphone voices train; its HTS voice is the engine no model hears
    assert all(v.endswith("_diphone") for v in split["train"] if v.startswith("festival:"))
    assert all(v.endswith("_hts") for v in split["unseen_engine"])
    train = json.loads((made / "keywords.json").read_text())
    assert {f"{s['engine']}:{s['voice']}" for s in train["samples"] if s["voice"]} <= set(
        split["train"]
    )
    for corpus, suffix in (
        ("unseen_voices", "-unseen-voices"),
        ("unseen_engine", "-unseen-engine"),
    ):
        folder = made.with_name(made.name + suffix)
        if not split[corpus]:
            assert not folder.exists()  # no Festival here: no unseen-engine corpus
            continue
        meta = json.loads((folder / "keywords.json").read_text())
        assert meta["corpus"] == corpus
        assert meta["classes"] == CLASSES
        used = {f"{s['engine']}:{s['voice']}" for s in meta["samples"] if s["voice"]}
        assert used <= set(split[corpus])
        assert not used & set(split["train"])
        assert sorted(_wavs(folder)) == [f"{w}/{w}_00000.wav" for w in sorted(CLASSES)]


def test_same_seed_same_bytes_other_seed_other_bytes(made: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_keywords(again, per_word=3, seed=11, words=WORDS, workers=1, heldout_per_word=1)
    assert _wavs(again) == _wavs(made)
    assert (again / "keywords.json").read_bytes() == (made / "keywords.json").read_bytes()
    # Sample i does not depend on per_word or on the other words.
    fewer = tmp_path / "fewer"
    generate_keywords(fewer, per_word=2, seed=11, words=["no"], workers=1, background=False)
    assert _wavs(fewer) == {
        k: v for k, v in _wavs(made).items() if k in {"no/no_00000.wav", "no/no_00001.wav"}
    }
    # Re-using the folder for another run leaves no stale clips or words behind.
    generate_keywords(fewer, per_word=1, seed=12, words=["yes"], workers=1, background=False)
    assert sorted(_wavs(fewer)) == ["yes/yes_00000.wav"]
    assert sorted(p.name for p in fewer.iterdir()) == ["keywords.json", "yes"]
    assert _wavs(fewer)["yes/yes_00000.wav"] != _wavs(made)["yes/yes_00000.wav"]


def test_parse_espeak_stdout_with_placeholder_sizes() -> None:
    raw = subprocess.run(
        ["espeak-ng", "--stdout", "-v", "en-us", "go"], capture_output=True, check=True
    ).stdout
    assert int.from_bytes(raw[4:8], "little") > len(raw)  # the streamed header's placeholder
    wave_, rate = parse_wav_bytes(raw)
    assert rate == 22050
    assert wave_.dtype == np.float32
    assert len(wave_) == (len(raw) - 44) // 2
    with pytest.raises(KeywordError, match="not a WAV"):
        parse_wav_bytes(b"hello")


def test_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(KeywordError, match="not empty"):
        generate_keywords(tmp_path, per_word=1, seed=0, words=["go"], workers=1)
    with pytest.raises(ValueError, match="per_word"):
        generate_keywords(tmp_path / "x", per_word=0, seed=0)
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng on this PATH
    with pytest.raises(KeywordError, match="install the Debian package espeak-ng"):
        generate_keywords(tmp_path / "new", per_word=1, seed=0, words=["go"], workers=1)
