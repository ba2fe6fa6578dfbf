"""The one parser of registry URIs: ``models:/<name>@<alias>`` and ``models:/<name>/<version>``
(the registry's resolution and model loading both read them here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelsUri:
    """A registry URI's parts: a name and either an alias or a version."""

    name: str
    alias: str | None = None
    version: str | None = None


def parse_models_uri(uri: str) -> ModelsUri:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>``.

    Raises:
        ValueError: the URI is neither form.
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
    raise ValueError(f"{uri!r}: use models:/<name>@<alias> or models:/<name>/<version>")
