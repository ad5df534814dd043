"""The bundle contract: `manifest.json` schema, writing it, and loading a bundle only if intact.

A bundle is copied by hand to edge devices, so it must refuse to load when anything in it
changed: every file the manifest lists carries its size and sha256, and the manifest itself
carries `digest`, the sha256 of its own canonical JSON (sorted keys, no spaces, UTF-8)
without the `digest` key. Editing a class name, swapping an ONNX file or losing a file in a
copy is reported with the file (and manifest key) to look at, before any model is loaded.

Torch-free on purpose: nodes and the aggregator import this module on hosts without torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, Field, ValidationError, field_validator, model_validator

from edvit.config.base import StrictModel
from edvit.config.dataset import SplitSection
from edvit.config.loader import key_path
from edvit.ids import Id
from edvit.jsonfmt import compact_json
from edvit.plan import Plan
from edvit.preprocess import PreprocessSpec

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
MODEL_HASH_LEN = 16  # hex characters of the ONNX sha256 that identify a sub-model on the wire
MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # a manifest is kilobytes; refuse to parse anything huge
# Bundle files and folders, whatever the umask: the services run under another uid
# (systemd DynamicUser=) and must read them.
FILE_MODE, DIR_MODE = 0o644, 0o755

_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BundleError(Exception):
    """A bundle that must not be used; each problem names the file (and key) to look at."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def _check_rel_path(path: str) -> str:
    """A relative POSIX path that stays inside the bundle; raises ValueError otherwise."""
    hint = "must be a relative POSIX path inside the bundle, e.g. submodels/g0.onnx"
    if not path:
        raise ValueError(f"empty path; {hint}")
    if "\\" in path or "\x00" in path:
        raise ValueError(f"{path!r} {hint} (no backslashes)")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise ValueError(f"{path!r} is absolute; it {hint}")
    parts = path.split("/")
    if ".." in parts:
        raise ValueError(f"{path!r} leaves the bundle ('..'); it {hint}")
    for part in parts:
        if not _PART.match(part):
            raise ValueError(
                f"{path!r}: component {part!r} is not allowed (letters, digits, '_', '.', '+', "
                "'-', not starting with '.'); the path " + hint
            )
    return path


def _check_sha256(value: str) -> str:
    if not _SHA256.match(value):
        raise ValueError(f"expected 64 lowercase hex digits (a sha256), got {value!r}")
    return value


class FileRef(StrictModel):
    """A file of the bundle, pinned by size and content hash."""

    path: str = Field(
        description="Relative POSIX path inside the bundle (no '..', not absolute).",
        max_length=255,
    )
    sha256: str = Field(description="sha256 of the file, 64 lowercase hex digits.")
    bytes: int = Field(ge=0, description="Size of the file in bytes.")

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        return _check_rel_path(value)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        return _check_sha256(value)


class ModelCost(StrictModel):
    """What a model costs to ship and run: the figures the plan and reports compare."""

    params: int = Field(ge=0, description="Parameter count, classifier head included.")
    size_mib: float = Field(ge=0, description="Size of the fp32 weights in MiB.")
    gmacs: float = Field(ge=0, description="GMACs per sample.")


class BaseEntry(ModelCost):
    """The base ViT the sub-models were cut from (for reports and `modelgen eval`)."""

    arch: str = Field(min_length=1, description="Architecture as given: timm name or vit: spec.")
    spec: str = Field(
        min_length=1, description="The exact shape as a vit:img=…,patch=…,… spec string."
    )
    num_heads: int = Field(ge=1, description="Attention heads of the base model.")
    embed_dim: int = Field(ge=1, description="Embedding width of the base model.")
    depth: int = Field(ge=1, description="Number of transformer blocks.")
    test_accuracy: float | None = Field(
        default=None, ge=0, le=1, description="Top-1 accuracy on the bundle's test split."
    )
    onnx: FileRef | None = Field(
        default=None, description="The base model as ONNX (for `modelgen eval`), if shipped."
    )
    safetensors: FileRef | None = Field(
        default=None, description="The base model's weights as safetensors, if shipped."
    )


class Precision(StrEnum):
    """How a sub-model's ONNX holds its weights (the safetensors are fp32 either way)."""

    fp32 = "fp32"
    int8 = "int8"


class SubmodelEntry(ModelCost):
    """One class-specific sub-model: what a node runs and what the aggregator expects from it."""

    id: Id = Field(description="Sub-model id, e.g. g0 (topic level).")
    classes: list[int] = Field(
        min_length=1, description="Indices into `classes` this sub-model predicts, in order."
    )
    heads: int = Field(ge=1, description="Attention heads.")
    embed_dim: int = Field(ge=1, description="Embedding width (64 per head for timm ViTs).")
    feature_dim: int = Field(ge=1, description="Length of the CLS feature vector it publishes.")
    outputs: int = Field(ge=1, description="Logits: its classes plus one 'others' when N > 1.")
    input_shape: list[int] = Field(
        min_length=3, max_length=3, description="One sample's input (C, H, W), batch excluded."
    )
    onnx: FileRef = Field(description="The ONNX model nodes run.")
    safetensors: FileRef = Field(description="The fp32 weights as safetensors (for torch).")
    precision: Precision = Field(
        default=Precision.fp32,
        description="fp32: the ONNX reproduces torch within 1e-4; int8: quantized, its "
        "features within the recipe's feature_error_budget of the fp32 graph's.",
    )
    feature_error: float | None = Field(
        default=None,
        ge=0,
        description="int8 only: relative RMS error of its features against the fp32 graph's, "
        "measured at export on test samples.",
    )
    onnx_input: str = Field(default="input", min_length=1, description="ONNX input name.")
    onnx_outputs: list[str] = Field(
        default_factory=lambda: ["features", "logits"],
        min_length=2,
        max_length=2,
        description="ONNX output names: [features (B, feature_dim), logits (B, outputs)].",
    )

    @model_validator(mode="after")
    def _consistent(self) -> SubmodelEntry:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"submodel {self.id}: classes has duplicates: {self.classes}")
        if self.outputs < len(self.classes):
            raise ValueError(
                f"submodel {self.id}: outputs {self.outputs} < {len(self.classes)} classes"
            )
        if len(set(self.onnx_outputs)) != 2 or self.onnx_input in self.onnx_outputs:
            raise ValueError(f"submodel {self.id}: ONNX input/output names must be distinct")
        return self


class FusionEntry(StrictModel):
    """The fusion MLP of §4.5: concatenated features in `order` → hidden → classes."""

    file: FileRef = Field(description="safetensors with fc1.weight, fc1.bias, fc2.weight, …")
    order: list[str] = Field(
        min_length=1, description="Sub-model ids whose features are concatenated, in order."
    )
    feature_dims: list[int] = Field(
        min_length=1, description="Feature length of each sub-model in `order`."
    )
    in_dim: int = Field(ge=1, description="Input width: the sum of feature_dims.")
    hidden: int = Field(ge=1, description="Hidden width: round(0.5 · in_dim) by default.")
    out_dim: int = Field(ge=1, description="Number of classes.")
    activation: Literal["gelu_tanh"] = Field(
        default="gelu_tanh", description="Hidden activation (GELU, tanh approximation)."
    )

    @model_validator(mode="after")
    def _dims(self) -> FusionEntry:
        if len(self.feature_dims) != len(self.order):
            raise ValueError(
                f"fusion: feature_dims has {len(self.feature_dims)} entries, order has "
                f"{len(self.order)}"
            )
        if len(set(self.order)) != len(self.order):
            raise ValueError(f"fusion.order has duplicates: {self.order}")
        if sum(self.feature_dims) != self.in_dim:
            raise ValueError(
                f"fusion.in_dim {self.in_dim} != sum of feature_dims {sum(self.feature_dims)}"
            )
        return self


DEFAULT_THRESHOLD = 0.5
"""The score a class without a calibrated threshold must reach to count (bundles built
before calibration, or classes the validation data gave no evidence for)."""
DEFAULT_PATIENCE = 1
DEFAULT_REFRACTORY_S = 1.0

Score = Annotated[float, Field(ge=0, le=1)]


class EventTiming(StrictModel):
    """How long a class must last to fire, and how long after it may fire again: the rules
    a recipe writes to the manifest as they are."""

    patience: int = Field(
        default=DEFAULT_PATIENCE,
        ge=1,
        description="Consecutive complete ticks with the class on top and above its "
        "threshold before the event fires.",
    )
    refractory_s: float = Field(
        default=DEFAULT_REFRACTORY_S,
        ge=0,
        description="A run of a class that starts within this many seconds after the end of "
        "its last event's run fires no new event.",
    )


class StreamValidation(StrictModel):
    """The validation stream the event rules were calibrated on, and what they gave on it."""

    hours: float = Field(ge=0, description="Length of the stream.")
    period_s: float = Field(gt=0, description="Its tick period: the site should run the same.")
    target_per_hour: float = Field(gt=0, description="False accepts per hour aimed at.")
    keywords: int = Field(ge=0, description="Keywords in the stream.")
    hits: int = Field(ge=0, description="Keywords with an event of their word in time.")
    false_accepts: int = Field(ge=0, description="Every other event.")
    by_patience: dict[str, float] = Field(
        default_factory=dict,
        description="Patience tried → hit rate at the thresholds calibrated for it.",
    )


class EventsEntry(EventTiming):
    """How the aggregator turns fused results into events (site config may override each)."""

    thresholds: dict[str, Score] = Field(
        default_factory=dict,
        description="Class name → the lowest fused top-1 score that counts towards an event, "
        f"calibrated by `modelgen build` for target_far; classes not listed use "
        f"{DEFAULT_THRESHOLD}.",
    )
    target_far: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="The per-tick false-accept rate on validation data the thresholds were "
        "calibrated for; null: not calibrated.",
    )
    stream: StreamValidation | None = Field(
        default=None,
        description="Set when the thresholds and patience were calibrated on a stream of "
        "validation clips: what that stream gave at them.",
    )


class Manifest(StrictModel):
    """`manifest.json`: everything a node, the aggregator or `modelgen eval` needs to know."""

    schema_version: Literal[1] = Field(description="Version of this schema (SCHEMA_VERSION).")
    created: AwareDatetime = Field(description="When the bundle was built (ISO 8601, with zone).")
    classes: list[str] = Field(min_length=1, description="Class names; index = class id.")
    background_classes: list[str] = Field(
        default_factory=list,
        description="Classes that mean 'nothing to report' (_silence_, _unknown_, "
        "_background_): trained and fused like any class, never an event.",
    )
    groups: dict[str, list[int]] = Field(description="Sub-model id → the class indices it owns.")
    base: BaseEntry = Field(description="The base model the sub-models come from.")
    preprocess: PreprocessSpec = Field(
        description="The front-end nodes run (edvit.preprocess), parameters as trained."
    )
    submodels: list[SubmodelEntry] = Field(min_length=1, description="The sub-models.")
    fusion: FusionEntry = Field(description="The fusion MLP the aggregator runs.")
    plan: Plan = Field(description="The plan the build followed (shapes, devices, assignment).")
    split: SplitSection = Field(description="Train/val/test sample sources, to repeat eval.")
    events: EventsEntry = Field(
        default_factory=EventsEntry, description="Event thresholds, patience and refractory time."
    )
    metrics: dict[str, Any] = Field(
        default_factory=dict, description="Measured results: accuracies, latencies."
    )
    digest: str | None = Field(
        default=None,
        description="sha256 of the canonical JSON of this manifest without `digest`.",
    )

    @field_validator("digest")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        return None if value is None else _check_sha256(value)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        ids = [s.id for s in self.submodels]
        if len(set(ids)) != len(ids):
            raise ValueError(f"submodels: duplicate ids in {ids}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes: duplicate class names")
        num = len(self.classes)
        if unknown := [c for c in self.background_classes if c not in self.classes]:
            raise ValueError(f"background_classes: {unknown} are not in classes")
        if len(set(self.background_classes)) != len(self.background_classes):
            raise ValueError("background_classes: duplicate class names")
        firing = self.event_classes
        if unknown := sorted(set(self.events.thresholds) - set(firing)):
            raise ValueError(
                f"events.thresholds: {unknown} are not classes that fire events ({firing})"
            )
        if sorted(self.groups) != sorted(ids):
            raise ValueError(f"groups: keys {sorted(self.groups)} != submodel ids {sorted(ids)}")
        owned = sorted(c for g in self.groups.values() for c in g)
        if owned != list(range(num)):
            raise ValueError(f"groups: must partition the class indices 0…{num - 1}")
        for i, sub in enumerate(self.submodels):
            if sub.classes != self.groups[sub.id]:
                raise ValueError(
                    f"submodels[{i}].classes {sub.classes} != groups.{sub.id} {self.groups[sub.id]}"
                )
        fusion = self.fusion
        if sorted(fusion.order) != sorted(ids):
            raise ValueError(f"fusion.order {fusion.order} must list each sub-model id once")
        dims = {s.id: s.feature_dim for s in self.submodels}
        want = [dims[i] for i in fusion.order]
        if fusion.feature_dims != want:
            raise ValueError(
                f"fusion.feature_dims {fusion.feature_dims} != the sub-models' feature_dim {want}"
            )
        if fusion.out_dim != num:
            raise ValueError(f"fusion.out_dim {fusion.out_dim} != {num} classes")
        paths = [ref.path for _, ref in self.file_refs()]
        if len(set(paths)) != len(paths):
            raise ValueError(f"two entries name the same file: {paths}")
        return self

    @property
    def event_classes(self) -> list[str]:
        """The classes that produce events and counts: all but the background ones."""
        return [c for c in self.classes if c not in self.background_classes]

    def file_refs(self) -> Iterator[tuple[str, FileRef]]:
        """(manifest key path, FileRef) of every file the bundle must contain."""
        if self.base.onnx is not None:
            yield "base.onnx", self.base.onnx
        if self.base.safetensors is not None:
            yield "base.safetensors", self.base.safetensors
        for i, sub in enumerate(self.submodels):
            yield f"submodels[{i}].onnx", sub.onnx
            yield f"submodels[{i}].safetensors", sub.safetensors
        yield "fusion.file", self.fusion.file

    def submodel(self, sub_id: str) -> SubmodelEntry:
        for sub in self.submodels:
            if sub.id == sub_id:
                return sub
        raise KeyError(
            f"no sub-model {sub_id!r} in the bundle (has {[s.id for s in self.submodels]})"
        )

    def onnx_files(self, sub_ids: Collection[str]) -> list[FileRef]:
        """The ONNX files a node running `sub_ids` loads (what it verifies)."""
        return [self.submodel(s).onnx for s in sub_ids]


def canonical_json(data: Any) -> bytes:
    """The bytes the digest covers: sorted keys, no spaces, UTF-8, no NaN/Infinity."""
    return compact_json(data, sort_keys=True)


def manifest_digest(data: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON with the `digest` key left out."""
    return hashlib.sha256(
        canonical_json({k: v for k, v in data.items() if k != "digest"})
    ).hexdigest()


def sha256_file(path: Path) -> str:
    """Streaming sha256, so a large ONNX file is never read into memory at once."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _short(digest: str) -> str:
    return digest[:12] + "…"


@dataclass(frozen=True)
class Bundle:
    """A loaded (and, unless told otherwise, verified) bundle directory."""

    root: Path
    manifest: Manifest

    def path(self, ref: FileRef) -> Path:
        """Where a manifest file lives on this machine."""
        return self.root.joinpath(*PurePosixPath(ref.path).parts)

    def submodel(self, sub_id: str) -> SubmodelEntry:
        return self.manifest.submodel(sub_id)

    def model_hash(self, sub_id: str) -> str:
        """Short id of a sub-model's ONNX (first 16 hex of its sha256), sent in every message.

        The aggregator drops features whose hash differs: they come from another bundle.
        """
        return self.manifest.submodel(sub_id).onnx.sha256[:MODEL_HASH_LEN]

    @property
    def fusion_path(self) -> Path:
        return self.path(self.manifest.fusion.file)

    def verify(self) -> None:
        """Re-check every file's size and sha256; BundleError naming each bad one."""
        _verify_files(self.root, self.manifest)


def _parse_json(text: bytes, source: str) -> dict[str, Any]:
    def no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"duplicate key {key!r}")
            out[key] = value
        return out

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        data = json.loads(
            text.decode("utf-8"), object_pairs_hook=no_dupes, parse_constant=no_constants
        )
    except UnicodeDecodeError as exc:
        raise BundleError(
            [f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})"]
        ) from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise BundleError([f"{source}: not valid JSON: {exc}"]) from None
    if not isinstance(data, dict):
        raise BundleError([f"{source}: expected a JSON object at the top level"])
    return data


def _schema(data: dict[str, Any], source: str) -> Manifest:
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] == "value_error" and "error" in err.get("ctx", {}):
                msg = str(err["ctx"]["error"])
            else:
                msg = err["msg"]
            problems.append(f"{source}: {key_path(loc)}: {msg}" if loc else f"{source}: {msg}")
        raise BundleError(problems) from None


def _check_digest(data: dict[str, Any], source: str) -> None:
    stored = data.get("digest")
    if stored is None:
        raise BundleError(
            [
                f"{source}: digest: missing; the manifest was not written by "
                "write_manifest or was edited"
            ]
        )
    actual = manifest_digest(data)
    if stored != actual:
        raise BundleError(
            [
                f"{source}: digest mismatch (expected {_short(stored)}, got {_short(actual)}); "
                "the manifest was edited after the bundle was built"
            ]
        )


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _check_paths(root: Path, manifest: Manifest, source: str) -> None:
    """No listed path may resolve outside the bundle (e.g. through a symlink)."""
    bad = []
    for key, ref in manifest.file_refs():
        target = root.joinpath(*PurePosixPath(ref.path).parts)
        if not _inside(root, target):
            bad.append(f"{source}: {key}.path: {ref.path!r} resolves outside the bundle")
    if bad:
        raise BundleError(bad)


# Which of a manifest's files to hash: a process verifies the files it loads (a node its
# ONNX files, the aggregator the fusion file); None: every file (`edvit validate`).
FileSelector = Callable[[Manifest], Collection[FileRef]]


def _unreadable(path: Path, root: Path, exc: OSError) -> str:
    """A file or folder that cannot be read: the error, and the fix when it is permissions."""
    fix = ""
    if isinstance(exc, PermissionError):
        fix = (
            f"; the service user cannot read it: make the bundle world-readable "
            f"(chmod -R a+rX {root}), or install it with `edvit install`"
        )
    return f"{path}: cannot read: {exc.strerror}{fix}"


def _verify_files(root: Path, manifest: Manifest, files: FileSelector | None = None) -> None:
    problems = []
    wanted = None if files is None else {ref.path for ref in files(manifest)}
    for key, ref in manifest.file_refs():
        if wanted is not None and ref.path not in wanted:
            continue
        path = root.joinpath(*PurePosixPath(ref.path).parts)
        where = f"(manifest.json {key})"
        if not path.is_file():
            problems.append(f"{path}: missing {where}; the bundle is incomplete")
            continue
        size = path.stat().st_size
        if size != ref.bytes:
            problems.append(
                f"{path}: size mismatch (expected {ref.bytes} bytes, got {size}) {where}; "
                "the bundle was altered or is incomplete"
            )
            continue
        try:
            digest = sha256_file(path)
        except OSError as exc:
            problems.append(f"{_unreadable(path, root, exc)} {where}")
            continue
        if digest != ref.sha256:
            problems.append(
                f"{path}: sha256 mismatch (expected {_short(ref.sha256)}, got {_short(digest)}) "
                f"{where}; the bundle was altered or is incomplete"
            )
    if problems:
        raise BundleError(problems)


def _check(
    root: Path, text: bytes, source: str, verify: bool, files: FileSelector | None = None
) -> Manifest:
    data = _parse_json(text, source)
    manifest = _schema(data, source)
    _check_paths(root, manifest, source)
    if verify:
        _check_digest(data, source)
        _verify_files(root, manifest, files)
    return manifest


def load_bundle(
    directory: str | Path, verify: bool = True, files: FileSelector | None = None
) -> Bundle:
    """Read `manifest.json`, check its schema, digest and files; raise BundleError if bad.

    `directory` is the bundle directory (or its manifest.json).
    `files` picks the files to check (size and sha256) from the manifest; None: every file.
    Nodes and the aggregator check the files they load: a Pi need not read (or even hold
    readable) a base model it never runs. `verify=False` skips the digest and the file
    hashes (schema and path checks still run): for inspecting a bundle only.
    """
    root = Path(directory)
    if root.name == MANIFEST and root.is_file():  # the manifest's path works too
        root = root.parent
    source = str(root / MANIFEST)
    if not root.is_dir():
        raise BundleError([f"{root}: not a bundle directory (it does not exist or is a file)"])
    try:
        with (root / MANIFEST).open("rb") as f:
            text = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise BundleError([f"{source}: missing; {root} is not a bundle"]) from None
    except OSError as exc:
        raise BundleError([_unreadable(root / MANIFEST, root, exc)]) from None
    if len(text) > MAX_MANIFEST_BYTES:
        raise BundleError([f"{source}: larger than {MAX_MANIFEST_BYTES} bytes; not a manifest"])
    return Bundle(root=root, manifest=_check(root, text, source, verify, files))


def write_manifest(directory: str | Path, manifest: Manifest) -> Manifest:
    """Write `manifest.json` with its digest; returns the manifest with `digest` set.

    The text is checked exactly as `load_bundle` will check it (schema, digest, every file's
    size and sha256) before it replaces any existing manifest, so a bundle that would be
    refused is never written.
    """
    root = Path(directory)
    data = manifest.model_dump(mode="json", exclude={"digest"})
    try:
        data["digest"] = manifest_digest(data)
    except ValueError as exc:  # NaN or infinity in an opaque section
        raise BundleError([f"{root / MANIFEST}: cannot be written as JSON: {exc}"]) from None
    text = (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    final = _check(root, text, str(root / MANIFEST), verify=True)
    tmp = root / f".{MANIFEST}.tmp"
    tmp.write_bytes(text)
    tmp.chmod(FILE_MODE)
    os.replace(tmp, root / MANIFEST)
    return final


def file_ref(root: str | Path, path: str | Path) -> FileRef:
    """Pin a file of the bundle at `root` (path absolute, or relative to root) for the manifest."""
    root = Path(root)
    full = Path(path) if Path(path).is_absolute() else root / path
    if not _inside(root, full):
        raise BundleError([f"{full}: not inside the bundle directory {root}"])
    rel = full.resolve().relative_to(root.resolve()).as_posix()
    try:
        _check_rel_path(rel)
    except ValueError as exc:
        raise BundleError([f"{full}: {exc}"]) from None
    if not full.is_file():
        raise BundleError([f"{full}: missing; cannot reference it in the manifest"])
    return FileRef(path=rel, sha256=sha256_file(full), bytes=full.stat().st_size)
