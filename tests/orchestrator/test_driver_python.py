"""A Ray job's driver runs in whichever `python` is first on the head's PATH: with a head
started outside the venv, `python -m orchestrator ...` starts in a Python without our
dependencies. It says so in one line that names that Python and the fix; exit 2."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys

import pytest

from orchestrator.__main__ import REQUIRED_MODULES
from tests.conftest import REPO


def _lacks_a_dependency(python: str, *flags: str) -> bool:
    probe = (
        "import importlib.util, sys; "
        f"sys.exit(all(importlib.util.find_spec(m) for m in {REQUIRED_MODULES!r}))"
    )
    return subprocess.run([python, *flags, "-c", probe]).returncode == 0


def _outside_pythons():
    """The venv's own base interpreter (what a head started outside the venv runs), and the
    venv's Python without site-packages (-S), which lacks them on every machine."""
    base = getattr(sys, "_base_executable", "")
    yield pytest.param(
        base,
        (),
        marks=pytest.mark.skipif(
            sys.prefix == sys.base_prefix or not base,
            reason="not running in a venv",
        ),
        id="base-python",
    )
    yield pytest.param(sys.executable, ("-S",), id="venv-python-without-site")


@pytest.mark.parametrize(("python", "flags"), _outside_pythons())
def test_a_driver_without_our_dependencies_says_which_python_and_the_fix(python, flags):
    if not _lacks_a_dependency(python, *flags):
        pytest.skip(f"{python} has all of orch's dependencies installed")

    done = subprocess.run(
        [python, *flags, "-m", "orchestrator", "run", "x.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: orch's dependencies are not installed for {python} ")
    assert "No module named" in lines[0]
    assert "ray start --head" in lines[0] and "--runtime-env-json" in lines[0]
    assert "Traceback" not in done.stderr


def test_the_checked_modules_are_pyproject_dependencies():
    """REQUIRED_MODULES names one import per dependency of pyproject.toml, and no others."""
    normalize = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
    required = {
        normalize(re.match(r"[A-Za-z0-9._-]+", req).group())
        for req in importlib.metadata.requires("orch-platform")
        if "extra ==" not in req
    }
    dist_of = {
        module: {normalize(dist) for dist in dists}
        for module, dists in importlib.metadata.packages_distributions().items()
    }

    covered = {dist for module in REQUIRED_MODULES for dist in dist_of.get(module, ())}
    assert required <= covered, f"no module checked for {sorted(required - covered)}"
    strays = [m for m in REQUIRED_MODULES if not dist_of.get(m, set()) & required]
    assert not strays, f"checked but not a dependency: {strays}"
