"""The search space: checking its paths against the spec, and turning it into Ray Tune's.

Trials see a flat config keyed by the dotted paths; a ``choice`` dimension travels as the
index of its value (searchers model categories by index, and values such as lists would
be awkward parameter names), and ``decode`` turns a config back into real values.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable

from pydantic import BaseModel, ValidationError

from tuning.spec import Distribution, TuneSpec

SEARCHABLE_ROOTS = ("model", "train")


def set_path(tree: dict, path: str, value) -> dict:
    """A deep copy of ``tree`` with ``value`` at dotted ``path`` (parents must exist)."""
    out = copy.deepcopy(tree)
    node = out
    parts = path.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            raise KeyError(".".join(parts[: i + 1]))
        node = child
    node[parts[-1]] = value
    return out


def apply_values(tree: dict, values: dict) -> dict:
    for path, value in values.items():
        tree = set_path(tree, path, value)
    return tree


def _errors(exc: ValidationError) -> list[dict]:
    """Pydantic errors, with the model zoo's nested params errors unfolded."""
    out = []
    for error in exc.errors(include_url=False):
        if error["type"] == "model_params":
            for inner in error["ctx"]["errors"]:
                out.append({**inner, "loc": (*error["loc"], "params", *inner["loc"])})
        else:
            out.append(error)
    return out


def check_space(
    tune: TuneSpec, base: dict, validate: Callable[[dict], BaseModel]
) -> list[tuple[str, str]]:
    """Problems with the space as (path, message); empty when every path takes its values.

    Args:
        tune: the tune section.
        base: the rest of the pipeline spec as a dict (``model_dump``), tune left out.
        validate: validates a whole pipeline dict (raises pydantic's ValidationError).
    """
    problems: list[tuple[str, str]] = []
    for path, dist in tune.space.items():
        root = path.split(".")[0]
        if path == "train.epochs":
            problems.append(
                (
                    path,
                    "train.epochs is the study's time axis (early-stopping rungs, completed vs "
                    "stopped), so it is the same for all trials; set it outside tune.space",
                )
            )
            continue
        if root not in SEARCHABLE_ROOTS:
            problems.append(
                (
                    path,
                    f"only model.* and train.* can be searched, not {root!r} (data and tracking "
                    "are fixed for a study so that its trials compare)",
                )
            )
            continue
        for value in dist.candidate_values():
            message = _check_value(path, value, base, validate)
            if message:
                problems.append((path, message))
                break
    return problems


def _check_value(path: str, value, base: dict, validate) -> str | None:
    try:
        candidate = set_path(base, path, value)
    except KeyError as missing:
        return f"no such section {missing.args[0]!r} in the spec"
    try:
        validate(candidate)
    except ValidationError as exc:
        errors = _errors(exc)
        target = tuple(path.split("."))
        for error in errors:
            if error["type"] == "extra_forbidden" and tuple(map(str, error["loc"])) == target:
                parent = _get(base, target[:-1])
                keys = sorted(parent) if isinstance(parent, dict) else []
                close = difflib.get_close_matches(target[-1], keys, n=1)
                hint = f"; did you mean {'.'.join((*target[:-1], close[0]))!r}?" if close else ""
                return f"no such field in the spec{hint}"
        first = errors[0]
        where = ".".join(map(str, first["loc"])) or "spec"
        return f"value {value!r} is not valid here: {where}: {first['msg']}"
    return None


def _get(tree: dict, parts: tuple) -> object:
    node = tree
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _tune_domain(dist: Distribution, grid: bool):
    from ray import tune

    kind = dist.kind
    if grid:
        values = dist.grid_values()
        return tune.grid_search(list(range(len(values))) if kind == "choice" else values)
    bounds = dist.bounds(kind)
    if kind == "uniform":
        return tune.uniform(*bounds)
    if kind == "loguniform":
        return tune.loguniform(*bounds)
    if kind == "int":
        return tune.randint(bounds[0], bounds[1] + 1)
    if kind == "logint":
        return tune.lograndint(bounds[0], bounds[1] + 1)
    if kind == "quniform":
        return tune.quniform(*bounds)
    if kind == "qlogint":
        return tune.qlograndint(*bounds)
    return tune.choice(list(range(len(dist.choice))))


def param_space(tune: TuneSpec) -> dict:
    """Ray Tune's param_space: one flat key per dotted path."""
    grid = tune.search.algorithm == "grid"
    return {path: _tune_domain(dist, grid) for path, dist in tune.space.items()}


def decode(tune: TuneSpec, config: dict) -> dict:
    """A trial's config -> {dotted path: the value the spec gets}."""
    values = {}
    for path, dist in tune.space.items():
        if path not in config:
            continue
        raw = config[path]
        if dist.kind == "choice":
            values[path] = dist.choice[int(raw)]
        elif dist.kind in ("int", "logint", "qlogint"):
            values[path] = int(raw)
        else:
            values[path] = float(raw)
    return values
