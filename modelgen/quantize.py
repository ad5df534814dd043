"""int8 sub-models: ONNX Runtime's quantization of an exported fp32 graph, checked by error.

Two ways, both ONNX Runtime's own tools, both int8 weights per output channel:
- `dynamic`: weights int8, activations quantized at run time per tensor (MatMulInteger).
  Needs no data; the graph stays small and its error comes from the weights alone.
- `static`: QDQ graph whose activation ranges are calibrated (MinMax) on real training
  samples; every MatMul runs on int8 inputs with fixed scales.

An int8 graph cannot match torch to 1e-4, so `verify_quantized` replaces that parity check
by a budget on what the aggregator receives: the relative RMS error of the features,
‖f_int8 − f_fp32‖ / ‖f_fp32‖ over the check samples. bench/README.md says what each mode
costs in accuracy and speed here.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from edvit.bundle import FILE_MODE, FileRef, file_ref
from edvit.config.recipe import ExportSpec, Quantization
from edvit.onnx import ONNX_INPUT, ONNX_OUTPUTS, ort_session
from modelgen.export import ExportError


class QuantizationError(ExportError):
    """An int8 graph whose features are further from the fp32 graph's than the budget."""


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over (B, C, H, W) sample batches."""

    def __init__(self, batches: Sequence[np.ndarray]) -> None:
        self._batches: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {ONNX_INPUT: np.ascontiguousarray(batch, np.float32)}


def quantize_onnx(
    fp32: Path, out: Path, mode: Quantization, calibration: Sequence[np.ndarray] = ()
) -> Path:
    """Write the int8 graph of `fp32` to `out`; `static` needs calibration batches."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if mode is Quantization.static and not calibration:
        raise ValueError("static quantization needs calibration samples")
    with tempfile.TemporaryDirectory(prefix="edvit-quant-") as tmp:
        # ONNX Runtime's pre-processing (shape inference, graph clean-up), as its
        # documentation asks before either method.
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        if mode is Quantization.dynamic:
            quantize_dynamic(pre, out, per_channel=True, weight_type=QuantType.QInt8)
        else:
            quantize_static(
                pre,
                out,
                _Calibration(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
    return out


def feature_error(fp32: Path, int8: Path, batches: Sequence[np.ndarray]) -> float:
    """Relative RMS error of the int8 graph's features against the fp32 graph's."""
    ref, got = ort_session(fp32), ort_session(int8)
    num = den = 0.0
    for x in batches:
        x = np.ascontiguousarray(x, np.float32)
        want = ref.run([ONNX_OUTPUTS[0]], {ONNX_INPUT: x})[0]
        have = got.run([ONNX_OUTPUTS[0]], {ONNX_INPUT: x})[0]
        num += float(np.sum((have - want) ** 2))
        den += float(np.sum(want**2))
    return float(np.sqrt(num / den)) if den > 0 else float("inf")


def verify_quantized(
    fp32: Path, int8: Path, batches: Sequence[np.ndarray], budget: float, name: Path
) -> float:
    """The feature error of `int8`; QuantizationError naming `name` (the file it will be)
    if it is above `budget` (or NaN)."""
    error = feature_error(fp32, int8, batches)
    if not error <= budget:
        raise QuantizationError(
            f"{name}: int8 features differ from fp32 by {error:.3g} relative RMS "
            f"(budget export.feature_error_budget = {budget:g})"
        )
    return error


def quantize_submodel(
    out_dir: Path,
    onnx: FileRef,
    spec: ExportSpec,
    calibration: Sequence[np.ndarray],
    check: Sequence[np.ndarray],
) -> tuple[FileRef, float]:
    """Replace the bundle's verified fp32 ONNX `onnx` by its int8 graph, within budget.

    Returns the new FileRef and the measured feature error; the fp32 file is not kept (the
    bundle's safetensors hold the fp32 weights)."""
    fp32 = out_dir / onnx.path
    with tempfile.TemporaryDirectory(prefix="edvit-int8-") as tmp:
        int8 = quantize_onnx(fp32, Path(tmp) / fp32.name, spec.quantization, calibration)
        error = verify_quantized(fp32, int8, check, spec.feature_error_budget, fp32)
        shutil.move(int8, fp32)
    fp32.chmod(FILE_MODE)
    return file_ref(out_dir, fp32), error
