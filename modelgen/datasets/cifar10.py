"""CIFAR-10 from its python batches (`cifar-10-batches-py`), read without trusting pickle.

The batches are Python pickles. `pickle.load` on a file executes whatever callables the
file names (a tampered download or a file from a shared drive can run any command), and
the project allows no arbitrary pickle loading. `RestrictedUnpickler` therefore resolves
only the few numpy globals a batch needs to rebuild its arrays; any other global (os.system,
builtins.eval, ...) is refused before it can be called, with the file and name in the error.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edvit.config.dataset import Cifar10Dataset
from modelgen.datasets.base import (
    Dataset,
    DatasetError,
    resolve_root,
    select_classes,
    take_per_class,
)

BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
MAX_BATCH_BYTES = 512 * 2**20


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    reconstruct = vars(multiarray)["_reconstruct"]
    frombuffer = vars(numeric)["_frombuffer"]
    import codecs

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes at protocol 2 as codecs.encode(text, 'latin1').
        ("_codecs", "encode"): codecs.encode,
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{module}.numeric", "_frombuffer")] = frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and plain containers, nothing else."""

    _allowed = _numpy_globals()

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="latin1")  # the batches were written by Python 2
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"{self._source}: refusing to load global {module}.{name}: only numpy "
                "arrays may appear in a CIFAR-10 batch"
            ) from None


def restricted_load(path: Path) -> Any:
    """Unpickle `path` with `RestrictedUnpickler`; errors name the file."""
    try:
        size = path.stat().st_size
        if size > MAX_BATCH_BYTES:
            raise DatasetError(f"{path}: {size} bytes is too large for a CIFAR-10 batch")
        with path.open("rb") as fh:
            return RestrictedUnpickler(fh, str(path)).load()
    except DatasetError:
        raise
    except pickle.UnpicklingError as exc:
        raise DatasetError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror}") from None
    except Exception as exc:  # truncated or corrupt pickles raise many types
        raise DatasetError(f"{path}: not a valid CIFAR-10 batch ({exc!r})") from None


def _read_batch(path: Path) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """One batch file → (N, 32, 32, 3) uint8 RGB images and (N,) labels."""
    batch = restricted_load(path)
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: expected a dict, got {type(batch).__name__}")
    data = batch.get("data")
    labels = batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DatasetError(f"{path}: key 'data' must be an (N, 3072) uint8 array")
    if data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{path}: key 'data' has rows of {data.shape[1]} values, not 3072")
    if not isinstance(labels, list) or not all(isinstance(v, int) for v in labels):
        raise DatasetError(f"{path}: key 'labels' must be a list of integers")
    if len(labels) != data.shape[0]:
        raise DatasetError(f"{path}: {data.shape[0]} images but {len(labels)} labels")
    lab = np.asarray(labels, dtype=np.int64)
    if lab.size and (lab.min() < 0 or lab.max() > 9):
        raise DatasetError(f"{path}: key 'labels' has values outside 0..9")
    # Each row is 1024 red, 1024 green, 1024 blue values of a row-major 32×32 image.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), lab


def _read_names(folder: Path) -> list[str]:
    meta = restricted_load(folder / META)
    names = meta.get("label_names") if isinstance(meta, dict) else None
    if (
        not isinstance(names, list)
        or len(names) != 10
        or not all(isinstance(n, str) for n in names)
    ):
        raise DatasetError(f"{folder / META}: key 'label_names' must list 10 class names")
    return names


def find_batches(root: Path, download: bool) -> Path:
    """The folder holding the batches: `root` itself or `root/cifar-10-batches-py`.

    Downloads with torchvision (which checks the archive's md5) only when asked.
    """
    for folder in (root, root / BATCH_DIR):
        if (folder / TRAIN_BATCHES[0]).is_file():
            return folder
    if download:
        try:
            from torchvision.datasets import CIFAR10
        except ImportError:
            raise DatasetError(
                "downloading CIFAR-10 needs torchvision (pip install edvit[modelgen])"
            ) from None
        root.mkdir(parents=True, exist_ok=True)
        try:
            CIFAR10(root=str(root), train=True, download=True)
        except Exception as exc:  # urllib/URLError/md5 mismatch: report, never crash raw
            raise DatasetError(f"cannot download CIFAR-10 into {root}: {exc}") from None
        if (root / BATCH_DIR / TRAIN_BATCHES[0]).is_file():
            return root / BATCH_DIR
    raise DatasetError(
        f"no CIFAR-10 python batches in {root} (expected {BATCH_DIR}/{TRAIN_BATCHES[0]} "
        "or the batch files themselves); set download: true to fetch them (needs the network)"
    )


def load_cifar10(spec: Cifar10Dataset, base_dir: Path | None = None) -> Dataset:
    """The training batches then the test batch; sources `cifar10/<train|test>/<index>`."""
    folder = find_batches(resolve_root(spec.root, base_dir), spec.download)
    for name in (*TRAIN_BATCHES, TEST_BATCH, META):
        if not (folder / name).is_file():
            raise DatasetError(f"{folder}: missing CIFAR-10 file {name}")
    names = _read_names(folder)
    classes = select_classes(names, spec.classes, str(folder))
    label_of = {names.index(c): i for i, c in enumerate(classes)}

    samples: list[np.ndarray] = []
    labels: list[int] = []
    sources: list[str] = []
    test_start = 0
    for part, files in (("train", TRAIN_BATCHES), ("test", (TEST_BATCH,))):
        batches = [_read_batch(folder / f) for f in files]
        images = np.concatenate([b[0] for b in batches])
        original = np.concatenate([b[1] for b in batches])
        chosen = [i for i, t in enumerate(original) if int(t) in label_of]
        mapped = [label_of[int(original[i])] for i in chosen]
        keep = take_per_class(mapped, spec.max_per_class)
        if part == "test":
            test_start = len(samples)
        samples.extend(images[chosen[k]] for k in keep)
        labels.extend(mapped[k] for k in keep)
        sources.extend(f"cifar10/{part}/{chosen[k]}" for k in keep)
    official = np.arange(test_start, len(samples), dtype=np.int64) if spec.official_test else None
    return Dataset(
        kind="image",
        classes=classes,
        samples=samples,
        labels=np.asarray(labels, dtype=np.int64),
        sources=sources,
        official_test=official,
    )
