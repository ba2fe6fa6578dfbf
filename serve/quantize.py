"""Quantizers: a float32 torch model in, one served file out, and the runtime that loads it.

ONNX Runtime runs fp32, dynamic int8 and static int8: on this project's CPUs it was the
fastest maintained int8 path for torch 2.13 (``torch.ao.quantization`` is deprecated and its
int8 modules do not survive MLflow's pt2 format; torchao's int8 pays off only after
``torch.compile``). bf16 stays in torch (ONNX Runtime's CPU kernels lack bf16 matmuls) and
is stored as a ``torch.export`` program. Neither format is unpickled when loaded.

A model ONNX cannot export (an operator without an ONNX translation, e.g. ``torch.cummax``)
raises ``OnnxExportError``; ``build_torch_fp32`` then writes the same model as a float32
``torch.export`` program, which the variant stage serves in PyTorch instead.

Adding a quantization is one decorated function::

    @quantizer("fp16-weights", runtime="onnxruntime")
    def fp16(model, example, calibration, out_dir) -> Path: ...
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy only where it runs: the spec reads QUANTIZERS at editor speed
    import numpy as np

INPUT_NAME = "features"
OUTPUT_NAME = "output"


class QuantizationError(Exception):
    """The model could not be turned into the asked variant; the message says why."""


class OnnxExportError(QuantizationError):
    """``torch.onnx.export`` refused the model; PyTorch can still serve it."""


@dataclass(frozen=True)
class Quantizer:
    name: str
    runtime: str  # "onnxruntime" | "torch"
    filename: str
    build: Callable


QUANTIZERS: dict[str, Quantizer] = {}


def quantizer(name: str, runtime: str, filename: str):
    def decorate(build):
        QUANTIZERS[name] = Quantizer(name, runtime, filename, build)
        return build

    return decorate


def build_variant(
    model,
    example: np.ndarray,
    quantization: str,
    out_dir: Path,
    calibration: np.ndarray | None = None,
) -> Path:
    """Write ``model`` (float32 torch module, eval mode) as the ``quantization`` variant.

    Args:
        example: a few raw input rows (float32), used to trace the model.
        calibration: raw rows for static-int8's activation ranges.

    Returns:
        The variant's file inside ``out_dir``.
    """
    entry = QUANTIZERS[quantization]
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return entry.build(model, example.astype("float32"), calibration, out_dir)
    except QuantizationError:
        raise
    except Exception as exc:  # exporters raise many types; the user needs the first line
        from jobs.errors import first_line

        raise QuantizationError(f"{quantization}: {first_line(exc)}") from exc


def runtime_of(quantization: str) -> str:
    return QUANTIZERS[quantization].runtime


# --------------------------------------------------------------------------- ONNX


def _export_onnx(model, example: np.ndarray, path: Path) -> Path:
    """torch.export -> ONNX with a dynamic batch dimension."""
    import torch

    x = torch.from_numpy(example[:1].repeat(2, axis=0))
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                model,
                (x,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: "batch"},),
                verbose=False,
            )
        except Exception as exc:  # the exporter raises its own types, in colour
            raise OnnxExportError(_onnx_reason(exc)) from exc
    program.save(str(path))
    return path


def _onnx_reason(exc: BaseException) -> str:
    """The ONNX exporter's reason in one plain line: the operator it has no translation for
    when it names one (its own first line only says which of its steps failed)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    missing = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)'", text)
    if missing:
        return f"ONNX has no translation for {missing.group(1)}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


@quantizer("none", runtime="onnxruntime", filename="model.onnx")
def _fp32(model, example, calibration, out_dir: Path) -> Path:
    return _export_onnx(model, example, out_dir / "model.onnx")


def _preprocessed(model, example, out_dir: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = _export_onnx(model, example, out_dir / "fp32.onnx")
    prepared = out_dir / "prepared.onnx"
    quant_pre_process(str(fp32), str(prepared))
    fp32.unlink()
    return prepared


@quantizer("dynamic-int8", runtime="onnxruntime", filename="model.onnx")
def _dynamic_int8(model, example, calibration, out_dir: Path) -> Path:
    """int8 weights; activations quantized per batch at run time (matmuls only: measured
    faster than also quantizing the other ops)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    prepared = _preprocessed(model, example, out_dir)
    out = out_dir / "model.onnx"
    quantize_dynamic(
        str(prepared),
        str(out),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gemm"],
    )
    prepared.unlink()
    return out


class _Rows:
    """ONNX Runtime's CalibrationDataReader over a matrix, 32 rows a step."""

    def __init__(self, rows: np.ndarray):
        import numpy as np

        self._batches = iter(np.array_split(rows, max(1, len(rows) // 32)))

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch.astype("float32")}


@quantizer("static-int8", runtime="onnxruntime", filename="model.onnx")
def _static_int8(model, example, calibration, out_dir: Path) -> Path:
    """int8 weights and activations; activation ranges calibrated on ``calibration`` rows."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if calibration is None or len(calibration) == 0:
        raise QuantizationError("static-int8 needs calibration rows (serve.calibration_samples)")
    prepared = _preprocessed(model, example, out_dir)
    out = out_dir / "model.onnx"
    quantize_static(
        str(prepared),
        str(out),
        _Rows(calibration),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm", "Conv"],
        calibrate_method=CalibrationMethod.MinMax,
    )
    prepared.unlink()
    return out


# --------------------------------------------------------------------------- torch bf16


def _bf16_module(model):
    import torch

    class BF16(torch.nn.Module):
        """bf16 weights inside; float32 in and out, so clients see no difference."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner.to(torch.bfloat16)

        def forward(self, x):
            return self.inner(x.to(torch.bfloat16)).float()

    return BF16(model)


@quantizer("bf16", runtime="torch", filename="model.pt2")
def _bf16(model, example, calibration, out_dir: Path) -> Path:
    import copy

    return _export_pt2(_bf16_module(copy.deepcopy(model)).eval(), example, out_dir / "model.pt2")


def build_torch_fp32(model, example: np.ndarray, out_dir: Path) -> Path:
    """The float32 model as a ``torch.export`` program (runtime ``torch``): what serves a
    model that ONNX cannot export."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return _export_pt2(model, example.astype("float32"), out_dir / "model.pt2")


def _export_pt2(module, example: np.ndarray, out: Path) -> Path:
    import torch

    x = torch.from_numpy(example[:1].repeat(2, axis=0))
    program = torch.export.export(
        module, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},)
    )
    torch.export.save(program, str(out))
    return out


# --------------------------------------------------------------------------- loading


def load_predictor(
    path: Path, runtime: str, threads: int = 1
) -> Callable[[np.ndarray], np.ndarray]:
    """A function float32 rows -> model outputs, for a file ``build_variant`` wrote."""
    threads = max(1, threads)
    if runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run_onnx(rows: np.ndarray) -> np.ndarray:
            return session.run(None, {name: rows})[0]

        return run_onnx
    import torch

    from serve.mlflow_internals import check_pt2_pickle_free

    torch.set_num_threads(threads)
    # torch.export.load unpickles parts of the archive; refuse one that holds anything but
    # tensors and metadata (what MLflow itself checks before loading a pt2 model).
    check_pt2_pickle_free(str(path))
    module = torch.export.load(str(path)).module()

    def run_torch(rows: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(rows)).numpy()

    return run_torch


def file_size(path: Path) -> int:
    return os.path.getsize(path)
