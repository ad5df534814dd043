"""A `modelgen build` recipe: dataset, base model, plan, pruning, distillation, fusion, seed.

Everything that decides a bundle's content is here, so a recipe and the code version
reproduce a bundle, and each build stage can be cached by the part of the recipe it reads.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, model_validator

from edvit.bundle import DEFAULT_THRESHOLD, EventTiming, Precision
from edvit.config.base import StrictModel
from edvit.config.dataset import DatasetSpec
from edvit.preprocess import PreprocessSpec


class ModelSpec(StrictModel):
    arch: str = Field(
        description="timm name (vit_base_patch16_224) or a custom shape "
        "vit:img=HxW,patch=P,chans=C,embed=D,depth=L,heads=H[,mlp=R]."
    )
    checkpoint: str | None = Field(
        default=None,
        description="Local safetensors weights of the base model (timm layout) to fine-tune; "
        "relative paths are relative to the recipe file.",
    )
    pretrained: bool = Field(
        default=False,
        description="Start from timm's pretrained weights (needs the network or a warm hub cache).",
    )


class TrainSpec(StrictModel):
    epochs: int = Field(ge=0, description="Passes over the training split (0: use as loaded).")
    batch_size: int = Field(default=64, ge=1, description="Samples per optimisation step.")
    lr: float = Field(default=1e-3, gt=0, description="Peak AdamW learning rate (cosine decay).")
    weight_decay: float = Field(default=0.05, ge=0, description="AdamW weight decay.")
    warmup_epochs: float = Field(default=1.0, ge=0, description="Linear warm-up length.")
    label_smoothing: float = Field(default=0.1, ge=0, lt=1, description="Cross-entropy smoothing.")
    augment: bool = Field(
        default=True,
        description="Random shifts of the model input by up to `shift` pixels (images) "
        "or frames (audio spectrograms) during training.",
    )
    shift: int = Field(default=1, ge=0, description="Largest random shift in input pixels.")
    freq_mask: int = Field(
        default=0,
        ge=0,
        description="SpecAugment: with `augment`, each sample gets one band of up to this "
        "many input rows (mel bands) set to the mean; 0: none.",
    )
    time_mask: int = Field(
        default=0,
        ge=0,
        description="SpecAugment: with `augment`, each sample gets one span of up to this "
        "many input columns (frames) set to the mean; 0: none.",
    )


class Solver(StrEnum):
    greedy = "greedy"
    optimal = "optimal"


class PlanSpec(StrictModel):
    num_submodels: int | None = Field(
        default=None, ge=1, description="N; defaults to the number of devices."
    )
    devices: str | None = Field(
        default=None,
        description="Devices file (see config/devices.example.yaml); relative to the recipe.",
    )
    budget_mib: float | None = Field(
        default=None, gt=0, description="Total memory budget of all sub-models (fp32 MiB)."
    )
    rate_hz: float = Field(default=1.0, gt=0, description="Samples per second each device runs.")
    solver: Solver = Field(default=Solver.optimal, description="greedy (Alg. 3) or optimal.")

    @model_validator(mode="after")
    def _needs_n(self) -> PlanSpec:
        if self.num_submodels is None and self.devices is None:
            raise ValueError("give num_submodels or devices")
        return self


class Grouping(StrEnum):
    confusion = "confusion"
    contiguous = "contiguous"


class PruneMethod(StrEnum):
    kl = "kl"
    magnitude = "magnitude"
    random_init = "random-init"


class PruneSpec(StrictModel):
    method: PruneMethod = Field(
        default=PruneMethod.kl,
        description="kl: KL-ranked slicing of the base (paper); magnitude: weight-norm ranked "
        "slicing; random-init: no pruning, a fresh sub-model of the same shape.",
    )
    samples: int = Field(
        default=256, ge=8, description="Group samples used to rank channels, heads, neurons."
    )


class DistillSpec(TrainSpec):
    temperature: float = Field(default=2.0, gt=0, description="Softening of both distributions.")
    alpha: float = Field(
        default=0.7, ge=0, le=1, description="Weight of the distillation term vs hard labels."
    )


class FusionSpec(StrictModel):
    hidden_ratio: float = Field(default=0.5, gt=0, description="λ: hidden = λ·N·d (paper §4.5).")
    feature_dropout: float = Field(
        default=0.2,
        ge=0,
        lt=1,
        description="Probability that a whole sub-model's feature is zeroed in training, so a "
        "missing node degrades the answer instead of breaking it.",
    )
    epochs: int = Field(default=40, ge=1, description="Passes over the training features.")
    batch_size: int = Field(default=128, ge=1, description="Samples per step.")
    lr: float = Field(default=2e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(default=1e-4, ge=0, description="AdamW weight decay.")


class StreamCalibration(StrictModel):
    """Thresholds (and patience) calibrated on a stream of validation clips, as a microphone
    node hears it, for a number of false accepts per hour (audio recipes)."""

    hours: float = Field(
        default=2.0,
        gt=0,
        le=24,
        description="Length of the stream: background clips back to back and a keyword every "
        "5-25 s, all drawn from the validation split.",
    )
    target_per_hour: float = Field(
        default=1.0,
        gt=0,
        description="False accepts per hour over all classes; each class gets an equal share.",
    )
    period_s: float = Field(
        default=0.25,
        gt=0,
        le=60,
        description="The tick period the site runs (tick.period_s): one window per tick.",
    )
    patience: list[Annotated[int, Field(ge=1)]] = Field(
        default=[1, 2, 3],
        min_length=1,
        description="Patience values tried; the one with the most hits on the stream at the "
        "calibrated thresholds goes to the manifest (the lowest of equals), replacing "
        "events.patience.",
    )


class EventsSpec(EventTiming):
    """The event rules written to the manifest (the site config may override each)."""

    stream: StreamCalibration | None = Field(
        default=None,
        description="Calibrate on a stream of validation clips (audio) instead of on clips "
        "one at a time; null: per clip, for target_far.",
    )

    target_far: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="Per class, the threshold is the lowest fused top-1 score at which at "
        "most this share of the validation samples of the other classes (background ones "
        "included) would count as that class.",
    )
    min_threshold: float = Field(
        default=DEFAULT_THRESHOLD,
        ge=0,
        le=1,
        description="No calibrated threshold is lower than this (a class the validation "
        "data never confuses with another gives no evidence for less).",
    )


class Quantization(StrEnum):
    """ONNX Runtime's two int8 methods (modelgen/quantize.py)."""

    dynamic = "dynamic"
    static = "static"


class ExportSpec(StrictModel):
    """What the nodes' ONNX files hold."""

    precision: Precision = Field(
        default=Precision.fp32,
        description="fp32, or int8: the sub-models quantized (the base stays fp32 for eval).",
    )
    quantization: Quantization = Field(
        default=Quantization.dynamic,
        description="int8 only: dynamic (weights int8, activations scaled per call) or "
        "static (QDQ, activation ranges calibrated on training samples).",
    )
    calibration_samples: int = Field(
        default=256, ge=1, description="static only: training samples that calibrate ranges."
    )
    feature_error_budget: float = Field(
        default=0.1,
        gt=0,
        description="int8 only: the largest relative RMS error of a sub-model's features "
        "against its fp32 graph on test samples; above it the build fails.",
    )


class Recipe(StrictModel):
    name: str = Field(description="A short name for the bundle, shown in reports.")
    seed: int = Field(default=0, description="Seeds every random choice of the build.")
    dataset: DatasetSpec = Field(description="Where the samples come from and how they split.")
    preprocess: PreprocessSpec = Field(
        description="The front-end shared by training and the nodes (image or log-mel)."
    )
    model: ModelSpec = Field(description="The base ViT.")
    train: TrainSpec = Field(description="Training (or fine-tuning) of the base model.")
    plan: PlanSpec = Field(description="N, devices, memory budget, rate and solver.")
    grouping: Grouping = Field(
        default=Grouping.confusion,
        description="confusion: confusable classes share a group; contiguous: the paper.",
    )
    pruning: PruneSpec = Field(default_factory=PruneSpec, description="Sub-model initialisation.")
    distill: DistillSpec = Field(description="Sub-model training from the base model.")
    fusion: FusionSpec = Field(default_factory=FusionSpec, description="The fusion MLP.")
    events: EventsSpec = Field(
        default_factory=EventsSpec,
        description="Event thresholds (calibrated), patience, refractory time.",
    )
    export: ExportSpec = Field(
        default_factory=ExportSpec, description="Precision of the sub-models' ONNX."
    )
    threads: int = Field(default=2, ge=1, description="CPU threads torch may use.")
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|mps|cuda(:[0-9]+)?)$",
        description="Where torch trains and prunes: cpu, cuda, cuda:N or mps; auto takes "
        "the first GPU when torch sees one. Export and evaluation always run on the CPU.",
    )
    preload_gib: float = Field(
        default=4.0,
        ge=0,
        description="Hold the preprocessed splits in memory up to this size (float32); a "
        "bigger dataset is preprocessed batch by batch on every pass instead.",
    )

    @model_validator(mode="after")
    def _check_stream_calibration(self) -> Recipe:
        if getattr(self.dataset, "stream_windows", 0) and not self.dataset.background_classes:
            raise ValueError(
                "dataset.stream_windows: name dataset.background_classes (what a window "
                "without a word is)"
            )
        if self.events.stream is not None:
            if self.preprocess.kind != "audio":
                raise ValueError("events.stream: stream calibration needs an audio preprocess")
            if not self.dataset.background_classes:
                raise ValueError(
                    "events.stream: a stream is background clips between keywords; "
                    "name dataset.background_classes"
                )
        return self
