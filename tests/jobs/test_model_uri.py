"""Registry URIs are parsed in one place, for the registry and for model loading alike."""

from __future__ import annotations

import pytest

from jobs.model_uri import ModelsUri, parse_models_uri


def test_alias_and_version_forms():
    assert parse_models_uri("models:/iris@champion") == ModelsUri("iris", alias="champion")
    assert parse_models_uri("models:/iris/3") == ModelsUri("iris", version="3")
    assert parse_models_uri("models:/team.iris-v2/12").name == "team.iris-v2"
    logged = parse_models_uri("models:/m-aae84e5030fd4797ad8bd6baf353980b")
    assert logged == ModelsUri("", logged_model_id="m-aae84e5030fd4797ad8bd6baf353980b")


@pytest.mark.parametrize(
    "uri", ["runs:/abc/model", "models:/", "models:/iris", "models:/@x", "iris@a"]
)
def test_anything_else_is_refused_with_the_two_forms(uri):
    with pytest.raises(ValueError, match="models:/"):
        parse_models_uri(uri)
