"""Private names of Ray and MLflow: only in one adapter module per library, and still there.

Each use is deliberate (there is no public equivalent) and lives in its library's adapter:
- ``jobs/ray_internals.py``, Ray's: Ray Train's ``DatasetsCallback`` and default callback
  list (checked by tests/jobs/test_startup.py); Ray Tune's ASHA and median-rule state that
  says why a trial was stopped (the rungs and cutoffs the decision used); Ray Serve's
  ``_get_global_client`` (and its controller's ``get_grpc_config``), the running Serve's
  HTTP address and gRPC port (the latter checked by tests/serve/test_grpc.py);
- ``serve/mlflow_internals.py``, MLflow's: ``_validate_pt2_archive_is_pickle_free``,
  refusing a pt2 archive that holds pickles before ``torch.export.load``.

The source walk fails when a private name turns up anywhere else; the other tests fail on
the upgrade that renames or removes one, instead of a feature breaking quietly.
"""

from __future__ import annotations

import ast

from tests.helpers import our_modules

LIBRARIES = ("ray", "mlflow")
ADAPTERS = {"jobs.ray_internals": "ray", "serve.mlflow_internals": "mlflow"}
"""The one adapter module per library."""


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _library(dotted: str) -> str | None:
    root = dotted.split(".")[0]
    return root if root in LIBRARIES else None


class _Uses(ast.NodeVisitor):
    """Private names of LIBRARIES that one module uses: imported ones, attributes reached
    through a library name, and, in classes built on a library's class, inherited private
    attributes and overridden private methods that our own code does not define."""

    def __init__(self, ours: set[str]):
        self.ours = ours  # private names our own code defines (attributes, methods)
        self.library_names: set[str] = set()  # local names bound to a library's objects
        self.in_library_class = 0
        self.found: list[str] = []

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if _library(alias.name):
                if any(_private(part) for part in alias.name.split(".")):
                    self.found.append(f"line {node.lineno}: import {alias.name}")
                self.library_names.add((alias.asname or alias.name).split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level or not _library(module):
            return
        for alias in node.names:
            path = f"{module}.{alias.name}"
            if any(_private(part) for part in path.split(".")):
                self.found.append(f"line {node.lineno}: from {module} import {alias.name}")
            self.library_names.add(alias.asname or alias.name)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if _private(node.attr):
            root = _root(node.value)
            through_library = isinstance(root, ast.Name) and root.id in self.library_names
            on_self = (isinstance(root, ast.Name) and root.id in ("self", "cls")) or (
                isinstance(root, ast.Call)
                and isinstance(root.func, ast.Name)
                and root.func.id == "super"
            )
            inherited = self.in_library_class and on_self and node.attr not in self.ours
            if through_library or inherited:
                self.found.append(f"line {node.lineno}: .{node.attr}")
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        library_based = any(self._is_library(base) for base in node.bases)
        self.in_library_class += library_based
        if library_based:
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    if _private(item.name) and item.name not in self.ours:
                        self.found.append(f"line {item.lineno}: overrides {item.name}")
        self.generic_visit(node)
        self.in_library_class -= library_based

    def _is_library(self, base: ast.expr) -> bool:
        root = _root(base)
        return isinstance(root, ast.Name) and root.id in self.library_names


def _library_names(tree: ast.Module) -> set[str]:
    """Local names a module binds to Ray's or MLflow's modules and objects."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names if _library(a.name)}
        elif isinstance(node, ast.ImportFrom) and not node.level and _library(node.module or ""):
            names |= {a.asname or a.name for a in node.names}
    return names


def _root(node: ast.expr) -> ast.expr:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node


def _defined_by_us(trees: list[ast.Module]) -> set[str]:
    """Private names our code defines: methods of our own classes (not built on a library's
    class), ``x._y = ...`` assignments, and class or module level names."""
    names: set[str] = set()
    for tree in trees:
        library = _library_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = [_root(base) for base in node.bases]
                if any(isinstance(b, ast.Name) and b.id in library for b in bases):
                    continue
                names |= {
                    item.name
                    for item in node.body
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                    and _private(item.name)
                }
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                if _private(node.attr):
                    names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                if _private(node.id):
                    names.add(node.id)
    return names


def private_uses() -> dict[str, list[str]]:
    """Module -> its uses of Ray's or MLflow's private names, outside the adapters."""
    trees = {name: ast.parse(path.read_text()) for name, path in our_modules().items()}
    ours = _defined_by_us([t for name, t in trees.items() if name not in ADAPTERS])
    uses = {}
    for name, tree in trees.items():
        if name in ADAPTERS:
            continue
        visitor = _Uses(ours)
        visitor.visit(tree)
        if visitor.found:
            uses[name] = visitor.found
    return uses


def test_private_library_names_appear_only_in_their_adapters():
    assert set(ADAPTERS) <= set(our_modules())
    assert sorted(ADAPTERS.values()) == sorted(LIBRARIES)  # one module per library
    assert private_uses() == {}


def test_importing_the_ray_adapter_imports_no_ray_library():
    """Its classes are made on first use: the Serve and queue paths import it cheaply."""
    import subprocess
    import sys

    code = (
        "import sys, jobs.ray_internals; "
        "print(sorted(m for m in ('ray.train', 'ray.tune', 'ray.serve') if m in sys.modules))"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert shown.stdout.strip() == "[]", shown.stderr


def test_the_walk_finds_each_kind_of_private_use():
    source = """
import ray._private.worker
from ray.serve.context import _get_global_client
from ray.tune.schedulers import AsyncHyperBandScheduler
import mlflow

mlflow.pytorch._validate_pt2_archive_is_pickle_free("x")

class Ours(AsyncHyperBandScheduler):
    def _on_trial_add(self, controller, trial):
        self._own = 1
        return self._trial_info, self._own, super()._metric_op
"""
    visitor = _Uses({"_own"})
    visitor.visit(ast.parse(source))
    found = [use.split(": ", 1)[1] for use in visitor.found]
    assert found == [
        "import ray._private.worker",
        "from ray.serve.context import _get_global_client",
        "._validate_pt2_archive_is_pickle_free",
        "overrides _on_trial_add",
        "._trial_info",
        "._metric_op",
    ]


def test_serve_http_options_of_a_running_serve(ray_session):
    """None before Serve runs; the port it was started on once it does (this file's worker
    runs no other Serve)."""
    from ray import serve

    from jobs.ray_internals import running_http_options
    from tests.conftest import free_port

    assert running_http_options() is None
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        options = running_http_options()
        assert (options.host, options.port) == ("127.0.0.1", port)
    finally:
        serve.shutdown()
    assert running_http_options() is None


def test_mlflow_pt2_pickle_check(tmp_path):
    import pytest
    from mlflow.exceptions import MlflowException

    from serve.mlflow_internals import check_pt2_pickle_free

    archive = tmp_path / "model.pt2"
    archive.write_bytes(b"not a zip archive")
    with pytest.raises(MlflowException, match="not a pickle-free payload"):
        check_pt2_pickle_free(str(archive))


def test_tune_scheduler_internals_the_stop_reasons_read():
    from ray.tune.schedulers import AsyncHyperBandScheduler, MedianStoppingRule

    asha = AsyncHyperBandScheduler(metric="val_accuracy", mode="max", grace_period=1)
    assert isinstance(asha._trial_info, dict) and asha._metric_op == 1.0
    assert asha._metric == "val_accuracy"
    (bracket,) = asha._brackets
    assert isinstance(bracket._rungs, list) and callable(bracket.cutoff) and bracket.rf > 1

    median = MedianStoppingRule(metric="val_accuracy", mode="max")
    for method in ("_trials_beyond_time", "_running_mean", "_best_result"):
        assert callable(getattr(median, method)), method
    assert callable(MedianStoppingRule._on_insufficient_samples)
    assert median._metric == "val_accuracy"

    from jobs.ray_internals import explained_asha, explained_median

    told: list[tuple] = []
    ours = explained_asha(lambda *why: told.append(why), 10, metric="val_accuracy", mode="max")
    assert isinstance(ours, AsyncHyperBandScheduler) and ours.epochs == 10
    assert isinstance(explained_median(told.append, 10, metric="m", mode="max"),
                      MedianStoppingRule)  # fmt: skip
