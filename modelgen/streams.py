"""Long recordings strung from labelled clips, heard as a microphone node hears them.

A node does not hear clips: it hears a stream, one window ending at every tick, and most
windows hold room noise, other words or two halves of two sounds. Clip-level validation
says nothing about those windows; a stream made of the same clips does. `modelgen build`
calibrates event thresholds on a stream of validation clips (`events.stream`), and
bench/stream.py scores a bundle on a stream of held-out voices, both with `make_stream`
and `window_ends`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from edvit.demo.keywords import Spoken

GAP_S = (5.0, 25.0)
"""Seconds of background between two keywords: a keyword every 15 s on average."""


def make_stream(
    background: Sequence[npt.NDArray[np.float32]],
    words: Mapping[str, Sequence[npt.NDArray[np.float32]]],
    seconds: float,
    clip: int,
    rate: int,
    rng: np.random.Generator,
    gap_s: tuple[float, float] = GAP_S,
) -> tuple[npt.NDArray[np.float32], list[Spoken]]:
    """Background clips back to back with a keyword clip every `gap_s` seconds (a word and a
    clip drawn at random), each clip cut or zero-padded to `clip` samples: the waveform and
    where each keyword is."""
    labels = [w for w, clips in words.items() if clips]
    if not background or not labels:
        raise ValueError("a stream needs background clips and clips of at least one keyword")
    total = int(seconds * rate)
    out = np.zeros(total + clip, dtype=np.float32)
    spoken: list[Spoken] = []
    length = 0
    next_word = rng.uniform(*gap_s) * rate
    while length < total:
        if length >= next_word:
            label = labels[int(rng.integers(len(labels)))]
            wave = words[label][int(rng.integers(len(words[label])))]
            spoken.append(Spoken(label, length / rate, (length + clip) / rate))
            next_word = length + clip + rng.uniform(*gap_s) * rate
        else:
            wave = background[int(rng.integers(len(background)))]
        n = min(clip, len(wave))
        out[length : length + n] = wave[:n]
        length += clip
    return out[:length], spoken


def window_ends(n_samples: int, clip: int, rate: int, period_s: float) -> npt.NDArray[np.int64]:
    """Where the windows a `recording` source gives end, in samples: tick k hears the `clip`
    samples ending k·period_s into the stream; from the first whole window to the end.
    Window k of `wave` is `wave[end - clip : end]`."""
    ticks = np.arange(1, int(n_samples / (period_s * rate)) + 1)
    ends = np.round(ticks * period_s * rate).astype(np.int64)
    return ends[(ends >= clip) & (ends <= n_samples)]
