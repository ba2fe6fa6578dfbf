"""A quantization is one decorated function: the spec accepts it and its JSON Schema lists
it, with nothing else to change; an unknown one is refused with the registered names."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve import quantize
from serve.spec import ServeSpec


def test_one_decorated_function_adds_a_quantization(monkeypatch):
    monkeypatch.setattr(quantize, "QUANTIZERS", dict(quantize.QUANTIZERS))

    @quantize.quantizer("fp16-weights", runtime="onnxruntime", filename="model.onnx")
    def fp16(model, example, calibration, out_dir):
        raise NotImplementedError

    spec = ServeSpec(name="d", quantization="fp16-weights")
    assert spec.quantization == "fp16-weights"
    assert quantize.runtime_of("fp16-weights") == "onnxruntime"
    enum = ServeSpec.model_json_schema()["properties"]["quantization"]["enum"]
    assert enum == ["none", "dynamic-int8", "static-int8", "bf16", "fp16-weights"]


def test_an_unknown_quantization_names_the_registered_ones():
    with pytest.raises(ValidationError) as refused:
        ServeSpec(name="d", quantization="int4")
    (error,) = refused.value.errors()
    assert error["loc"] == ("quantization",) and error["type"] == "literal_error"
    assert error["msg"] == "Input should be 'none', 'dynamic-int8', 'static-int8' or 'bf16'"
