"""The served variant of a model version: built once, measured, gated, kept in the registry.

Before a quantized model is deployed its validation metric is measured against the
float32 model's; a drop beyond ``max_accuracy_drop`` stops the deploy. The variant file
is logged on the version's run (``serving/<quantization>/``) and its size, metric and
latency become a version tag (``orch.serve.<quantization>``), so a second deploy of the
same version reuses it and ``orch models show`` lists it.

A model ONNX cannot export serves in PyTorch float32 (a ``torch.export`` program) whatever
quantization was asked: the report's ``fallback`` says so and why, and the gate has nothing
to stop (the served model is the float32 one). ONNX Runtime is where this project's int8
paths are; torch's own dynamic int8 (``torch.ao``) is deprecated and does not export.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from serve.quantize import (
    OnnxExportError,
    build_torch_fp32,
    build_variant,
    file_size,
    load_predictor,
    runtime_of,
)
from serve.records import VariantReport
from serve.registry import SERVED_TAG as VARIANT_TAG
from serve.registry import Registry


class GateError(Exception):
    """The quantized model lost more than ``max_accuracy_drop``; nothing was deployed."""


def _metric(outputs: np.ndarray, y: np.ndarray, task: str) -> float:
    if task == "classification":
        return float(np.mean(np.argmax(outputs, axis=1) == y))
    return float(np.sqrt(np.mean((outputs.reshape(-1) - y.reshape(-1)) ** 2)))


def _drop(value: float, fp32: float, task: str) -> float:
    if task == "classification":
        return fp32 - value
    return (value - fp32) / fp32 if fp32 > 0 else value - fp32


def _latency_ms(predict, rows: np.ndarray, repeats: int = 20) -> float:
    predict(rows)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict(rows)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def _size(model) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def check_gate(report: VariantReport, max_drop: float) -> None:
    if report.quantization != "none" and report.drop > max_drop:
        what = "accuracy" if report.metric == "val_accuracy" else "relative RMSE"
        raise GateError(
            f"{report.model_name} version {report.version} quantized as {report.quantization} "
            f"measures {report.metric} {report.value:.4f} against {report.fp32_value:.4f} in "
            f"float32: {what} drop {report.drop:.4f} exceeds serve.max_accuracy_drop "
            f"{max_drop:g}. Deploy stopped; raise max_accuracy_drop or choose another "
            "serve.quantization (none keeps float32)"
        )


def prepare_variant(
    registry: Registry,
    model_name: str,
    version: str,
    quantization: str,
    *,
    model,
    x_val: np.ndarray,
    y_val: np.ndarray,
    task: str,
    calibration: np.ndarray | None,
    max_batch_size: int,
    threads: int = 1,
) -> VariantReport:
    """The version's ``quantization`` variant, built and measured now or reused from the
    registry. ``model`` is the float32 eager module; ``x_val`` raw validation features.

    Does not apply the gate: ``check_gate`` does, so a changed threshold needs no rebuild.
    """
    tag = f"{VARIANT_TAG}{quantization}"
    cached = registry.version_tags(model_name, version).get(tag)
    if cached:
        report = VariantReport.model_validate_json(cached)
        same_calibration = quantization != "static-int8" or report.calibration_samples == (
            None if calibration is None else len(calibration)
        )
        if same_calibration and report.max_batch_size == max_batch_size:
            return report
    import torch

    x_val = x_val.astype(np.float32)
    with torch.inference_mode():
        fp32_out = model(torch.from_numpy(x_val)).numpy()
    fp32_value = _metric(fp32_out, y_val, task)
    runtime, fallback = runtime_of(quantization), None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = build_variant(model, x_val[:4], quantization, Path(tmp), calibration)
        except OnnxExportError as exc:
            runtime, fallback = "torch", str(exc)
            path = build_torch_fp32(model, x_val[:4], Path(tmp))
        predict = load_predictor(path, runtime, threads)
        value = _metric(predict(x_val), y_val, task)
        batch = np.resize(x_val, (max_batch_size, x_val.shape[1]))
        run_id = registry.version_run(model_name, version)
        artifact_dir = f"serving/{quantization}"
        registry.log_artifact(run_id, str(path), artifact_dir)
        report = VariantReport(
            model_name=model_name,
            version=str(version),
            quantization=quantization,
            runtime=runtime,
            run_id=run_id,
            artifact_path=f"{artifact_dir}/{path.name}",
            size_bytes=file_size(path),
            fp32_size_bytes=_size(model),
            metric="val_accuracy" if task == "classification" else "val_rmse",
            value=value,
            fp32_value=fp32_value,
            drop=_drop(value, fp32_value, task),
            latency_ms_batch_1=_latency_ms(predict, x_val[:1]),
            latency_ms_max_batch=_latency_ms(predict, batch),
            max_batch_size=max_batch_size,
            calibration_samples=None if calibration is None else len(calibration),
            fallback=fallback,
        )
    registry.set_version_tags(model_name, version, {tag: report.model_dump_json()})
    return report
