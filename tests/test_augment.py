"""Training augmentation: SpecAugment masks on the log-mel, a room and a microphone band on
the synthetic clips (modelgen.datasets.room)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modelgen.datasets.room import (
    NO_ROOM,
    RoomSpec,
    band_limit,
    draw_room,
    impulse_response,
    reverberate,
)
from modelgen.train import random_mask

RATE = 16000


def test_random_mask_blanks_one_span_per_sample() -> None:
    x = torch.ones(64, 1, 32, 32)
    gen = torch.Generator().manual_seed(0)
    rows = random_mask(x, 6, 2, gen)
    zero_rows = (rows == 0).all(dim=3).squeeze(1)  # (B, H): whole mel bands blanked
    assert zero_rows.sum(1).max() <= 6
    assert zero_rows.sum(1).max() >= 4  # widths are drawn up to 6
    for r in zero_rows:  # one contiguous band each
        idx = torch.nonzero(r).flatten()
        if len(idx):
            assert int(idx[-1] - idx[0]) + 1 == len(idx)
    assert ((rows == 0) == zero_rows[:, None, :, None]).all()  # nothing else touched
    cols = random_mask(x, 5, 3, gen)
    assert ((cols == 0).all(dim=2).squeeze(1).sum(1) <= 5).all()
    assert random_mask(x, 0, 2, gen) is x


def test_impulse_response_decays_by_rt60() -> None:
    rng = np.random.default_rng(0)
    ir = impulse_response(0.5, drr_db=0.0, predelay_s=0.01, rate=RATE, rng=rng)
    assert ir[0] == 1.0
    assert np.all(ir[1:160] == 0)  # the pre-delay
    tail = ir[1:].astype(np.float64)
    assert math.isclose(float(np.sum(tail**2)), 1.0, rel_tol=1e-5)  # DRR 0 dB
    early = np.mean(tail[160:1760] ** 2)  # 10–110 ms
    late = np.mean(tail[6160:7760] ** 2)  # 385–485 ms: 375 ms later ≈ 45 dB lower
    assert 35 < 10 * math.log10(early / late) < 55


def test_reverberation_smears_a_click_and_keeps_length() -> None:
    click = np.zeros(RATE, np.float32)
    click[100] = 1.0
    rng = np.random.default_rng(1)
    out = reverberate(click, impulse_response(0.3, 6.0, 0.005, RATE, rng))
    assert out.shape == click.shape
    assert out[100] == pytest.approx(1.0, abs=1e-5)  # the direct path
    assert np.abs(out[2000:4000]).max() > 1e-3  # the tail, 100–250 ms later
    assert np.abs(out[:100]).max() < 1e-5  # nothing before the sound


def test_band_limit_cuts_outside_the_band() -> None:
    t = np.arange(RATE) / RATE
    tone = lambda hz: np.sin(2 * np.pi * hz * t).astype(np.float32)  # noqa: E731
    rms = lambda w: float(np.sqrt(np.mean(w**2)))  # noqa: E731
    inside = rms(band_limit(tone(1000), 200, 4000, RATE)) / rms(tone(1000))
    low = rms(band_limit(tone(50), 200, 4000, RATE)) / rms(tone(50))
    high = rms(band_limit(tone(7500), 200, 4000, RATE)) / rms(tone(7500))
    assert inside > 0.95
    assert low < 0.08  # (50/200)² at order 2
    assert high < 0.35


def test_draws_follow_the_probabilities() -> None:
    rng = np.random.default_rng(2)
    draws = [draw_room(RoomSpec(reverb=0.5, band=0.25), rng) for _ in range(2000)]
    rooms = sum(d[0] > 0 for d in draws) / len(draws)
    bands = sum(d[3] > 0 for d in draws) / len(draws)
    assert 0.45 < rooms < 0.55
    assert 0.2 < bands < 0.3
    assert all(d == (0.0,) * 5 for d in (draw_room(NO_ROOM, rng) for _ in range(20)))
    with pytest.raises(ValueError, match="reverb"):
        RoomSpec(reverb=1.5)
