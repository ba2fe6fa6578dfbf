"""Benchmarks: ``python -m bench`` (``make bench``) runs them and writes BENCHMARKS.md.

A benchmark is one module ``bench/<name>.py`` (names starting with ``_`` and ``common`` are
helpers, not benchmarks) that defines:

* ``TITLE: str`` - its section heading in BENCHMARKS.md;
* ``ORDER: int`` (optional, default 100) - where its section goes, lowest first;
* ``run(quick: bool = False) -> dict`` - measures and returns JSON-serialisable raw numbers;
  ``quick`` shrinks the work to a smoke test. It must clean up what it starts (Ray, ...);
* ``render(results: dict) -> str`` - the markdown section for those numbers, without
  running anything (BENCHMARKS.md is re-rendered from bench/results/<name>.json).

Each benchmark runs in its own Python process, so one cannot disturb the next.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

HELPERS = {"common"}


def benchmark_names() -> list[str]:
    """Every benchmark module in bench/, in section order."""
    names = [
        m.name
        for m in pkgutil.iter_modules(__path__)
        if not m.name.startswith("_") and m.name not in HELPERS and not m.ispkg
    ]
    return sorted(names, key=lambda n: (getattr(load(n), "ORDER", 100), n))


def load(name: str) -> ModuleType:
    module = importlib.import_module(f"bench.{name}")
    missing = [a for a in ("TITLE", "run", "render") if not hasattr(module, a)]
    if missing:
        raise TypeError(f"bench/{name}.py is not a benchmark: it lacks {', '.join(missing)}")
    return module
