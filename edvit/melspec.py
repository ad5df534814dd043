"""Log-mel spectrogram in numpy alone: what a microphone node computes every tick.

The same arithmetic as librosa's `stft(center=True, pad_mode="constant")`,
`filters.mel` (Slaney scale and norm) and `power_to_db`, written out so that a node does not
load librosa, scipy and numba: together they cost a node ~240 MiB of memory and, on the first
start after an install, ~18 s of JIT. `tests/test_preprocess.py` checks every function here
against librosa, which the workstation (and the test environment) still installs.
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
Window = Literal["hann", "hamming", "blackman"]

# Generalised cosine coefficients of the periodic windows (scipy.signal.get_window, fftbins)
_WINDOW_COEFFS: dict[str, tuple[float, ...]] = {
    "hann": (0.5, 0.5),
    "hamming": (0.54, 0.46),
    "blackman": (0.42, 0.50, 0.08),
}

# Slaney's mel scale: linear below 1 kHz, logarithmic above
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


@functools.lru_cache(maxsize=8)
def analysis_window(kind: Window, n_fft: int) -> npt.NDArray[np.float64]:
    """The periodic (DFT-even) window of `n_fft` samples, float64, read-only."""
    phase = 2 * np.pi * np.arange(n_fft) / n_fft
    window = np.zeros(n_fft, dtype=np.float64)
    for k, a in enumerate(_WINDOW_COEFFS[kind]):
        window += (-1) ** k * a * np.cos(k * phase)
    window.setflags(write=False)
    return window


def _hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    mel = hz / _F_SP
    log = hz >= _MIN_LOG_HZ
    mel[log] = _MIN_LOG_MEL + np.log(hz[log] / _MIN_LOG_HZ) / _LOGSTEP
    return mel


def _mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    hz = mel * _F_SP
    log = mel >= _MIN_LOG_MEL
    hz[log] = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel[log] - _MIN_LOG_MEL))
    return hz


@functools.lru_cache(maxsize=8)
def mel_filter_bank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float
) -> FloatArray:
    """Triangular Slaney-normalised filters, (n_mels, 1 + n_fft // 2) float32, read-only."""
    fft_freqs = np.linspace(0, sample_rate / 2, 1 + n_fft // 2)
    lo, hi = _hz_to_mel(np.array([fmin, fmax], dtype=np.float64))
    edges = _mel_to_hz(np.linspace(lo, hi, n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]  # (n_mels + 2, bins)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # equal area per filter
    basis = weights.astype(np.float32)
    basis.setflags(write=False)
    return basis


def power_spectrogram(y: FloatArray, n_fft: int, hop_length: int, window: Window) -> FloatArray:
    """|STFT|² of a 1-D signal, frames centred on multiples of `hop_length` (zero padded
    by n_fft // 2 at both ends): (1 + n_fft // 2, 1 + len(y) // hop_length) float32."""
    padded = np.pad(y, n_fft // 2)
    n_frames = 1 + (padded.shape[0] - n_fft) // hop_length
    frames = np.lib.stride_tricks.as_strided(
        padded,
        shape=(n_frames, n_fft),
        strides=(padded.strides[0] * hop_length, padded.strides[0]),
        writeable=False,
    )  # (T, n_fft), a view
    spectrum = np.fft.rfft(frames * analysis_window(window, n_fft), axis=1).astype(np.complex64)
    power: FloatArray = np.square(np.abs(spectrum)).T  # (bins, T)
    return power


def power_to_db(power: FloatArray, amin: float, top_db: float | None) -> FloatArray:
    """10·log10(max(power, amin)) against a reference of 1.0, optionally floored at
    `top_db` below the loudest bin."""
    db = np.float32(10.0) * np.log10(np.maximum(np.float32(amin), power))
    if top_db is not None:
        db = np.maximum(db, db.max() - np.float32(top_db))
    return db.astype(np.float32, copy=False)
