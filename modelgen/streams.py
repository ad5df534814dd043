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


FULL_WORD = 0.9
"""A window holding at least this share of a keyword's loud part is that keyword…"""
WORD_FRAGMENT = 0.3
"""…and one holding at most this share of every keyword's is background (between: left out)."""
EXTENT_DB = 20.0  # a word's extent: its 10 ms frames within this many dB of its loudest


def word_extent(wave: npt.NDArray[np.float32], rate: int) -> tuple[int, int]:
    """Where the loud part of a clip is, in samples [start, end): from its first to its last
    10 ms frame within EXTENT_DB of the loudest (at the SNRs of a keyword corpus, the word)."""
    hop = max(1, rate // 100)
    n = len(wave) // hop
    if n == 0:
        return 0, len(wave)
    energy = np.square(wave[: n * hop].astype(np.float64)).reshape(n, hop).mean(axis=1)
    loud = np.flatnonzero(energy >= energy.max() * 10 ** (-EXTENT_DB / 10))
    return int(loud[0]) * hop, (int(loud[-1]) + 1) * hop


def splice_windows(
    clips: Sequence[npt.NDArray[np.float32]],
    labels: Sequence[int],
    keywords: frozenset[int],
    count: int,
    clip: int,
    rate: int,
    rng: np.random.Generator,
) -> tuple[list[npt.NDArray[np.float32]], list[int]]:
    """`count` training windows as a stream holds them: two clips side by side (a keyword
    clip on one side a quarter of the time each, else two background clips) and the window
    at a random offset across them. A window holding FULL_WORD of one keyword's word and no
    more than WORD_FRAGMENT of another is that keyword; one holding at most WORD_FRAGMENT of
    any keyword's word takes the label of the background clip with the most samples in it;
    any other is drawn again. `labels[i]` is clip i's class; `keywords` the classes that
    fire (the rest are background)."""
    is_kw = np.array([label in keywords for label in labels])
    kw, bg = np.flatnonzero(is_kw), np.flatnonzero(~is_kw)
    if len(kw) == 0 or len(bg) == 0:
        raise ValueError("splicing needs keyword clips and background clips")
    extents = {i: word_extent(clips[i][:clip], rate) for i in kw.tolist()}
    xs: list[npt.NDArray[np.float32]] = []
    ys: list[int] = []
    for _ in range(50 * count):
        if len(xs) == count:
            break
        pick = rng.random()
        a = int(rng.choice(kw if pick < 0.25 else bg))
        b = int(rng.choice(kw if 0.25 <= pick < 0.5 else bg))
        offset = int(rng.integers(1, clip))  # the window is pair[offset : offset + clip]
        sides = ((a, offset, clip), (b, 0, offset))  # the part of each clip in the window
        full, fragment, background = [], False, []
        for i, lo, hi in sides:
            if is_kw[i]:
                s, e = extents[i]
                share = max(0, min(e, hi) - max(s, lo)) / max(1, e - s)
                if share >= FULL_WORD:
                    full.append(labels[i])
                elif share > WORD_FRAGMENT:
                    fragment = True
            else:
                background.append((hi - lo, labels[i]))
        if fragment or len(full) > 1 or (not full and not background):
            continue
        pair = np.zeros(2 * clip, dtype=np.float32)
        for k, i in enumerate((a, b)):
            n = min(clip, len(clips[i]))
            pair[k * clip : k * clip + n] = clips[i][:n]
        xs.append(pair[offset : offset + clip])
        ys.append(full[0] if full else max(background)[1])
    return xs, ys
