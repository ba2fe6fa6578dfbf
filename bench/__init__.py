"""Benchmarks: ``python -m bench`` (``make bench``) runs them and writes BENCHMARKS.md.

A benchmark is one module ``bench/<module>.py`` (names starting with ``_`` and ``common``
are helpers, not benchmarks) that defines:

* ``NAME: str`` (optional, default the module's name) - what ``--only`` takes and the name
  of its results file. A module named like a standard-library or dependency module would
  shadow it in scripts run from bench/ (``python bench/_ddp_baseline.py``), so such a
  benchmark takes another file name and keeps its short NAME (``job_queue.py`` is
  ``queue``; tests/test_module_names.py checks the file names);
* ``TITLE: str`` - its section heading in BENCHMARKS.md;
* ``ORDER: int`` (optional, default 100) - where its section goes, lowest first;
* ``run(quick: bool = False) -> dict`` - measures and returns JSON-serialisable raw numbers;
  ``quick`` shrinks the work to a smoke test. It must clean up what it starts (Ray, ...);
* ``render(results: dict) -> str`` - the markdown section for those numbers, without
  running anything (BENCHMARKS.md is re-rendered from bench/results/<name>.json).

Each benchmark runs in its own Python process, so one cannot disturb the next.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from types import ModuleType

HELPERS = {"common"}


@functools.cache
def _modules() -> dict[str, str]:
    """Benchmark name -> its module's name in bench/."""
    found = {}
    for m in pkgutil.iter_modules(__path__):
        if m.name.startswith("_") or m.name in HELPERS or m.ispkg:
            continue
        name = getattr(importlib.import_module(f"bench.{m.name}"), "NAME", m.name)
        if name in found:
            raise TypeError(f"bench/{m.name}.py and bench/{found[name]}.py are both {name!r}")
        found[name] = m.name
    return found


def benchmark_names() -> list[str]:
    """Every benchmark's name, in section order."""
    return sorted(_modules(), key=lambda n: (getattr(load(n), "ORDER", 100), n))


def load(name: str) -> ModuleType:
    modules = _modules()
    if name not in modules:
        raise KeyError(f"no benchmark {name!r}; available: {', '.join(sorted(modules))}")
    module = importlib.import_module(f"bench.{modules[name]}")
    missing = [a for a in ("TITLE", "run", "render") if not hasattr(module, a)]
    if missing:
        raise TypeError(
            f"bench/{modules[name]}.py is not a benchmark: it lacks {', '.join(missing)}"
        )
    return module
