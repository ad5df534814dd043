"""Datasets for `modelgen`: loaders per kind, the stratified split, generated keywords.

`load_dataset(spec)` is the one entry point the build uses; it returns raw samples
(images HWC uint8 RGB, audio mono float32) that `edvit.preprocess` turns into model inputs.
"""

from __future__ import annotations

from pathlib import Path

from edvit.config.dataset import (
    AudioFolderDataset,
    Cifar10Dataset,
    DigitsDataset,
    ImageFolderDataset,
    SpeechCommandsDataset,
    SplitRecord,
)
from modelgen.datasets.audiofolder import load_audiofolder
from modelgen.datasets.base import Dataset, DatasetError, check_preprocess
from modelgen.datasets.cifar10 import load_cifar10
from modelgen.datasets.digits import load_digits
from modelgen.datasets.imagefolder import load_imagefolder
from modelgen.datasets.speech_commands import load_speech_commands
from modelgen.datasets.split import Split, apply_split, split_dataset, stratified_split

AnyDatasetSpec = (
    DigitsDataset | ImageFolderDataset | AudioFolderDataset | SpeechCommandsDataset | Cifar10Dataset
)


def load_dataset(spec: AnyDatasetSpec, base_dir: str | Path | None = None) -> Dataset:
    """Load the dataset a recipe describes; relative roots are taken from `base_dir`
    (the recipe's folder) when given, else from the working directory."""
    base = Path(base_dir) if base_dir is not None else None
    if isinstance(spec, DigitsDataset):
        return load_digits(spec)
    if isinstance(spec, ImageFolderDataset):
        return load_imagefolder(spec, base)
    if isinstance(spec, AudioFolderDataset):
        return load_audiofolder(spec, base)
    if isinstance(spec, SpeechCommandsDataset):
        return load_speech_commands(spec, base)
    return load_cifar10(spec, base)


__all__ = [
    "Dataset",
    "DatasetError",
    "Split",
    "SplitRecord",
    "apply_split",
    "check_preprocess",
    "load_dataset",
    "split_dataset",
    "stratified_split",
]
