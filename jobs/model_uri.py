"""The one parser of ``models:/`` URIs: a registered model's ``models:/<name>@<alias>`` and
``models:/<name>/<version>``, and a logged model's ``models:/<model id>`` (MLflow 3). The
registry's resolution, registration and model loading all read them here."""

from __future__ import annotations

import re
from dataclasses import dataclass

LOGGED_MODEL_ID = re.compile(r"^m-[0-9a-f]{8,64}$")  # what MLflow 3 names a logged model


@dataclass(frozen=True)
class ModelsUri:
    """A models:/ URI's parts: a registered name and either an alias or a version, or a
    logged model's id (then ``name`` is empty)."""

    name: str
    alias: str | None = None
    version: str | None = None
    logged_model_id: str | None = None


def parse_models_uri(uri: str) -> ModelsUri:
    """``models:/<name>@<alias>``, ``models:/<name>/<version>`` or ``models:/<model id>``.

    Raises:
        ValueError: the URI is none of these.
    """
    rest = uri.removeprefix("models:/")
    if rest == uri or not rest:
        raise ValueError(f"{uri!r} is not a models:/ URI")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        if name and alias:
            return ModelsUri(name, alias=alias)
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
        if name and version:
            return ModelsUri(name, version=version)
    elif LOGGED_MODEL_ID.match(rest):
        return ModelsUri("", logged_model_id=rest)
    raise ValueError(f"{uri!r}: use models:/<name>@<alias> or models:/<name>/<version>")
