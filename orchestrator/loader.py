"""``load_spec(path)``: YAML to a validated ``PipelineSpec``, or a ``SpecError`` to act on.

Every problem is reported as ``file:line: field.path: what is wrong (and the fix)``; an
unknown key gets the closest valid one ("did you mean 'epochs'?"). With ``check_data``
the data source, its columns and the model's fit to the data are checked too (reading the
schema only), so ``orch validate`` catches them before anything starts. Neither imports
torch nor Ray (tests/orchestrator/test_cli_imports.py holds it to that).
"""

from __future__ import annotations

import difflib
import functools
import types
import typing
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from jobs import models as zoo
from jobs import plugins
from jobs.errors import DataError
from jobs.spec import ModelSpec, check_pipeline_fits_model, params_problem
from orchestrator.exceptions import SpecError, SpecTooLarge
from orchestrator.spec import PipelineSpec, adopt_plugin_metrics
from tuning.spec import metric_problem

Loc = tuple


def _line_map(text: str) -> dict[Loc, int]:
    """Dotted location (as a tuple) -> 1-based line of that key or item in the YAML text."""
    lines: dict[Loc, int] = {}

    def walk(node, loc: Loc) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                here = (*loc, key.value)
                lines[here] = key.start_mark.line + 1
                walk(value, here)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[(*loc, i)] = item.start_mark.line + 1
                walk(item, (*loc, i))

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, ())
    return lines


def _line_of(lines: dict[Loc, int], loc: Loc) -> int:
    """The line of ``loc`` or of its closest ancestor present in the file (1 if none)."""
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


def _unwrap(annotation):
    """Optional[X] / X | None -> X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _model_at(loc: Loc, raw: dict) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at ``loc`` (for did-you-mean)."""
    current: type[BaseModel] = PipelineSpec
    mapping_of = None  # the value model while the next part is a key of a dict field
    for part in loc:
        if mapping_of is not None:
            current, mapping_of = mapping_of, None
            continue
        if current is ModelSpec and part == "params":
            model_type = (raw.get("model") or {}).get("type")
            if not model_type or plugins.is_import_path(model_type):
                return None  # an import path is not imported to explain a parse error
            try:
                return zoo.get_entry(model_type).params_model
            except ValueError:  # unknown: reported on model.type
                return None
        field = current.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        nxt = _unwrap(field.annotation)
        if typing.get_origin(nxt) is dict:
            value = typing.get_args(nxt)[1]
            if not (isinstance(value, type) and issubclass(value, BaseModel)):
                return None
            mapping_of = value
            continue
        if not (isinstance(nxt, type) and issubclass(nxt, BaseModel)):
            return None
        current = nxt
    return current


def _explain(error: dict, raw: dict) -> str:
    loc = error["loc"]
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        model = _model_at(loc[:-1], raw)
        choices = [f.alias or name for name, f in model.model_fields.items()] if model else []
        close = difflib.get_close_matches(key, choices, n=1)
        hint = f" Instead of {key!r}, did you mean {close[0]!r}?" if close else ""
        valid = f" Valid keys: {', '.join(choices)}." if choices else ""
        return f"unknown key {key!r}.{hint}{valid}"
    if kind == "missing":
        model = _model_at(loc[:-1], raw)
        field = model.model_fields.get(str(loc[-1])) if model else None
        about = f" ({field.description})" if field is not None and field.description else ""
        return f"required key {loc[-1]!r} is missing{about}"
    msg = error["msg"].removeprefix("Value error, ")
    given = error.get("input")
    if (
        kind not in ("model_params", "tune_space")
        and given is not None
        and not isinstance(given, dict | list)
    ):
        msg = f"{msg} (got {given!r})"
    return msg


def _expand(errors: list[dict]) -> list[dict]:
    """Unfold model.params errors into one error per params field."""
    out = []
    for error in errors:
        if error["type"] == "model_params":
            for inner in error["ctx"]["errors"]:
                out.append({**inner, "loc": (*error["loc"], "params", *inner["loc"])})
        elif error["type"] == "nested_errors":  # errors that carry their own full location
            out.extend(error["ctx"]["errors"])
        else:
            out.append(error)
    return out


def _format(path: Path, lines: dict[Loc, int], loc: Loc, message: str) -> str:
    where = ".".join(str(p) for p in loc) or "(top level)"
    return f"{path}:{_line_of(lines, loc)}: {where}: {message}"


MAX_SPEC_NODES = 20_000
"""The most scalars, lists and mappings a spec may hold once its aliases are expanded. A
real spec holds a few hundred; an alias bomb (each anchor a list of aliases of the one
before) expands a few hundred bytes into billions, which building the spec and its line
map would walk."""


def _expanded_nodes(root: yaml.Node, limit: int) -> int:
    """How many nodes ``root`` holds with every alias expanded, counted without expanding
    (a node's size is memoized, as PyYAML shares an aliased node); stops past ``limit``."""
    sizes: dict[int, int] = {}
    order, stack = [], [root]
    while stack:  # children before parents, each shared node once
        node = stack.pop()
        if id(node) in sizes:
            continue
        sizes[id(node)] = -1
        order.append(node)
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(part for pair in node.value for part in pair)
    for node in reversed(order):
        children = (
            node.value if isinstance(node, yaml.SequenceNode)
            else [part for pair in node.value for part in pair]
            if isinstance(node, yaml.MappingNode) else []
        )  # fmt: skip
        sizes[id(node)] = min(limit + 1, 1 + sum(sizes[id(child)] for child in children))
    return sizes[id(root)]


def _bounded_load(text: str, path: Path):
    """``yaml.safe_load`` of a document whose expanded size is within MAX_SPEC_NODES.

    Raises:
        SpecTooLarge: it expands past the limit (nothing was built).
        yaml.YAMLError: it is not YAML.
    """
    root = yaml.compose(text, Loader=yaml.SafeLoader)  # aliases stay shared here
    if root is not None and _expanded_nodes(root, MAX_SPEC_NODES) > MAX_SPEC_NODES:
        raise SpecTooLarge(
            f"{path}:1: the spec expands to more than {MAX_SPEC_NODES:,} values once its YAML "
            "aliases (*name) are expanded; write the values out, or use fewer aliases"
        )
    return yaml.safe_load(text)


def parse_spec(text: str, path: Path) -> tuple[PipelineSpec, dict[Loc, int]]:
    """Validate YAML text; returns the spec and its line map.

    Raises:
        SpecError: invalid YAML or spec, naming file:line and the field.
        SpecTooLarge: an alias bomb (``MAX_SPEC_NODES``).
    """
    try:
        raw = _bounded_load(text, path)
        lines = _line_map(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path}:{line}: invalid YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}:1: the spec must be a mapping with name, data, model, train, ...")
    try:
        return PipelineSpec.model_validate(raw), lines
    except ValidationError as exc:
        errors = _expand(exc.errors(include_url=False))
        messages = [_format(path, lines, tuple(e["loc"]), _explain(e, raw)) for e in errors]
        raise SpecError("\n".join(messages)) from None


def check_against_data(spec: PipelineSpec, path: Path, lines: dict[Loc, int]) -> None:
    """The checks that need the data's schema: source, columns, the model's fit to the shape."""
    from jobs.data import probe  # pyarrow and numpy: only when the data is opened

    try:
        schema = probe(spec.data)
    except DataError as exc:
        raise SpecError(_format(path, lines, tuple(exc.field.split(".")), exc.message)) from None
    if spec.tune is not None:
        problem = metric_problem(spec.tune.metric, schema.task)
        if problem:
            raise SpecError(_format(path, lines, ("tune", "metric"), problem))
    n_outputs = 2  # any width: only the input side can fail here
    input_shape = tuple(schema.input_shape) if schema.input_shape else None
    shape = zoo.DataShape(len(schema.feature_names), n_outputs, input_shape)
    try:
        zoo.get_entry(spec.model.type)
    except ValueError as exc:  # an import path that does not import (the rest fail parsing)
        raise SpecError(_format(path, lines, ("model", "type"), str(exc))) from None
    if problem := adopt_plugin_metrics(spec):  # an import path's metrics, now it is imported
        raise SpecError(_format(path, lines, problem.loc, problem.message))
    try:
        zoo.check_fits(spec.model.type, spec.model.params, shape)
        if spec.model.type not in zoo.MODEL_ZOO:
            # A plugin's factory is built once here, before any worker starts: one that
            # raises or returns neither a module nor layers fails as a spec error.
            zoo.build_network(spec.model.type, spec.model.params, shape)
            check_pipeline_fits_model(spec.model, spec.train, imports=True)
    except ValidationError as exc:  # an import path's params, checked once it is imported
        problem = params_problem(exc)
        raise SpecError(_format(path, lines, ("model", "params"), problem)) from None
    except ValueError as exc:
        raise SpecError(_format(path, lines, ("model", "params"), str(exc))) from None


def load_spec(path: str | Path, check_data: bool = True) -> PipelineSpec:
    """Read and validate a pipeline spec file.

    Args:
        path: the YAML file.
        check_data: also open the data source and check its columns (schema only).

    Raises:
        SpecError: naming file:line, the field path and the fix.
    """
    spec, check = load_spec_deferring_data(path)
    if check_data:
        check()
    return spec


def load_spec_deferring_data(path: str | Path) -> tuple[PipelineSpec, Callable[[], None]]:
    """The validated spec now, and its checks against the data as a call to make later.

    Opening the data imports its reader (scikit-learn and SciPy alone take about 2.5 s): a
    run makes the call on a thread while Ray connects and its workers start.

    Raises:
        SpecError: naming file:line, the field path and the fix (the call raises it too).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    spec, lines = parse_spec(text, path)
    return spec, functools.partial(check_against_data, spec, path, lines)
