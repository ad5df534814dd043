"""The sub-models a node hosts, on ONNX Runtime: one preprocessed capture in, features out.

A node may host several sub-models (the plan puts them on one device); all run on the same
capture, so the input is preprocessed once and fed to each session in turn. Sessions are
configured as `modelgen` measured and verified them (CPU provider, `threads` intra-op
threads, sequential execution), so a node's features equal the ones the fusion was
trained on. Inference time is recorded per call for the node's p50/p99 stats.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edvit.bundle import Bundle, SubmodelEntry
from edvit.onnx import ort_session
from edvit.stats import Window

FloatArray = npt.NDArray[np.float32]


class RunnerError(Exception):
    """A sub-model that cannot be hosted: names the bundle file or sub-model at fault."""


def latency_summary(window: Window) -> dict[str, float | int | None]:
    """`count`, and `p50_ms`, `p99_ms`, `max_ms` of the recent calls (None before any call)."""
    ms = window.percentiles(scale=1000.0)
    return {"count": window.count, **{f"{k}_ms": v for k, v in ms.items()}}


class SubmodelRunner:
    """ONNX Runtime sessions for the sub-models `sub_ids` of `bundle`.

    Each ONNX file is read once, its sha256 checked against the manifest, and the session
    built from those very bytes (the file cannot change between check and load). The
    session's input and output names and static input dims must match the manifest.
    """

    def __init__(self, bundle: Bundle, sub_ids: Sequence[str], threads: int = 1) -> None:
        if isinstance(sub_ids, str):
            raise RunnerError(f"sub_ids must be a list of ids, not the string {sub_ids!r}")
        if not sub_ids:
            raise RunnerError("a node must host at least one sub-model")
        if len(set(sub_ids)) != len(sub_ids):
            raise RunnerError(f"sub-model ids listed twice: {list(sub_ids)}")
        if threads < 1:
            raise RunnerError(f"threads must be >= 1, got {threads}")
        self.bundle = bundle
        self.sub_ids = tuple(sub_ids)
        self.threads = threads
        try:
            self.entries: dict[str, SubmodelEntry] = {s: bundle.submodel(s) for s in sub_ids}
        except KeyError as exc:
            raise RunnerError(f"{bundle.root}: {exc.args[0]}") from None
        shapes = {s: tuple(e.input_shape) for s, e in self.entries.items()}
        if len(set(shapes.values())) != 1:
            raise RunnerError(
                f"{bundle.root}: hosted sub-models take different inputs {shapes}; "
                "they must share one capture"
            )
        self.input_shape: tuple[int, ...] = shapes[self.sub_ids[0]]
        self._sessions: dict[str, Any] = {}
        for sub_id, entry in self.entries.items():
            self._sessions[sub_id] = self._load(sub_id, entry)
        self.latency = Window()
        self.latency_per_submodel = {s: Window() for s in self.sub_ids}

    def _load(self, sub_id: str, entry: SubmodelEntry) -> Any:
        path = self.bundle.path(entry.onnx)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RunnerError(f"{path}: cannot read sub-model {sub_id}: {exc.strerror}") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.onnx.sha256:
            raise RunnerError(
                f"{path}: sha256 mismatch for sub-model {sub_id} (expected "
                f"{entry.onnx.sha256[:12]}…, got {digest[:12]}…); the bundle was altered"
            )
        try:
            session = ort_session(data, self.threads)
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph…)
            raise RunnerError(
                f"{path}: ONNX Runtime cannot load sub-model {sub_id}: {exc}"
            ) from None
        inputs = session.get_inputs()
        outputs = {o.name: o.shape for o in session.get_outputs()}
        names = [i.name for i in inputs]
        if names != [entry.onnx_input]:
            raise RunnerError(f"{path}: ONNX inputs {names}, manifest says [{entry.onnx_input!r}]")
        missing = [n for n in entry.onnx_outputs if n not in outputs]
        if missing:
            raise RunnerError(f"{path}: ONNX has no output(s) {missing} (has {sorted(outputs)})")
        feat_dims = list(outputs[entry.onnx_outputs[0]])
        width = feat_dims[1] if len(feat_dims) == 2 else None  # a str: symbolic, unknown
        if len(feat_dims) != 2 or (isinstance(width, int) and width != entry.feature_dim):
            raise RunnerError(
                f"{path}: ONNX output {entry.onnx_outputs[0]!r} has shape {feat_dims}, "
                f"manifest says (batch, {entry.feature_dim})"
            )
        dims = list(inputs[0].shape)
        want = [1, *entry.input_shape]
        static_ok = len(dims) == len(want) and all(
            not isinstance(d, int) or d == w for d, w in zip(dims[1:], want[1:], strict=True)
        )
        if not static_ok:
            raise RunnerError(
                f"{path}: ONNX input shape {dims} does not fit manifest input_shape "
                f"{entry.input_shape} (plus a batch axis)"
            )
        return session

    def run(self, x: np.ndarray) -> dict[str, FloatArray]:
        """One preprocessed sample (C, H, W) float32 → {sub_id: features (feature_dim,)}."""
        if not isinstance(x, np.ndarray) or x.dtype != np.float32:
            got = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
            raise ValueError(f"input must be a float32 numpy array, got {got}")
        if tuple(x.shape) != self.input_shape:
            raise ValueError(f"input shape {tuple(x.shape)} != the sub-models' {self.input_shape}")
        batch = np.ascontiguousarray(x)[None]
        out: dict[str, FloatArray] = {}
        start = time.perf_counter()
        for sub_id in self.sub_ids:
            entry = self.entries[sub_id]
            t0 = time.perf_counter()
            (features,) = self._sessions[sub_id].run(
                [entry.onnx_outputs[0]], {entry.onnx_input: batch}
            )
            self.latency_per_submodel[sub_id].add(time.perf_counter() - t0)
            vec = np.asarray(features, dtype=np.float32).reshape(-1)
            if vec.shape[0] != entry.feature_dim:
                raise RunnerError(
                    f"sub-model {sub_id}: produced {vec.shape[0]} features, "
                    f"manifest says {entry.feature_dim}"
                )
            out[sub_id] = vec
        self.latency.add(time.perf_counter() - start)
        return out

    def warm_up(self, runs: int = 3) -> None:
        """A few unrecorded runs on zeros: the first ORT runs allocate and are slow, and the
        node's first real tick should not pay for that (nor skew p99)."""
        x = np.zeros(self.input_shape, dtype=np.float32)
        batch = x[None]
        for _ in range(runs):
            for sub_id in self.sub_ids:
                entry = self.entries[sub_id]
                self._sessions[sub_id].run([entry.onnx_outputs[0]], {entry.onnx_input: batch})

    def stats(self) -> dict[str, Any]:
        """Inference ms of whole `run` calls and per sub-model: for the node's stats topic."""
        return {
            **latency_summary(self.latency),
            "per_submodel": {
                s: latency_summary(self.latency_per_submodel[s]) for s in self.sub_ids
            },
        }
