"""The `dataset` section of a recipe: where samples come from, which classes, how they split.

Only the description lives here (pydantic, no I/O); `modelgen.datasets.load_dataset` reads
it. Relative paths are resolved by the loader against the recipe's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from edvit.config.base import StrictModel


class SplitSpec(StrictModel):
    """A deterministic stratified train/val/test split (recorded in the bundle)."""

    val_fraction: float = Field(
        default=0.1, ge=0, lt=1, description="Share of each class held out for validation."
    )
    test_fraction: float = Field(
        default=0.2,
        ge=0,
        lt=1,
        description="Share of each class held out for the final test (ignored when the "
        "dataset has an official test set that is used, see cifar10.official_test).",
    )
    seed: int = Field(default=0, ge=0, description="Seed of the split's shuffle.")

    @model_validator(mode="after")
    def _leaves_training(self) -> SplitSpec:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction must be below 1 "
                f"(got {self.val_fraction:g} + {self.test_fraction:g}), or nothing is left "
                "to train on"
            )
        return self


class SplitRecord(StrictModel):
    """A split by sample name, as the manifest records it: re-applicable exactly, since
    indices shift when a folder gains a file but names do not."""

    version: Literal[1] = Field(default=1, description="Format version of this record.")
    seed: int = Field(description="Seed the split was made with.")
    val_fraction: float = Field(description="Requested validation share.")
    test_fraction: float = Field(description="Requested test share.")
    official_test: bool = Field(
        default=False,
        description="True when the test part is the dataset's own test set (or one its "
        "loader fixes, as speech_commands does).",
    )
    official_val: bool = Field(
        default=False,
        description="True when the validation part is the dataset's own (or one its loader "
        "fixes), not a share of the rest.",
    )
    train: list[str] = Field(description="Sources of the training samples, in index order.")
    val: list[str] = Field(description="Sources of the validation samples, in index order.")
    test: list[str] = Field(description="Sources of the test samples, in index order.")

    @model_validator(mode="after")
    def _disjoint(self) -> SplitRecord:
        seen: dict[str, str] = {}
        for part in ("train", "val", "test"):
            for source in getattr(self, part):
                if source in seen:
                    raise ValueError(f"sample {source!r} is in both {seen[source]} and {part}")
                seen[source] = part
        return self


class _DatasetBase(StrictModel):
    classes: list[str] | None = Field(
        default=None,
        min_length=2,
        description="Classes to use, in this order (their index is the label); null means "
        "every class the dataset has, in its own order (sorted folder names for folders).",
    )
    max_per_class: int | None = Field(
        default=None,
        ge=1,
        description="Keep at most this many samples of each class (the first ones in the "
        "dataset's stable order), e.g. for a quick build; null keeps all.",
    )
    split: SplitSpec = Field(
        default_factory=SplitSpec, description="How samples divide into train/val/test."
    )
    background_classes: list[str] = Field(
        default_factory=list,
        description="Classes that mean 'nothing to report' (_silence_, _unknown_, "
        "_background_): trained, grouped and fused like any class, recorded in the "
        "manifest, and never an event. Each must be one of the dataset's classes.",
    )

    @field_validator("background_classes")
    @classmethod
    def _known_background(cls, names: list[str], info: ValidationInfo) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError(f"a class appears more than once in {names}")
        # without `classes`, the dataset's own ones: `modelgen build` checks once loaded
        classes = info.data.get("classes")
        if classes is not None and (unknown := [c for c in names if c not in classes]):
            raise ValueError(f"{unknown} are not in classes {classes}")
        return names

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, classes: list[str] | None) -> list[str] | None:
        if classes is None:
            return None
        seen: set[str] = set()
        for name in classes:
            if not name:
                raise ValueError("class names must not be empty")
            if name in seen:
                raise ValueError(f"class {name!r} appears more than once")
            seen.add(name)
        return classes


class DigitsDataset(_DatasetBase):
    """scikit-learn's 1,797 real 8×8 handwritten digits (ships with scikit-learn)."""

    kind: Literal["digits"] = Field(
        default="digits", description="sklearn.datasets.load_digits, classes '0'-'9'."
    )


class ImageFolderDataset(_DatasetBase):
    """A folder per class of image files (PNG, JPEG, BMP, TIFF, WebP, PPM/PGM)."""

    kind: Literal["imagefolder"] = Field(
        default="imagefolder", description="A folder of images per class."
    )
    root: Path = Field(
        description="Folder holding one sub-folder per class; the sub-folder names are the "
        "class names. Files with other extensions and hidden entries are ignored."
    )


class _SoundDataset(_DatasetBase):
    sample_rate: int = Field(
        default=16000,
        ge=1000,
        le=384000,
        description="Rate every file is resampled to (mono mixdown); must equal the audio "
        "preprocessing's sample_rate.",
    )
    stream_windows: int = Field(
        default=0,
        ge=0,
        description="Extra training samples cut from the training clips as a microphone's "
        "stream holds them: a window across two clips side by side, labelled the keyword "
        "whose word it holds whole, or background when it holds at most a fragment of one "
        "(modelgen.streams.splice_windows). Needs background_classes; 0: none.",
    )


class AudioFolderDataset(_SoundDataset):
    """A folder per class of sound files: GTZAN, `modelgen dataset keywords`, or Speech
    Commands' 35 words as they are (speech_commands makes its 12-class task)."""

    kind: Literal["audiofolder"] = Field(
        default="audiofolder", description="A folder of sound files per class."
    )
    root: Path = Field(
        description="Folder holding one sub-folder per class (`_silence_` and `_unknown_` "
        "too). Speech Commands' _background_noise_, hidden sub-folders and files other than "
        ".wav, .flac and .ogg are ignored."
    )


class SpeechCommandsDataset(_SoundDataset):
    """Google Speech Commands v2 as its 12-class task: ten keywords, `_unknown_` (every
    other word folder) and `_silence_` (1 s cut from `_background_noise_`); see
    modelgen.datasets.speech_commands."""

    kind: Literal["speech_commands"] = Field(
        default="speech_commands",
        description="The Speech Commands v2 folder as published (speech_commands_v0.02).",
    )
    root: Path = Field(
        description="The folder holding the word folders, _background_noise_, "
        "validation_list.txt and testing_list.txt. With both lists, they are the val and "
        "test parts (split's fractions then only cut the noise recordings); without either, "
        "split makes the usual seeded stratified split."
    )
    classes: list[str] | None = Field(
        default=None,
        min_length=2,
        description="Classes to use, in this order, out of yes no up down left right on off "
        "stop go _unknown_ _silence_; null means all twelve in that order. A keyword left "
        "out is dropped, not folded into _unknown_.",
    )
    max_per_class: int | None = Field(
        default=None,
        ge=1,
        description="Keep at most this many clips of each keyword (the first ones in sorted "
        "path order, before the split), e.g. for a quick build; _unknown_ and _silence_ "
        "follow through their shares. Null keeps all.",
    )
    unknown_share: float | None = Field(
        default=1.0,
        gt=0,
        description="_unknown_ gets this many times one keyword's mean count in each part "
        "(a seeded sample of that part's other-word clips; all of them if fewer), as Speech "
        "Commands' 12-class setup balances it; null keeps every other-word clip.",
    )
    silence_share: float = Field(
        default=1.0,
        gt=0,
        description="_silence_ gets this many times one keyword's mean count in each part, "
        "1 s clips cut from the _background_noise_ recordings.",
    )
    silence_gains_db: list[float] = Field(
        default_factory=lambda: [0.0, -10.0, -20.0, -30.0, -60.0],
        min_length=1,
        description="Gains (dB, at most 0) the silence clips take in turn, down to "
        "near-silence, so quiet rooms are learnt as _silence_ too.",
    )

    @field_validator("silence_gains_db")
    @classmethod
    def _attenuations(cls, gains: list[float]) -> list[float]:
        if loud := [g for g in gains if g > 0]:
            raise ValueError(f"gains must be at most 0 dB (the recordings can clip), got {loud}")
        return gains


class Cifar10Dataset(_DatasetBase):
    """CIFAR-10 from the python batches torchvision uses (cifar-10-batches-py)."""

    kind: Literal["cifar10"] = Field(
        default="cifar10", description="CIFAR-10, 60,000 32×32 colour images."
    )
    root: Path = Field(
        description="The cifar-10-batches-py folder, or the folder that contains it."
    )
    download: bool = Field(
        default=False,
        description="Download the batches with torchvision into root if they are missing "
        "(needs the network). Off by default: nothing is fetched unless asked.",
    )
    official_test: bool = Field(
        default=True,
        description="Use CIFAR-10's own test_batch as the test split (the paper's protocol) "
        "and split validation off the training batches; false pools all 60,000 images and "
        "splits them by split.test_fraction like any other dataset.",
    )


DatasetSpec = Annotated[
    DigitsDataset
    | ImageFolderDataset
    | AudioFolderDataset
    | SpeechCommandsDataset
    | Cifar10Dataset,
    Field(discriminator="kind"),
]


class SplitSection(StrictModel):
    """The manifest's `split`: the dataset as built (root resolved) and its recorded split,
    so that `modelgen eval` can repeat the exact test set from anywhere."""

    dataset: DatasetSpec = Field(description="The recipe's dataset section, root absolute.")
    record: SplitRecord = Field(description="Which samples went to train, val and test.")
