"""The model zoo: each entry is a layer list that runs as nn.Sequential; one decorator adds one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jobs.models import (
    MODEL_ZOO,
    DataShape,
    ZooParams,
    build_layers,
    count_layers,
    register_model,
)


@pytest.mark.parametrize(
    ("model_type", "params", "layers"),
    [
        ("mlp", {"hidden_sizes": [32, 16]}, 3),
        ("cnn", {"channels": [4, 8]}, 3),
        ("transformer", {"d_model": 16, "num_heads": 2, "num_layers": 3}, 5),
    ],
)
def test_each_entry_is_a_sequential_layer_list(model_type, params, layers):
    built = build_layers(model_type, params, DataShape(n_features=64, n_outputs=10))
    assert len(built) == layers == count_layers(model_type, params)
    out = nn.Sequential(*built)(torch.randn(5, 64))
    assert out.shape == (5, 10)


def test_cnn_views_features_as_an_image():
    built = build_layers("cnn", {"channels": [4], "image_shape": [3, 4, 2]}, DataShape(24, 3))
    assert nn.Sequential(*built)(torch.randn(2, 24)).shape == (2, 3)
    with pytest.raises(ValueError, match="63 features are not a square image"):
        build_layers("cnn", {"channels": [4]}, DataShape(63, 3))


def test_params_are_checked():
    with pytest.raises(ValueError, match="num_heads \\(3\\) must divide d_model \\(16\\)"):
        build_layers("transformer", {"d_model": 16, "num_heads": 3}, DataShape(4, 2))
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        build_layers("mlp", {"activation": "swish"}, DataShape(4, 2))


def test_register_a_new_model_type_with_one_function():
    class LinearParams(ZooParams):
        bias: bool = True

    @register_model("linear-test", LinearParams)
    def linear(params: LinearParams, shape: DataShape) -> list[nn.Module]:
        return [nn.Linear(shape.n_features, shape.n_outputs, bias=params.bias)]

    try:
        built = build_layers("linear-test", {"bias": False}, DataShape(3, 2))
        assert built[0].bias is None
        with pytest.raises(ValueError, match="already registered"):
            register_model("linear-test", LinearParams)(linear)
    finally:
        MODEL_ZOO.pop("linear-test")


def test_bf16_warning_only_where_bf16_is_emulated():
    from jobs.worker import slow_bf16_warning

    cpu = torch.device("cpu")
    assert slow_bf16_warning("fp32", cpu) is None
    assert slow_bf16_warning("bf16", torch.device("cuda", 0)) is None
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    message = slow_bf16_warning("bf16", cpu)
    assert (message is None) == native
    if message:
        assert "consider train.deepspeed.precision: fp32" in message
