"""The tiny digits recipe the tests build with the installed `modelgen`: seconds, not minutes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

BIN = Path(sys.executable).parent


def tiny_digits(name: str, **changes: Any) -> dict[str, Any]:
    """A 3-sub-model digits recipe on a one-block ViT; `changes` replace top-level sections."""
    recipe: dict[str, Any] = {
        "name": name,
        "seed": 0,
        "dataset": {
            "kind": "digits",
            "max_per_class": 40,
            "split": {"val_fraction": 0.2, "test_fraction": 0.25, "seed": 0},
        },
        "preprocess": {"kind": "image", "height": 8, "width": 8, "channels": 1},
        "model": {"arch": "vit:img=8,patch=2,chans=1,embed=32,depth=1,heads=4"},
        "train": {"epochs": 10, "batch_size": 32, "lr": 0.003},
        "plan": {"num_submodels": 3},
        "grouping": "confusion",
        "pruning": {"method": "kl", "samples": 32},
        "distill": {"epochs": 4, "batch_size": 32, "lr": 0.003},
        "fusion": {"epochs": 10},
        "threads": 1,
    }
    recipe.update(changes)
    return recipe


BACKGROUND = ["_silence_", "_unknown_"]
"""The background classes `modelgen dataset keywords` makes beside the words."""


def tiny_keywords_data(
    root: str = "words",
    classes: Sequence[str] = ("yes", "no", "up", "down"),
    background: Sequence[str] = (),
    split: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The dataset and preprocess sections of a recipe on generated keyword clips (1 s at
    16 kHz → 16 mels × 32 frames); `background` classes are among `classes`."""
    dataset: dict[str, Any] = {
        "kind": "audiofolder",
        "root": root,
        "classes": list(classes),
        "split": dict(split or {"val_fraction": 0.25, "test_fraction": 0.25, "seed": 0}),
    }
    if background:
        dataset["background_classes"] = list(background)
    return {
        "dataset": dataset,
        "preprocess": {"kind": "audio", "n_mels": 16, "hop_length": 500, "n_frames": 32},
    }


def build_bundle(root: Path, recipe: dict[str, Any], *options: str, timeout: float = 600) -> Path:
    """`modelgen build` of `recipe` into `root/bundle` (plus `options`), as a user runs it."""
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = root / "bundle"
    proc = subprocess.run(
        [str(BIN / "modelgen"), "build", str(path), "--out", str(out), *options],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"modelgen build failed:\n{proc.stderr[-3000:]}")
    return out
