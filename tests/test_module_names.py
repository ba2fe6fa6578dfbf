"""No module of ours shadows the standard library or a dependency.

A folder lands first on ``sys.path`` when Python runs a script in it (``python
bench/_ddp_baseline.py`` puts bench/ there), under ``python -m`` and pytest (the repository
root), so a ``bench/queue.py`` made ``import torch`` fail in the benchmark's baselines
(``cannot import name 'Queue' from 'queue'``). Names are checked against
``sys.stdlib_module_names`` and the top-level packages of every installed distribution.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from tests.conftest import REPO

OWN_DISTRIBUTION = "orch-platform"  # pyproject.toml's project name: its packages are ours
EXTENSION_SUFFIXES = (".so", ".pyd")


def module_names(folder: Path) -> set[str]:
    """Top-level names importable from ``folder``: modules, extensions, regular packages."""
    names = set()
    for entry in folder.iterdir():
        if entry.is_dir() and (entry / "__init__.py").is_file():
            names.add(entry.name)
        elif entry.is_file() and entry.suffix == ".py":
            names.add(entry.stem)
        elif entry.is_file() and entry.suffix in EXTENSION_SUFFIXES:
            names.add(entry.name.split(".")[0])
    # __init__ and __main__ are a package's own files, never imported by those names.
    return {n for n in names if not (n.startswith("__") and n.endswith("__"))}


def pytest_path_entries(tests: Path) -> set[Path]:
    """Folders pytest puts on sys.path (rootdir-based "prepend" import mode): for each test
    folder, the first folder upward without an ``__init__.py``."""
    folders = set()
    for test_file in [*tests.rglob("test_*.py"), *tests.rglob("conftest.py")]:
        folder = test_file.parent
        while (folder / "__init__.py").is_file():
            folder = folder.parent
        folders.add(folder)
    return folders


def path_entries() -> set[Path]:
    """Every folder of this repository that lands on sys.path."""
    scripts = {REPO / "bench", REPO / "examples"}  # `python bench/x.py`, `python examples/x.py`
    return {REPO, *scripts, *pytest_path_entries(REPO / "tests")}


def taken_names() -> dict[str, str]:
    """Name -> what owns it: the standard library or the installed distributions."""
    taken = dict.fromkeys(sys.stdlib_module_names, "the standard library")
    for name, dists in metadata.packages_distributions().items():
        others = sorted(set(dists) - {OWN_DISTRIBUTION})
        if others:
            taken.setdefault(name, "the installed " + ", ".join(others))
    return taken


def shadowing(folders: set[Path]) -> list[str]:
    taken = taken_names()
    return sorted(
        f"{folder / name} shadows {taken[name]}'s {name!r}"
        for folder in folders
        for name in module_names(folder)
        if name in taken
    )


def test_no_module_on_our_sys_path_shadows_the_stdlib_or_a_dependency():
    assert metadata.packages_distributions().get("orchestrator") is not None, (
        f"our own packages are no longer installed as {OWN_DISTRIBUTION!r}: update OWN_DISTRIBUTION"
    )

    assert shadowing(path_entries()) == []


def test_the_check_catches_a_queue_module_in_bench(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    for name in ("__main__.py", "common.py", "queue.py", "job_queue.py"):
        (bench / name).write_text("")
    (bench / "torch").mkdir()
    (bench / "torch" / "__init__.py").write_text("")

    found = shadowing({bench})

    assert [line.split("/")[-1] for line in found] == [
        "queue shadows the standard library's 'queue'",
        "torch shadows the installed torch's 'torch'",
    ]
