"""Models from outside the zoo: installed plugins (entry points) and import paths.

A YAML-only user names a model that is not in the zoo in two ways:

- **an installed plugin**: a package declares its factories under the entry-point group
  ``orch.models`` (``[project.entry-points."orch.models"] residual-mlp =
  "orch_example_plugin:residual_mlp"``) and ``model.type: residual-mlp`` finds it in every
  process of the venv (the CLI, the queue server, Ray's workers), with no import in the
  spec. Entry points are Python's own answer for "an installed package adds a named thing"
  (pytest plugins, MLflow's plugins); listing them reads package metadata only, so a spec
  naming a zoo model never imports a plugin.
- **an import path** ``package.module:function``, for one user's machine: it works where
  the process can import it (the embedded default, ``ray job submit --working-dir``, a
  cluster where the package is installed). A member of a shared cluster cannot use one
  (``orchestrator.scheduling.boundary``): code runs there only if the admin installed it.

A factory takes ``(params, shape)`` and returns an ``nn.Module`` (data parallel, ZeRO 0-3)
or a list of layers (also pipeline parallel). ``model_plugin`` declares its params model,
so ``orch validate`` checks ``model.params`` (did-you-mean, file:line) and ``orch schema``
documents them; an undecorated factory takes any params (``FreeParams``).
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from jobs.errors import first_line

__all__ = [
    "ENTRY_POINT_GROUP",
    "FreeParams",
    "Plugin",
    "PluginError",
    "PluginMetric",
    "PluginSource",
    "UnknownPlugin",
    "check_import_path",
    "described",
    "import_root",
    "importable",
    "installed_names",
    "is_import_path",
    "load",
    "model_plugin",
]

ENTRY_POINT_GROUP = "orch.models"
_DECLARATION = "__orch_model__"


class FreeParams(BaseModel):
    """The params of an undecorated factory: any keys, passed on as attributes."""

    model_config = ConfigDict(extra="allow")


# What the trainer itself reports as val_<name>: a plugin's metric may not shadow one.
TASK_METRIC_NAMES = frozenset({"loss", "accuracy", "rmse"})
_METRIC_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class PluginMetric:
    """A plugin's own validation metric, reported every epoch as ``val_<name>`` beside the
    task's, so ``tune.metric``, ``register.promote_if`` and MLflow can use it.

    ``rows(outputs, targets)`` returns one value per row (no reduction, like ``loss``):
    the metric is their mean over every rank's validation rows, exact across batches,
    ranks and pipeline stages. A metric that is not a mean over rows (F1, AUC) does not
    fit this form. ``mode`` says which way is better.
    """

    rows: Callable
    mode: Literal["max", "min"] = "max"


@dataclass(frozen=True)
class _Declaration:
    params_model: type[BaseModel]
    check: Callable | None
    loss: Callable | None = None
    metrics: dict[str, PluginMetric] = field(default_factory=dict)


def _checked_metrics(metrics: dict[str, PluginMetric] | None) -> dict[str, PluginMetric]:
    """The declared metrics, or a ValueError naming the bad one (raised when the plugin's
    module is imported, which the loader reports as the plugin's import error)."""
    for name, metric in (metrics or {}).items():
        if not isinstance(name, str) or not _METRIC_NAME.fullmatch(name):
            raise ValueError(
                f"plugin metric name {name!r}: use lowercase letters, digits and _ (it is "
                "reported as val_<name>)"
            )
        if name in TASK_METRIC_NAMES:
            raise ValueError(
                f"plugin metric {name!r} would shadow the trainer's val_{name}; rename it"
            )
        if not isinstance(metric, PluginMetric) or metric.mode not in ("max", "min"):
            raise ValueError(
                f"plugin metric {name!r}: give a jobs.plugins.PluginMetric(rows, mode='max' "
                "or 'min')"
            )
    return dict(metrics or {})


@dataclass(frozen=True)
class PluginSource:
    """Where a model that is not in the zoo came from: registered with each model version
    so the registry says what code a version needs to load."""

    kind: str  # "entry point" | "import path"
    target: str  # "orch_example_plugin:residual_mlp"
    distribution: str | None = None  # the installed package, for an entry point
    version: str | None = None

    def describe(self) -> str:
        package = f" from {self.distribution} {self.version}" if self.distribution else ""
        return f"{self.kind} {self.target}{package}"


def model_plugin(
    params_model: type[BaseModel],
    check: Callable | None = None,
    loss: Callable | None = None,
    metrics: dict[str, PluginMetric] | None = None,
):
    """Decorator for a plugin's factory: the pydantic model of its ``model.params``.

    Args:
        params_model: validates ``model.params`` (derive from ``jobs.models.ZooParams``:
            unknown keys are errors, with did-you-mean in ``orch validate``).
        check: ``(params, shape) -> None``, raising ValueError when validated params cannot
            take data of a ``jobs.models.DataShape``, without building the model (keeps
            ``orch validate`` torch-free); None = build to find out.
        loss: ``(outputs, targets) -> per-row losses`` (a tensor of one loss per row, no
            reduction) for training and ``val_loss``; None = the task's (cross entropy,
            MSE). Rows' losses, not their mean, so validation adds them exactly across
            batches and ranks.
        metrics: ``{name: PluginMetric(rows, mode)}``, reported as ``val_<name>`` every
            epoch (MLflow, Tune's ``tune.metric``, ``register.promote_if``).
    """
    declared = _Declaration(params_model, check, loss, _checked_metrics(metrics))

    def decorate(factory):
        setattr(factory, _DECLARATION, declared)
        return factory

    return decorate


def is_import_path(model_type: str) -> bool:
    """``package.module:function``: the form that imports code named by the spec."""
    return ":" in model_type


def installed_names() -> list[str]:
    """The model types installed packages declare (package metadata only: no import)."""
    return sorted({ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)})


class PluginError(ValueError):
    """A plugin cannot be loaded or used; the message names it and says the fix."""


class UnknownPlugin(PluginError):
    """No installed package declares this name (``jobs.models.get_entry`` says what does)."""


@dataclass(frozen=True)
class Plugin:
    """A loaded factory with its params model, its torch-free check, and its source."""

    factory: Callable
    params_model: type[BaseModel]
    check: Callable | None
    source: PluginSource
    loss: Callable | None = None
    metrics: dict[str, PluginMetric] = field(default_factory=dict)


def import_root(model_type: str) -> str | None:
    """The ``sys.path`` entry this process imports an import path's module from; None for
    the zoo and installed plugins (every process of the venv finds those).

    The driver hands it to its workers (``importable``): on the same machine they import
    the user's module wherever Ray started them; across machines the module comes with
    ``ray job submit --working-dir`` / ``--py-modules`` or an installed package.
    """
    if not is_import_path(model_type):
        return None
    load(model_type)
    module_name = model_type.partition(":")[0]
    file = getattr(sys.modules[module_name], "__file__", None)
    if file is None:  # a namespace package: nothing to point at
        return None
    path = Path(file).resolve()
    depth = module_name.count(".") + (1 if path.name == "__init__.py" else 0)
    return str(path.parents[depth])


def importable(root: str | None) -> None:
    """Put the driver's ``import_root`` on this worker's path (where it exists here)."""
    if root and root not in sys.path and Path(root).is_dir():
        sys.path.insert(0, root)


@cache
def load(model_type: str) -> Plugin:
    """The factory an installed plugin's name or an import path names, imported once per
    process (the zoo's own names are ``jobs.models``').

    Raises:
        UnknownPlugin: no installed package declares the name.
        PluginError: a plugin or module that fails to import (its first error line), or a
            target that is not a callable factory.
    """
    if is_import_path(model_type):
        factory = _import_path(model_type)
        source = PluginSource("import path", model_type)
    else:
        point = _entry_point(model_type)
        dist = point.dist
        source = PluginSource(
            "entry point",
            point.value,
            dist.metadata["Name"] if dist else None,
            dist.version if dist else None,
        )
        try:
            factory = point.load()
        except Exception as exc:  # any error in the plugin's own import, reported in one line
            package = f", package {source.distribution} {source.version}" if dist else ""
            raise PluginError(
                f"model plugin {model_type!r} ({point.value}{package}) failed to import: "
                f"{described(exc)}; fix or reinstall that package"
            ) from None
    if not callable(factory):
        raise PluginError(
            f"model plugin {model_type!r}: {source.target} is a {type(factory).__name__}, "
            "not a factory; point it at a function (params, shape) -> nn.Module or layers"
        )
    declared = getattr(factory, _DECLARATION, None) or _Declaration(FreeParams, None)
    return Plugin(
        factory, declared.params_model, declared.check, source, declared.loss, declared.metrics
    )


def _entry_point(name: str) -> metadata.EntryPoint:
    points = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not points:
        raise UnknownPlugin(f"no installed package declares model {name!r}")
    return points[0]


def check_import_path(target: str) -> None:
    """Raise PluginError unless ``target`` has the form ``package.module:function`` (no
    import: a spec is parsed where its code must not run)."""
    module_name, _, attribute = target.partition(":")
    parts = (*module_name.split("."), *attribute.split("."))
    if not module_name or not attribute or not all(part.isidentifier() for part in parts):
        raise PluginError(
            f"model type {target!r} is neither a zoo model, an installed plugin nor an "
            "import path package.module:function"
        )


def _import_path(target: str) -> Callable:
    check_import_path(target)
    module_name, _, attribute = target.partition(":")
    try:
        found = importlib.import_module(module_name)
    except Exception as exc:  # the user's module failed: one line, not its traceback
        raise PluginError(
            f"model type {target!r}: cannot import {module_name} ({described(exc)}); "
            "install its package or put it on the path (ray job submit: --working-dir or "
            "--py-modules)"
        ) from None
    for name in attribute.split("."):
        if not hasattr(found, name):
            raise PluginError(
                f"model type {target!r}: module {module_name} has no {attribute!r}; "
                "name a factory function defined there"
            )
        found = getattr(found, name)
    return found


def described(exc: BaseException) -> str:
    """``Type: first line`` of an error in a plugin's code, for a one-line message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {first_line(exc)}" if text else type(exc).__name__
