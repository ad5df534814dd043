"""A room and a cheap microphone, imitated on synthetic speech for training clips.

- Room: the word convolved with a synthetic impulse response, the textbook simple model: a
  direct path, then exponentially decaying Gaussian noise whose decay gives the drawn RT60
  (the time for the energy to fall 60 dB), starting after a short pre-delay, mixed at a
  drawn direct-to-reverberant ratio.
- Microphone: the gain of an order-2 Butterworth band-pass between a drawn low cut (a small
  capsule's bass roll-off) and a drawn high cut (a cheap ADC's or codec's band), on the
  whole clip.

Both are drawn per clip with their own probability, so a share of the corpus stays clean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

RT60_S = (0.15, 0.8)  # living room … bare hall
PREDELAY_S = (0.002, 0.02)
DRR_DB = (-3.0, 12.0)  # direct over reverberant energy
LOW_CUT_HZ = (80.0, 400.0)
HIGH_CUT_HZ = (3000.0, 7000.0)


@dataclass(frozen=True)
class RoomSpec:
    """How often a clip gets a room and a microphone band (0 … 1 each)."""

    reverb: float = 0.0
    band: float = 0.0

    def __post_init__(self) -> None:
        for name in ("reverb", "band"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"room {name} probability must be in [0, 1], got {value}")


NO_ROOM = RoomSpec()


def impulse_response(
    rt60_s: float, drr_db: float, predelay_s: float, rate: int, rng: np.random.Generator
) -> FloatArray:
    """Direct path at 0, then a noise tail decaying 60 dB in `rt60_s`; unit direct path."""
    n = max(2, round(rt60_s * rate))
    start = max(1, round(predelay_s * rate))
    t = np.arange(n - start) / rate
    tail = rng.standard_normal(n - start) * np.exp(-3 * math.log(10) * t / rt60_s)  # −60 dB
    energy = float(np.sum(tail**2))
    tail *= math.sqrt(10 ** (-drr_db / 10) / energy) if energy > 0 else 0.0
    ir = np.zeros(n)
    ir[0] = 1.0
    ir[start:] = tail
    return ir.astype(np.float32)


def reverberate(wave: FloatArray, ir: FloatArray) -> FloatArray:
    """`wave` through `ir`, the first len(wave) samples (the tail past the clip is cut)."""
    size = len(wave) + len(ir) - 1
    fft = 1 << (size - 1).bit_length()
    out = np.fft.irfft(np.fft.rfft(wave, fft) * np.fft.rfft(ir, fft), fft)[: len(wave)]
    return out.astype(np.float32)


def band_limit(wave: FloatArray, low_hz: float, high_hz: float, rate: int) -> FloatArray:
    """The gain of an order-2 Butterworth band-pass, applied over the clip's spectrum (zero
    phase), as a small microphone and its ADC hear."""
    spectrum = np.fft.rfft(wave)
    f = np.maximum(np.fft.rfftfreq(len(wave), 1 / rate), 1e-3)
    gain = 1 / np.sqrt((1 + (f / high_hz) ** 4) * (1 + (low_hz / f) ** 4))
    return np.fft.irfft(spectrum * gain, len(wave)).astype(np.float32)


def draw_room(spec: RoomSpec, rng: np.random.Generator) -> tuple[float, float, float, float, float]:
    """(rt60 s, drr dB, pre-delay s, low cut Hz, high cut Hz); 0 where not drawn. Every
    value is drawn whatever the probabilities, so a clip's other draws do not move."""
    rt60, drr, pre = (float(rng.uniform(*r)) for r in (RT60_S, DRR_DB, PREDELAY_S))
    low, high = float(rng.uniform(*LOW_CUT_HZ)), float(rng.uniform(*HIGH_CUT_HZ))
    room, band = rng.random() < spec.reverb, rng.random() < spec.band
    return (
        rt60 if room else 0.0,
        drr if room else 0.0,
        pre if room else 0.0,
        low if band else 0.0,
        high if band else 0.0,
    )
