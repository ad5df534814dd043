"""Dataset loaders on small data made here, the restricted unpickler, and the split."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from edvit.config.base import StrictModel
from edvit.config.dataset import (
    AudioFolderDataset,
    Cifar10Dataset,
    DatasetSpec,
    DigitsDataset,
    ImageFolderDataset,
    SplitSpec,
)
from edvit.config.loader import ConfigError, parse_config
from modelgen.datasets import (
    Dataset,
    DatasetError,
    SplitRecord,
    apply_split,
    check_preprocess,
    load_dataset,
    split_dataset,
    stratified_split,
)
from modelgen.datasets.cifar10 import restricted_load

SPEC: TypeAdapter[DigitsDataset | ImageFolderDataset | AudioFolderDataset | Cifar10Dataset] = (
    TypeAdapter(DatasetSpec)
)


# --------------------------------------------------------------------------- config


def test_spec_discriminates_and_forbids_unknown_keys() -> None:
    spec = SPEC.validate_python({"kind": "audiofolder", "root": "data/kw", "max_per_class": 5})
    assert isinstance(spec, AudioFolderDataset)
    assert spec.sample_rate == 16000
    assert spec.split == SplitSpec()
    with pytest.raises(ValidationError, match="Extra inputs"):
        SPEC.validate_python({"kind": "digits", "root": "x"})
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        SPEC.validate_python({"kind": "mnist"})
    with pytest.raises(ValidationError, match="appears more than once"):
        SPEC.validate_python({"kind": "digits", "classes": ["1", "1"]})
    with pytest.raises(ValidationError, match="nothing is left"):
        SplitSpec(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValidationError, match="Extra inputs"):  # images have no stream
        SPEC.validate_python({"kind": "imagefolder", "root": "im", "stream_windows": 10})


def test_spec_errors_name_the_yaml_key() -> None:
    class Holder(StrictModel):
        dataset: DatasetSpec

    text = "dataset:\n  kind: cifar10\n  root: /data\n  split:\n    val_fraction: 2\n"
    with pytest.raises(ConfigError, match=r"dataset\.cifar10\.split\.val_fraction"):
        parse_config(text, Holder, "recipe.yaml")


# --------------------------------------------------------------------------- digits


def test_digits_real_and_scaled() -> None:
    ds = load_dataset(DigitsDataset())
    assert len(ds) == 1797
    assert ds.kind == "image"
    assert ds.classes == [str(d) for d in range(10)]
    assert ds.samples[0].shape == (8, 8, 1)
    assert ds.samples[0].dtype == np.uint8
    assert max(int(s.max()) for s in ds.samples) == 255
    assert ds.sources[0] == "digits/0"
    sub = load_dataset(DigitsDataset(classes=["7", "3"], max_per_class=10))
    assert sub.classes == ["7", "3"]
    assert sub.counts() == {"7": 10, "3": 10}
    first_seven = int(sub.sources[int(np.flatnonzero(sub.labels == 0)[0])].split("/")[1])
    assert np.array_equal(
        ds.samples[first_seven], sub.samples[int(np.flatnonzero(sub.labels == 0)[0])]
    )
    with pytest.raises(DatasetError, match="no class 'x'"):
        load_dataset(DigitsDataset(classes=["1", "x"]))


# --------------------------------------------------------------------------- image folder


def _write_images(root: Path) -> dict[str, np.ndarray]:
    import cv2

    rng = np.random.default_rng(0)
    made: dict[str, np.ndarray] = {}
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            rgb = rng.integers(0, 256, (6 + i, 5, 3), dtype=np.uint8)
            rgb[0, 0] = (255, 0, 0)  # a red pixel: catches a BGR/RGB mix-up
            rel = f"{cls}/{i}.png"
            assert cv2.imwrite(str(root / rel), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            made[rel] = rgb
    gray = rng.integers(0, 256, (4, 4), dtype=np.uint8)
    assert cv2.imwrite(str(root / "dog" / "gray.png"), gray)
    made["dog/gray.png"] = gray[:, :, None]
    jpg = np.full((8, 8, 3), (10, 200, 30), dtype=np.uint8)
    assert cv2.imwrite(str(root / "cat" / "photo.JPG"), cv2.cvtColor(jpg, cv2.COLOR_RGB2BGR))
    made["cat/photo.JPG"] = jpg
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".hidden.png").write_bytes(b"junk")
    (root / ".cache").mkdir()
    return made


def test_imagefolder_loads_rgb_in_sorted_order(tmp_path: Path) -> None:
    made = _write_images(tmp_path / "imgs")
    ds = load_dataset(ImageFolderDataset(root=Path("imgs")), base_dir=tmp_path)
    assert ds.classes == ["cat", "dog"]
    assert ds.sources == sorted(made)  # txt, hidden files and folders are ignored
    assert ds.counts() == {"cat": 4, "dog": 4}
    for source, sample, label in zip(ds.sources, ds.samples, ds.labels, strict=True):
        assert ds.classes[label] == source.split("/")[0]
        assert sample.dtype == np.uint8
        if source.endswith(".png"):
            np.testing.assert_array_equal(sample, made[source])
        else:  # JPEG is lossy
            assert np.abs(sample.astype(int) - made[source]).max() <= 3
    one = load_dataset(
        ImageFolderDataset(root=tmp_path / "imgs", classes=["dog"] * 1 + ["cat"], max_per_class=2)
    )
    assert one.classes == ["dog", "cat"]
    assert one.sources == ["dog/0.png", "dog/1.png", "cat/0.png", "cat/1.png"]


def test_imagefolder_errors_name_the_file(tmp_path: Path) -> None:
    _write_images(tmp_path)
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError, match=r"dog/broken\.png: not a readable image"):
        load_dataset(ImageFolderDataset(root=tmp_path))
    (tmp_path / "dog" / "broken.png").unlink()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"class folder .*empty has no image files"):
        load_dataset(ImageFolderDataset(root=tmp_path))
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(ImageFolderDataset(root=tmp_path / "nope"))


# --------------------------------------------------------------------------- audio folder


def _write_audio(root: Path) -> None:
    import soundfile as sf

    t16 = np.arange(8000) / 16000
    t44 = np.arange(44100 // 2) / 44100
    (root / "yes").mkdir(parents=True)
    (root / "no").mkdir()
    (root / "_background_noise_").mkdir()
    sf.write(
        root / "yes" / "a_nohash_0.wav",
        0.5 * np.sin(2 * np.pi * 440 * t16),
        16000,
        subtype="PCM_16",
    )
    sf.write(
        root / "yes" / "b_nohash_0.wav",
        0.25 * np.sin(2 * np.pi * 880 * t16),
        16000,
        subtype="FLOAT",
    )
    stereo = np.stack([0.4 * np.sin(2 * np.pi * 440 * t44), np.zeros_like(t44)], axis=1)
    sf.write(root / "no" / "stereo44k.wav", stereo, 44100, subtype="PCM_16")
    sf.write(root / "_background_noise_" / "white.wav", np.zeros(100), 16000)
    (root / "no" / "README.md").write_text("ignored")
    (root / "testing_list.txt").write_text("yes/a_nohash_0.wav\n")


def test_audiofolder_speech_commands_layout(tmp_path: Path) -> None:
    _write_audio(tmp_path)
    ds = load_dataset(AudioFolderDataset(root=tmp_path))
    assert ds.kind == "audio"
    assert ds.sample_rate == 16000
    assert ds.classes == ["no", "yes"]
    assert ds.sources == ["no/stereo44k.wav", "yes/a_nohash_0.wav", "yes/b_nohash_0.wav"]
    assert ds.labels.tolist() == [0, 1, 1]
    for s in ds.samples:
        assert s.dtype == np.float32
        assert s.ndim == 1
    # 0.5 s of 44.1 kHz stereo → 8000 samples at 16 kHz, the two channels averaged.
    stereo = ds.samples[0]
    assert len(stereo) == 8000
    assert abs(float(np.abs(stereo[1000:7000]).max()) - 0.2) < 0.01
    spectrum = np.abs(np.fft.rfft(stereo))
    assert abs(int(np.argmax(spectrum)) * 16000 / 8000 - 440) <= 2
    np.testing.assert_allclose(ds.samples[2].max(), 0.25, atol=1e-3)


def test_audiofolder_gtzan_layout_and_errors(tmp_path: Path) -> None:
    import soundfile as sf

    for genre in ("blues", "jazz"):
        (tmp_path / genre).mkdir()
        for i in range(2):
            sf.write(tmp_path / genre / f"{genre}.{i:05d}.wav", np.zeros(2205), 22050)
    ds = load_dataset(AudioFolderDataset(root=tmp_path, sample_rate=8000, max_per_class=1))
    assert ds.sources == ["blues/blues.00000.wav", "jazz/jazz.00000.wav"]
    assert len(ds.samples[0]) == 800
    (tmp_path / "jazz" / "jazz.00000.wav").write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(DatasetError, match=r"jazz/jazz\.00000\.wav: not a readable sound file"):
        load_dataset(AudioFolderDataset(root=tmp_path))


def test_audiofolder_reads_flac_and_ogg_as_a_node_replays_them(tmp_path: Path) -> None:
    """Training takes the sound files a node's `wav` source replays, sample for sample."""
    import soundfile as sf

    from edge_node.sources import WavSource
    from edvit.preprocess import fix_length

    t = np.arange(12000) / 24000  # 0.5 s at 24 kHz: resampled to 8000 samples at 16 kHz
    for name, hz in (("tone/a.flac", 440), ("hum/b.ogg", 120), ("hum/c.wav", 250)):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        sf.write(tmp_path / name, 0.5 * np.sin(2 * np.pi * hz * t), 24000)
    ds = load_dataset(AudioFolderDataset(root=tmp_path, sample_rate=16000))
    assert ds.classes == ["hum", "tone"]
    assert ds.sources == ["hum/b.ogg", "hum/c.wav", "tone/a.flac"]
    flac = ds.samples[2]
    assert len(flac) == 8000
    assert abs(int(np.argmax(np.abs(np.fft.rfft(flac)))) * 16000 / 8000 - 440) <= 2
    with WavSource(tmp_path, sample_rate=16000, clip_samples=8000, pattern="**/*") as node:
        assert node.items == ds.sources
        for k, want in enumerate(ds.samples):
            got = node.read(k)
            assert got is not None
            np.testing.assert_array_equal(got.data, fix_length(want, 8000))


# --------------------------------------------------------------------------- CIFAR-10


NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _write_cifar(parent: Path, per_batch: int = 20) -> Path:
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(files):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [(i + b) % 10 for i in range(per_batch)]
        # Protocol 2 with numpy's _reconstruct, like the real (Python 2) files.
        with (folder / name).open("wb") as fh:
            pickle.dump(
                {
                    "batch_label": name,
                    "data": data,
                    "labels": labels,
                    "filenames": [f"{i}.png" for i in range(per_batch)],
                },
                fh,
                protocol=2,
            )
    with (folder / "batches.meta").open("wb") as fh:
        pickle.dump(
            {"label_names": NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072},
            fh,
            protocol=2,
        )
    return folder


def test_cifar10_reads_batches_as_rgb(tmp_path: Path) -> None:
    folder = _write_cifar(tmp_path)
    ds = load_dataset(Cifar10Dataset(root=tmp_path))
    assert ds.classes == NAMES
    assert len(ds) == 120
    assert ds.sources[0] == "cifar10/train/0"
    assert ds.sources[100] == "cifar10/test/0"
    assert ds.official_test is not None
    assert ds.official_test.tolist() == list(range(100, 120))
    with (folder / "data_batch_1").open("rb") as fh:
        raw = pickle.load(fh)
    img = ds.samples[3]
    assert img.shape == (32, 32, 3)
    assert img.dtype == np.uint8
    np.testing.assert_array_equal(img[:, :, 0].ravel(), raw["data"][3, :1024])  # red plane
    np.testing.assert_array_equal(img[:, :, 2].ravel(), raw["data"][3, 2048:])  # blue plane
    assert ds.labels[3] == raw["labels"][3]
    # The folder itself works as root too; classes pick and reorder, max_per_class per part.
    sub = load_dataset(Cifar10Dataset(root=folder, classes=["truck", "cat"], max_per_class=3))
    assert sub.classes == ["truck", "cat"]
    assert sub.counts() == {"truck": 5, "cat": 5}  # 3 of the training batches, 2 of test
    split, record = split_dataset(sub, SplitSpec(val_fraction=0.34, seed=1))
    assert record.official_test
    assert [sub.sources[i].split("/")[1] for i in split.test] == ["test"] * 4
    assert all(sub.sources[i].split("/")[1] == "train" for i in [*split.train, *split.val])


def test_cifar10_missing_without_download(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="set download: true"):
        load_dataset(Cifar10Dataset(root=tmp_path))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    folder = _write_cifar(tmp_path)
    with (folder / "data_batch_2").open("wb") as fh:
        pickle.dump({"data": _Evil(tmp_path / "pwned"), "labels": []}, fh, protocol=2)
    with pytest.raises(
        DatasetError, match=r"data_batch_2: refusing to load global (posix|nt)\.system"
    ):
        load_dataset(Cifar10Dataset(root=tmp_path))
    assert not (tmp_path / "pwned").exists()
    evil = tmp_path / "eval.pkl"
    evil.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(DatasetError, match=r"eval\.pkl: refusing to load global builtins\.eval"):
        restricted_load(evil)
    truncated = tmp_path / "short.pkl"
    truncated.write_bytes(pickle.dumps({"data": np.zeros(3, np.uint8)}, protocol=2)[:30])
    with pytest.raises(DatasetError, match=r"short\.pkl"):
        restricted_load(truncated)
    (folder / "data_batch_2").write_bytes(
        pickle.dumps({"data": np.zeros((2, 5), np.uint8), "labels": [0, 1]}, protocol=2)
    )
    with pytest.raises(DatasetError, match=r"data_batch_2: key 'data' has rows of 5"):
        load_dataset(Cifar10Dataset(root=tmp_path))


# --------------------------------------------------------------------------- split


def test_stratified_split_is_stratified_and_deterministic() -> None:
    labels = np.repeat(np.arange(4), [100, 50, 10, 3])
    a = stratified_split(labels, 0.1, 0.2, seed=7)
    b = stratified_split(labels, 0.1, 0.2, seed=7)
    c = stratified_split(labels, 0.1, 0.2, seed=8)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(a.part(part), b.part(part))
    assert not np.array_equal(a.test, c.test)
    everything = np.concatenate([a.train, a.val, a.test])
    assert sorted(everything.tolist()) == list(range(len(labels)))
    counts = {
        p: np.bincount(labels[a.part(p)], minlength=4).tolist() for p in ("train", "val", "test")
    }
    assert counts["test"] == [20, 10, 2, 1]
    assert counts["val"] == [10, 5, 1, 1]
    assert counts["train"] == [70, 35, 7, 1]
    tiny = stratified_split(np.array([0, 0, 1]), 0.1, 0.2, seed=0)
    assert tiny.sizes() == {"train": 3, "val": 0, "test": 0}


def test_split_record_round_trip_and_reapply(tmp_path: Path) -> None:
    ds = load_dataset(DigitsDataset(max_per_class=30))
    split, record = split_dataset(ds, SplitSpec(val_fraction=0.2, test_fraction=0.2, seed=3))
    path = tmp_path / "split.json"
    path.write_text(record.model_dump_json())
    loaded = SplitRecord.model_validate_json(path.read_text())
    assert loaded == record
    # Re-read the data in another order: the same samples land in the same parts.
    shuffled = ds.subset(np.random.default_rng(0).permutation(len(ds)))
    again = apply_split(loaded, shuffled)
    for part in ("train", "val", "test"):
        assert [shuffled.sources[i] for i in again.part(part)] == [
            ds.sources[i] for i in split.part(part)
        ]
    # A sample that is gone is named.
    missing = ds.sources[split.test[0]]
    keep = [i for i in range(len(ds)) if ds.sources[i] != missing]
    with pytest.raises(DatasetError, match=f"recorded test split names sample '{missing}'"):
        apply_split(loaded, ds.subset(keep))


def test_dataset_checks_its_own_consistency() -> None:
    with pytest.raises(DatasetError, match="2 samples but 1 labels"):
        Dataset("image", ["a"], [np.zeros(1), np.zeros(1)], np.zeros(1, np.int64), ["x", "y"])
    with pytest.raises(DatasetError, match="unique"):
        Dataset("image", ["a"], [np.zeros(1)] * 2, np.zeros(2, np.int64), ["x", "x"])


def test_check_preprocess_refuses_a_mismatched_front_end(tmp_path: Path) -> None:
    _write_audio(tmp_path)
    audio = load_dataset(AudioFolderDataset(root=tmp_path))
    check_preprocess(audio, "audio", 16000)
    with pytest.raises(DatasetError, match="44100 Hz"):
        check_preprocess(audio, "audio", 44100)
    with pytest.raises(DatasetError, match="holds audio but the preprocessing is image"):
        check_preprocess(audio, "image")
