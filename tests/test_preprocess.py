"""edvit.preprocess: shapes, dtype, normalization, resizing and the log-mel front-end."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from edvit import melspec
from edvit.preprocess import (
    AudioPreprocess,
    ImagePreprocess,
    PreprocessSpec,
    fit_normalization,
    fix_length,
    parse_preprocess,
    preprocess,
    preprocess_batch,
)

from blocker import run_blocked


@pytest.fixture(scope="session")
def spoken_yes() -> np.ndarray:
    """A real word from espeak-ng, parsed and resampled like the keyword generator does."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    import librosa

    from modelgen.datasets.keywords import parse_wav_bytes

    raw = subprocess.run(
        ["espeak-ng", "--stdout", "-v", "en-us", "yes"], capture_output=True, check=True
    ).stdout
    wave, rate = parse_wav_bytes(raw)
    return np.asarray(librosa.resample(wave, orig_sr=rate, target_sr=16000), dtype=np.float32)


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize(
    ("shape", "channels"),
    [((8, 8), 1), ((8, 8, 1), 3), ((40, 30, 3), 3), ((40, 30, 3), 1), ((5, 7, 4), 3)],
)
def test_image_shapes_and_dtype(shape: tuple[int, ...], channels: int) -> None:
    spec = ImagePreprocess(height=16, width=12, channels=channels)  # type: ignore[arg-type]
    img = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    out = preprocess(spec, img)
    assert out.shape == (channels, 16, 12)
    assert out.dtype == np.float32
    assert spec.input_size == (16, 12)


def test_image_normalization_exact() -> None:
    img = np.zeros((4, 4, 3), dtype=np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 0, 51, 255
    spec = ImagePreprocess(height=4, width=4, mean=[0.0, 0.1, 0.5], std=[1.0, 0.2, 0.25])
    out = preprocess(spec, img)
    np.testing.assert_allclose(out[0], 0.0, atol=1e-6)
    np.testing.assert_allclose(out[1], (0.2 - 0.1) / 0.2, atol=1e-6)
    np.testing.assert_allclose(out[2], (1.0 - 0.5) / 0.25, atol=1e-6)


def test_image_channel_order_is_rgb_and_gray_is_luma() -> None:
    red = np.zeros((2, 2, 3), dtype=np.uint8)
    red[..., 0] = 255
    rgb = preprocess(ImagePreprocess(height=2, width=2, mean=[0.0], std=[1.0]), red)
    assert rgb[0].min() == 1.0
    assert rgb[1].max() == 0.0
    assert rgb[2].max() == 0.0
    gray = preprocess(ImagePreprocess(height=2, width=2, channels=1, mean=[0], std=[1]), red)
    np.testing.assert_allclose(gray, round(0.299 * 255) / 255, atol=1 / 255)


def test_image_resize_area_when_shrinking_linear_when_growing() -> None:
    import cv2

    spec = ImagePreprocess(height=8, width=8, mean=[0.0], std=[1.0])
    big = _rgb(32, 32)
    want = cv2.resize(big, (8, 8), interpolation=cv2.INTER_AREA).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(preprocess(spec, big), want, atol=1e-6)
    small = _rgb(4, 4)
    want = cv2.resize(small, (8, 8), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(preprocess(spec, small), want, atol=1e-6)


def test_image_bad_inputs_are_clear() -> None:
    spec = ImagePreprocess(height=4, width=4)
    with pytest.raises(ValueError, match="uint8"):
        preprocess(spec, np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        preprocess(spec, np.zeros((4, 4, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="sample 1: image must be uint8"):
        preprocess_batch(spec, [_rgb(4, 4), np.zeros((4, 4, 3))])


def test_image_spec_validation() -> None:
    with pytest.raises(ValidationError, match="mean has 2 values"):
        ImagePreprocess(height=4, width=4, channels=3, mean=[0.1, 0.2])
    with pytest.raises(ValidationError, match="std values must be greater than 0"):
        ImagePreprocess(height=4, width=4, std=[0.0])
    with pytest.raises(ValidationError, match="Extra inputs"):
        ImagePreprocess.model_validate({"height": 4, "width": 4, "size": 3})


def test_batch_and_fit_normalization() -> None:
    rng = np.random.default_rng(0)
    samples = [rng.integers(0, 256, (10, 10, 3), dtype=np.uint8) for _ in range(20)]
    samples = [(s * np.array([0.2, 0.6, 1.0])).astype(np.uint8) for s in samples]
    spec = fit_normalization(ImagePreprocess(height=10, width=10), samples)
    assert isinstance(spec, ImagePreprocess)
    assert len(spec.mean) == 3
    batch = preprocess_batch(spec, samples)
    assert batch.shape == (20, 3, 10, 10)
    assert batch.dtype == np.float32
    np.testing.assert_allclose(batch.mean(axis=(0, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(batch.std(axis=(0, 2, 3)), 1.0, atol=1e-4)
    assert preprocess_batch(spec, []).shape == (0, 3, 10, 10)


def test_discriminated_union_round_trip() -> None:
    adapter: TypeAdapter[ImagePreprocess | AudioPreprocess] = TypeAdapter(PreprocessSpec)
    img = adapter.validate_python({"kind": "image", "height": 8, "width": 8, "channels": 1})
    assert isinstance(img, ImagePreprocess)
    aud = parse_preprocess({"kind": "audio", "n_mels": 32, "n_frames": 64})
    assert isinstance(aud, AudioPreprocess)
    assert aud.input_size == (32, 64)
    assert parse_preprocess(aud.model_dump(mode="json")) == aud
    with pytest.raises(ValidationError):
        parse_preprocess({"kind": "video"})


# --------------------------------------------------------------------------- audio


def test_audio_spec_frames_and_validation() -> None:
    spec = AudioPreprocess(sample_rate=16000, clip_seconds=1.0, hop_length=160, n_mels=40)
    assert spec.frames == 101
    assert spec.input_size == (40, 101)
    with pytest.raises(ValidationError, match="Nyquist"):
        AudioPreprocess(sample_rate=16000, fmax=9000)
    with pytest.raises(ValidationError, match="fmin"):
        AudioPreprocess(fmin=5000, fmax=4000)


def test_fix_length_centres() -> None:
    np.testing.assert_array_equal(fix_length(np.arange(6, dtype=np.float32), 2), [2, 3])
    np.testing.assert_array_equal(fix_length(np.ones(2, dtype=np.float32), 5), [0, 1, 1, 0, 0])


def test_audio_word_differs_from_silence_and_is_deterministic(spoken_yes: np.ndarray) -> None:
    spec = AudioPreprocess(n_frames=96)
    word = preprocess(spec, spoken_yes)
    silence = preprocess(spec, np.zeros(8000, dtype=np.float32))
    assert word.shape == silence.shape == (1, 40, 96)
    assert word.dtype == np.float32
    # Silence sits exactly on the floor; the word rises far above it.
    floor = (10 * np.log10(spec.amin) - spec.mean) / spec.std
    np.testing.assert_allclose(silence, floor, atol=1e-5)
    assert float(word.max() - silence.max()) * spec.std > 40.0  # dB above the floor
    np.testing.assert_array_equal(preprocess(spec, spoken_yes), word)
    np.testing.assert_array_equal(preprocess(spec, spoken_yes.astype(np.float64)), word)


def test_audio_matches_librosa_melspectrogram(spoken_yes: np.ndarray) -> None:
    import librosa

    spec = AudioPreprocess(mean=0.0, std=1.0)
    y = fix_length(spoken_yes, spec.clip_samples)
    mel = librosa.feature.melspectrogram(
        y=y,
        sr=16000,
        n_fft=512,
        hop_length=160,
        n_mels=40,
        fmin=20.0,
        fmax=8000.0,
        pad_mode="constant",
    )
    want = librosa.power_to_db(mel, ref=1.0, amin=spec.amin, top_db=None)
    np.testing.assert_allclose(preprocess(spec, spoken_yes)[0], want, atol=1e-3)


def test_audio_loudness_is_absolute_not_per_clip(spoken_yes: np.ndarray) -> None:
    """Halving the amplitude lowers every loud bin by 6 dB (a per-clip reference would not)."""
    spec = AudioPreprocess(mean=0.0, std=1.0)
    loud = preprocess(spec, spoken_yes)
    quiet = preprocess(spec, spoken_yes * 0.5)
    mask = loud > -40
    np.testing.assert_allclose(loud[mask] - quiet[mask], 20 * np.log10(2), atol=0.05)


def test_audio_bad_inputs_and_fit(spoken_yes: np.ndarray) -> None:
    spec = AudioPreprocess()
    with pytest.raises(ValueError, match="1-D"):
        preprocess(spec, np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(ValueError, match="int16"):
        preprocess(spec, np.zeros(100, dtype=np.int16))
    with pytest.raises(ValueError, match="NaN"):
        preprocess(spec, np.full(100, np.nan, dtype=np.float32))
    clips = [spoken_yes, spoken_yes * 0.3, np.roll(spoken_yes, 2000)]
    fitted = fit_normalization(spec, clips)
    assert isinstance(fitted, AudioPreprocess)
    batch = preprocess_batch(fitted, clips)
    assert batch.shape == (3, 1, 40, 101)
    assert abs(float(batch.mean())) < 1e-4
    assert abs(float(batch.std()) - 1.0) < 1e-4
    with pytest.raises(ValueError, match="no variance"):
        fit_normalization(spec, [np.zeros(100, dtype=np.float32)])


@pytest.mark.parametrize("window", ["hann", "hamming", "blackman"])
@pytest.mark.parametrize(("n_fft", "hop"), [(512, 160), (400, 100), (2048, 71)])
def test_numpy_stft_and_mel_bank_match_librosa(
    spoken_yes: np.ndarray, window: melspec.Window, n_fft: int, hop: int
) -> None:
    """A node's numpy front-end against librosa, which the workstation trains with."""
    import librosa

    y = fix_length(spoken_yes, 16000)
    stft = librosa.stft(y, n_fft=n_fft, hop_length=hop, window=window, pad_mode="constant")
    want = np.abs(stft) ** 2
    got = melspec.power_spectrogram(y, n_fft, hop, window)
    assert got.shape == want.shape
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * float(want.max()))
    for n_mels, fmin, fmax in ((40, 20.0, 8000.0), (224, 40.0, 7600.0), (16, 0.0, 4000.0)):
        if n_mels * 4 > n_fft:  # filters narrower than a bin: librosa warns, nobody uses it
            continue
        basis = librosa.filters.mel(
            sr=16000, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, dtype=np.float32
        )
        np.testing.assert_allclose(
            melspec.mel_filter_bank(16000, n_fft, n_mels, fmin, fmax), basis, rtol=1e-5, atol=1e-8
        )


@pytest.mark.parametrize("top_db", [None, 30.0])
def test_numpy_power_to_db_matches_librosa(top_db: float | None) -> None:
    import librosa

    power = np.random.default_rng(0).exponential(1e-3, (40, 101)).astype(np.float32)
    power[:, :10] = 0.0  # digital silence sits on the floor
    want = librosa.power_to_db(power, ref=1.0, amin=1e-7, top_db=top_db)
    np.testing.assert_allclose(melspec.power_to_db(power, 1e-7, top_db), want, atol=1e-4)


def test_audio_front_end_needs_no_librosa_scipy_or_numba() -> None:
    """What a microphone node runs every tick, in an interpreter where the librosa stack
    cannot be imported: it works and never tries to."""
    code = """
import numpy as np
from edvit.preprocess import AudioPreprocess, preprocess
from edvit.media import resample
wave = resample(np.random.default_rng(0).standard_normal(44100).astype(np.float32), 44100, 16000)
print(preprocess(AudioPreprocess(), wave).shape)
"""
    run = run_blocked(code, ("librosa", "scipy", "numba"))
    assert run.proc.returncode == 0, run.proc.stderr
    assert run.proc.stdout.strip() == "(1, 40, 101)"
    assert run.attempts == []
