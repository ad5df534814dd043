"""Front-ends that turn a raw sample into the model's input: one source of truth.

Training (`modelgen`) and the edge nodes call exactly `preprocess` / `preprocess_batch`
with the spec stored in the bundle manifest, so a node sees the very tensors the model was
trained on. No torch here (nodes do not install it); OpenCV is imported only by the image
path, and the audio path is numpy alone (`edvit.melspec`), so a node loads neither librosa
nor an audio stack it does not use.

Conventions:
- Images are HWC (or HW) uint8 in **RGB** channel order, as every loader in `modelgen`
  returns them and as a node's capture source must deliver them (OpenCV's BGR frames are
  converted at the source, never here: a silent BGR/RGB mix-up costs accuracy, not errors).
- Audio is a 1-D float waveform in [-1, 1] at the spec's sample rate, mono.
- The output is float32 CHW: (C, height, width) for images, (1, n_mels, frames) for audio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal, overload

import numpy as np
import numpy.typing as npt
from pydantic import Field, TypeAdapter, model_validator

from edvit.config.base import StrictModel
from edvit.melspec import mel_filter_bank, power_spectrogram, power_to_db

FloatArray = npt.NDArray[np.float32]


class ImagePreprocess(StrictModel):
    """Resize to the model's size, convert the channel count, scale to [0, 1], normalize.

    Input: HW or HWC uint8 in RGB order (C = 1, 3, or 4 with alpha dropped), any size.
    """

    kind: Literal["image"] = Field(default="image", description="Selects the image front-end.")
    height: int = Field(ge=1, le=8192, description="Model input height in pixels.")
    width: int = Field(ge=1, le=8192, description="Model input width in pixels.")
    channels: Literal[1, 3] = Field(
        default=3,
        description="Model input channels: 1 (grayscale, BT.601 luma of RGB inputs) or 3 "
        "(RGB; grayscale inputs are repeated).",
    )
    mean: list[float] = Field(
        default_factory=lambda: [0.5],
        min_length=1,
        description="Per-channel mean subtracted after scaling to [0, 1]; one value applies to "
        "every channel. A build measures it on the training split unless the recipe gives "
        "mean or std (e.g. a pretrained model's own).",
    )
    std: list[float] = Field(
        default_factory=lambda: [0.5],
        min_length=1,
        description="Per-channel standard deviation divided by after subtracting the mean; "
        "one value applies to every channel.",
    )

    @model_validator(mode="after")
    def _check_stats(self) -> ImagePreprocess:
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise ValueError(
                    f"{name} has {len(values)} values; give 1 or one per channel ({self.channels})"
                )
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"{name} must be finite numbers")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be greater than 0")
        return self

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the model input: the ViT's img_size."""
        return (self.height, self.width)

    @property
    def in_chans(self) -> int:
        """Channels of the model input."""
        return self.channels


class AudioPreprocess(StrictModel):
    """A fixed window of audio → log-mel spectrogram in absolute dB → normalized.

    Decibels are taken relative to a fixed reference (power 1.0, floor `amin`), not to each
    clip's own maximum (librosa's `ref=np.max`). A streaming node sees quiet rooms, loud
    speech and everything between; with a per-clip reference a near-silent window is
    stretched to the same 0 dB peak as a shouted word and its noise floor looks like speech.
    With a fixed reference the spectrogram of a sound does not depend on what else is in
    the window, and silence stays silence. `amin` sets the floor every quieter bin (and
    digital zero padding) is clamped to, so a zero-padded training clip and a live
    microphone's noise floor look alike.
    """

    kind: Literal["audio"] = Field(default="audio", description="Selects the log-mel front-end.")
    sample_rate: int = Field(
        default=16000, ge=1000, le=384000, description="Expected input sample rate in Hz."
    )
    clip_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Window length; longer inputs are centre-cropped, shorter zero-padded.",
    )
    n_fft: int = Field(default=512, ge=16, le=65536, description="FFT (and window) length.")
    hop_length: int = Field(default=160, ge=1, le=65536, description="Samples between frames.")
    window: Literal["hann", "hamming", "blackman"] = Field(
        default="hann", description="STFT analysis window."
    )
    n_mels: int = Field(default=40, ge=1, le=512, description="Mel bands: the input height.")
    fmin: float = Field(default=20.0, ge=0, description="Lowest mel filter edge in Hz.")
    fmax: float | None = Field(
        default=None,
        gt=0,
        description="Highest mel filter edge in Hz; null means sample_rate / 2.",
    )
    amin: float = Field(
        default=1e-7,
        gt=0,
        description="Power floor before taking dB (10·log10(amin) is the lowest value): "
        "quieter bins and silence all map to it.",
    )
    top_db: float | None = Field(
        default=None,
        gt=0,
        description="If set, also clamp bins more than this many dB below the clip's loudest "
        "bin (librosa's top_db). Null (default) keeps the absolute floor only, which does "
        "not depend on the clip's loudness.",
    )
    n_frames: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="Frames given to the model (cropped or padded with the floor value); "
        "null means every frame of the window, 1 + clip samples // hop_length.",
    )
    mean: float = Field(
        default=-43.0,
        description="Mean (dB) subtracted. A build measures it on the training split unless "
        "the recipe gives mean or std.",
    )
    std: float = Field(
        default=17.0,
        gt=0,
        description="Standard deviation (dB) divided by. The defaults are what "
        "`fit_normalization` measures on `modelgen dataset keywords` clips.",
    )

    @model_validator(mode="after")
    def _check_band(self) -> AudioPreprocess:
        nyquist = self.sample_rate / 2
        top = self.fmax if self.fmax is not None else nyquist
        if top > nyquist:
            raise ValueError(f"fmax {top:g} Hz is above the Nyquist frequency {nyquist:g} Hz")
        if self.fmin >= top:
            raise ValueError(f"fmin {self.fmin:g} Hz must be below fmax {top:g} Hz")
        if self.clip_samples < 1:
            raise ValueError("clip_seconds × sample_rate is less than one sample")
        if not (math.isfinite(self.mean) and math.isfinite(self.std)):
            raise ValueError("mean and std must be finite numbers")
        return self

    @property
    def clip_samples(self) -> int:
        """Samples in one window."""
        return round(self.clip_seconds * self.sample_rate)

    @property
    def frames(self) -> int:
        """Spectrogram frames given to the model: its input width."""
        if self.n_frames is not None:
            return self.n_frames
        return 1 + self.clip_samples // self.hop_length

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) = (n_mels, frames): the ViT's img_size."""
        return (self.n_mels, self.frames)

    @property
    def in_chans(self) -> int:
        """Channels of the model input (always 1)."""
        return 1


PreprocessSpec = Annotated[ImagePreprocess | AudioPreprocess, Field(discriminator="kind")]
_SPEC_ADAPTER: TypeAdapter[ImagePreprocess | AudioPreprocess] = TypeAdapter(PreprocessSpec)


def parse_preprocess(data: Any) -> ImagePreprocess | AudioPreprocess:
    """Validate a preprocessing spec from JSON data (e.g. a bundle manifest's section)."""
    return _SPEC_ADAPTER.validate_python(data)


# --------------------------------------------------------------------------- images


def _image_to_float(spec: ImagePreprocess, image: np.ndarray) -> FloatArray:
    """Resize + channel conversion + /255, before mean/std: (C, H, W) float32 in [0, 1]."""
    import cv2

    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0..255), got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]  # RGBA: the alpha channel carries no class information
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(
            f"image must be HW, HWx1, HWx3 (RGB) or HWx4 (RGBA), got shape {image.shape}"
        )
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"image is empty (shape {image.shape})")
    if (h, w) != (spec.height, spec.width):
        # INTER_AREA averages the source pixels a target pixel covers (no aliasing when
        # shrinking) but degenerates to nearest-neighbour when growing, where LINEAR is right.
        shrinking = spec.height <= h and spec.width <= w
        interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        image = cv2.resize(image, (spec.width, spec.height), interpolation=interp)
    if image.ndim == 2:
        chw = image[None, :, :]
        if spec.channels == 3:
            chw = np.repeat(chw, 3, axis=0)
    elif spec.channels == 1:
        chw = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)[None, :, :]
    else:
        chw = image.transpose(2, 0, 1)
    out = np.ascontiguousarray(chw, dtype=np.float32)  # a new array: chw is uint8
    out *= np.float32(1 / 255)
    return out


def _channel_stats(spec: ImagePreprocess) -> tuple[FloatArray, FloatArray]:
    c = spec.channels
    mean = np.broadcast_to(np.asarray(spec.mean, dtype=np.float32), (c,))
    std = np.broadcast_to(np.asarray(spec.std, dtype=np.float32), (c,))
    return mean.reshape(c, 1, 1), std.reshape(c, 1, 1)


# --------------------------------------------------------------------------- audio


def fix_length(wave: np.ndarray, length: int) -> FloatArray:
    """Centre-crop or symmetrically zero-pad a 1-D waveform to `length` samples."""
    n = wave.shape[0]
    if n == length:
        return np.asarray(wave, dtype=np.float32)
    if n > length:
        start = (n - length) // 2
        return np.asarray(wave[start : start + length], dtype=np.float32)
    out = np.zeros(length, dtype=np.float32)
    left = (length - n) // 2
    out[left : left + n] = wave
    return out


def _audio_to_db(spec: AudioPreprocess, wave: np.ndarray) -> FloatArray:
    """Window + log-mel in dB, before mean/std: (1, n_mels, frames) float32."""
    if not isinstance(wave, np.ndarray):
        raise TypeError(f"audio must be a numpy array, got {type(wave).__name__}")
    if wave.ndim != 1:
        raise ValueError(f"audio must be a 1-D mono waveform, got shape {wave.shape}")
    if not np.issubdtype(wave.dtype, np.floating):
        raise ValueError(
            f"audio must be float samples in [-1, 1], got dtype {wave.dtype} "
            "(divide int16 PCM by 32768)"
        )
    if not np.all(np.isfinite(wave)):
        raise ValueError("audio contains NaN or infinite samples")
    y = fix_length(wave, spec.clip_samples)
    power = power_spectrogram(y, spec.n_fft, spec.hop_length, spec.window)
    fmax = spec.fmax if spec.fmax is not None else spec.sample_rate / 2
    basis = mel_filter_bank(spec.sample_rate, spec.n_fft, spec.n_mels, spec.fmin, fmax)
    # Not `basis @ power`: for a product this small, multi-threaded BLAS spends its time
    # waking threads, and on a busy 2-core box it measured 24 ms instead of 0.4 ms here.
    mel = np.einsum("mf,ft->mt", basis, power, optimize=False)
    db = power_to_db(mel, amin=spec.amin, top_db=spec.top_db)
    out: FloatArray = np.asarray(db, dtype=np.float32)
    frames = spec.frames
    if out.shape[1] > frames:
        start = (out.shape[1] - frames) // 2
        out = out[:, start : start + frames]
    elif out.shape[1] < frames:
        floor = np.float32(10 * math.log10(spec.amin))
        padded = np.full((out.shape[0], frames), floor, dtype=np.float32)
        left = (frames - out.shape[1]) // 2
        padded[:, left : left + out.shape[1]] = out
        out = padded
    return out[None, :, :]


# --------------------------------------------------------------------------- public API


def _unnormalized(spec: ImagePreprocess | AudioPreprocess, sample: np.ndarray) -> FloatArray:
    if isinstance(spec, ImagePreprocess):
        return _image_to_float(spec, sample)
    return _audio_to_db(spec, sample)


def preprocess(spec: ImagePreprocess | AudioPreprocess, sample: np.ndarray) -> FloatArray:
    """One raw sample → the model's input, float32 (C, H, W). See the module docstring."""
    # In place on the fresh array `_unnormalized` made: the same float32 operations in the
    # same order as `(x - mean) / std`, without two more arrays of the input's size per tick.
    x = np.ascontiguousarray(_unnormalized(spec, sample))
    if isinstance(spec, ImagePreprocess):
        mean, std = _channel_stats(spec)
        x -= mean
        x /= std
    else:
        x -= np.float32(spec.mean)
        x /= np.float32(spec.std)
    return x


def preprocess_batch(
    spec: ImagePreprocess | AudioPreprocess, samples: Sequence[np.ndarray]
) -> FloatArray:
    """Many raw samples → float32 (B, C, H, W), in order."""
    h, w = spec.input_size
    out = np.empty((len(samples), spec.in_chans, h, w), dtype=np.float32)
    for i, sample in enumerate(samples):
        try:
            out[i] = preprocess(spec, sample)
        except TypeError as exc:
            raise TypeError(f"sample {i}: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"sample {i}: {exc}") from None
    return out


@overload
def fit_normalization(spec: ImagePreprocess, samples: Sequence[np.ndarray]) -> ImagePreprocess: ...
@overload
def fit_normalization(spec: AudioPreprocess, samples: Sequence[np.ndarray]) -> AudioPreprocess: ...
def fit_normalization(
    spec: ImagePreprocess | AudioPreprocess, samples: Sequence[np.ndarray]
) -> ImagePreprocess | AudioPreprocess:
    """A copy of `spec` whose mean/std are measured (per channel) on `samples`.

    Call it on the training split only, so validation and test stay unseen. Statistics are
    accumulated in float64 one sample at a time: no (B, C, H, W) copy of the data.
    """
    if len(samples) == 0:
        raise ValueError("fit_normalization needs at least one sample")
    c = spec.in_chans
    total = np.zeros(c, dtype=np.float64)
    total_sq = np.zeros(c, dtype=np.float64)
    count = 0
    for i, sample in enumerate(samples):
        try:
            x = _unnormalized(spec, sample).astype(np.float64)
        except TypeError as exc:
            raise TypeError(f"sample {i}: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"sample {i}: {exc}") from None
        total += x.sum(axis=(1, 2))
        total_sq += np.square(x).sum(axis=(1, 2))
        count += x.shape[1] * x.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    if np.any(std < 1e-6):
        raise ValueError(
            f"samples have (almost) no variance (std {std.tolist()}); cannot normalize by it"
        )
    data = spec.model_dump()
    if isinstance(spec, ImagePreprocess):
        data.update(mean=[float(m) for m in mean], std=[float(s) for s in std])
        return ImagePreprocess.model_validate(data)
    data.update(mean=float(mean[0]), std=float(std[0]))
    return AudioPreprocess.model_validate(data)
