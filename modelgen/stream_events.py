"""The event rules of an audio bundle, calibrated on a stream of its validation clips.

`modelgen build` with `events.stream` set: the validation split's clips strung into a
stream (modelgen.streams), every window a node would hear through the fused model, then per
patience tried the thresholds for the target false accepts per hour
(modelgen.calibration), and the patience that hears the most keywords at them. Only the
validation split is used, so the test split and held-out corpora stay unseen.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from aggregator.events import Rules
from edvit.bundle import EventsEntry, EventTiming, StreamValidation
from edvit.config.dataset import SplitRecord
from edvit.config.recipe import Recipe, StreamCalibration
from edvit.demo.keywords import Spoken
from edvit.preprocess import AudioPreprocess, preprocess_batch
from modelgen.calibration import StreamTicks, calibrate_stream_thresholds, stream_figures
from modelgen.streams import make_stream, window_ends

Log = Callable[[str], None]
Fused = Callable[[np.ndarray], np.ndarray]
"""Preprocessed windows (T, 1, H, W) → fused class probabilities (T, C)."""

BATCH = 4096  # windows preprocessed and fused at a time (16 MiB of 32 × 32 inputs)


def validation_stream(
    recipe: Recipe,
    recipe_dir: Path,
    record: SplitRecord,
    spec: AudioPreprocess,
    stream: StreamCalibration,
    fused: Fused,
) -> tuple[StreamTicks, list[Spoken]]:
    """The fused model's top-1 and score at every tick of a stream of validation clips, and
    where its keywords are."""
    from modelgen.datasets import load_dataset
    from modelgen.datasets.split import apply_split

    dataset = load_dataset(recipe.dataset, recipe_dir)
    val = apply_split(record, dataset).part("val")
    background = set(recipe.dataset.background_classes)
    quiet: list[np.ndarray] = []
    words: dict[str, list[np.ndarray]] = {}
    for i in val:
        name = dataset.classes[dataset.labels[i]]
        if name in background:
            quiet.append(dataset.samples[i])
        else:
            words.setdefault(name, []).append(dataset.samples[i])
    rate, clip = spec.sample_rate, spec.clip_samples
    rng = np.random.default_rng([recipe.seed, 0x5EA])
    wave, spoken = make_stream(quiet, words, stream.hours * 3600, clip, rate, rng)
    ends = window_ends(len(wave), clip, rate, stream.period_s)
    probs = np.concatenate(
        [
            fused(preprocess_batch(spec, [wave[e - clip : e] for e in ends[i : i + BATCH]]))
            for i in range(0, len(ends), BATCH)
        ]
    )
    ticks = StreamTicks(ts=ends / rate, top=probs.argmax(axis=1), score=probs.max(axis=1))
    return ticks, spoken


def stream_events(
    recipe: Recipe,
    recipe_dir: Path,
    record: SplitRecord,
    classes: list[str],
    spec: AudioPreprocess,
    fused: Fused,
    log: Log,
) -> EventsEntry:
    """Thresholds and patience from the validation stream, with what they gave on it."""
    events, stream = recipe.events, recipe.events.stream
    if stream is None:
        raise ValueError("events.stream is not set")
    ticks, spoken = validation_stream(recipe, recipe_dir, record, spec, stream, fused)
    background = recipe.dataset.background_classes
    window_s = spec.clip_seconds
    best: tuple[int, int, dict[str, float], dict[str, Any]] | None = None
    by_patience: dict[str, float] = {}
    for patience in stream.patience:
        timing = EventTiming(patience=patience, refractory_s=events.refractory_s)
        thresholds = calibrate_stream_thresholds(
            ticks,
            spoken,
            classes,
            background,
            timing,
            stream.target_per_hour,
            events.min_threshold,
            window_s,
        )
        rules = Rules(thresholds, patience, events.refractory_s)
        figures = stream_figures(ticks, spoken, classes, rules, window_s)
        by_patience[str(patience)] = figures["hit_rate"]
        log(
            f"events: stream patience {patience}: hits {figures['hits']}/{figures['keywords']}, "
            f"{figures['false_accepts_per_hour']:.2f} false accepts/h, thresholds {thresholds}"
        )
        if best is None or figures["hits"] > best[0]:
            best = (figures["hits"], patience, thresholds, figures)
    if best is None:
        raise ValueError("events.stream.patience is empty")
    _, patience, thresholds, figures = best
    validation = StreamValidation(
        hours=figures["hours"],
        period_s=stream.period_s,
        target_per_hour=stream.target_per_hour,
        keywords=figures["keywords"],
        hits=figures["hits"],
        false_accepts=figures["false_accepts"],
        by_patience=by_patience,
    )
    log(f"events: patience {patience} ({figures['hours']:.2f} h of validation stream)")
    return EventsEntry(
        thresholds=thresholds,
        patience=patience,
        refractory_s=events.refractory_s,
        stream=validation,
    )
