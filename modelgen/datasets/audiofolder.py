"""A folder of sound files per class (Speech Commands, GTZAN, `modelgen dataset keywords`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from edvit import media
from edvit.config.dataset import AudioFolderDataset
from modelgen.datasets.base import (
    Dataset,
    DatasetError,
    FolderFormat,
    load_class_folders,
    resolve_root,
)


def read_wav(path: Path, sample_rate: int) -> npt.NDArray[np.float32]:
    """A sound file as mono float32 at `sample_rate` (edvit.media, as the nodes read it)."""
    try:
        return media.read_wav(path, sample_rate)
    except media.MediaError as exc:
        raise DatasetError(str(exc)) from None


NOISE_FOLDER = "_background_noise_"


def skip_folder(name: str) -> bool:
    """Speech Commands keeps noise recordings in `_background_noise_`: not a class (but
    `_silence_` and `_unknown_` are)."""
    return name == NOISE_FOLDER or name.startswith(".")


def load_audiofolder(spec: AudioFolderDataset, base_dir: Path | None = None) -> Dataset:
    """Every sound file (.wav, .flac, .ogg) of the selected class folders, in sorted path
    order: the files a node's `wav` source replays."""
    fmt = FolderFormat(
        kind="audio",
        extensions=media.SOUND_EXTENSIONS,
        read=lambda path: read_wav(path, spec.sample_rate),
        skip_folder=skip_folder,
        what="sound",
        sample_rate=spec.sample_rate,
    )
    root = resolve_root(spec.root, base_dir)
    return load_class_folders(root, fmt, spec.classes, spec.max_per_class)
