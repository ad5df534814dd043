"""How a sub-model's ONNX graph is named and run: one session factory for nodes and `modelgen`.

`modelgen` verifies and evaluates exports with the very session options a node uses, so the
figures it reports are the ones a node will see.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

ONNX_INPUT: Final = "input"  # (B, C, H, W) float32, preprocessed
ONNX_OUTPUTS: Final = ("features", "logits")  # (B, D) pre-logits CLS features, (B, K) logits


def ort_session(model: bytes | Path, threads: int = 1, profile_prefix: str | None = None) -> Any:
    """An ONNX Runtime CPU session: `threads` intra-op threads, sequential execution.

    `model` is the file's bytes (a node hashes exactly what it loads) or a path;
    `profile_prefix` turns on ONNX Runtime's profiler (`end_profiling()` names the file), so
    a profile is taken with the very options a node runs.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads > 1:
        # Idle pool threads otherwise spin between ticks, stealing the capture thread's core.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
