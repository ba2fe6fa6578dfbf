"""``python -m orchestrator ...`` is the ``orch`` CLI (what `ray job submit` runs).

A Ray job's entrypoint ``python`` is whichever one is first on the head's PATH: a head
started outside the venv runs the driver in a Python without our dependencies. Before
anything imports one, say so in one line (the Python, the fix) instead of a traceback.
Kept importable by any Python 3: it must run in exactly the interpreters that lack ours.
"""

import importlib.util
import sys

# The import names of pyproject.toml's dependencies (tests/orchestrator/test_driver_python.py
# checks that they match).
REQUIRED_MODULES = (
    "torch",
    "ray",
    "deepspeed",
    "mlflow",
    "pyarrow",
    "pydantic",
    "yaml",
    "sklearn",
    "rich",
    "optuna",
    "matplotlib",
    "PIL",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "httpx",
    "fastapi",
    "uvicorn",
    "tritonclient",
)

FIX = (
    "This happens when a Ray job's driver runs in a Python outside the project's venv: "
    "start the head with the venv active (source .venv/bin/activate; ray start --head) or "
    "submit with --runtime-env-json "
    '\'{"env_vars": {"PATH": "<repo>/.venv/bin:${PATH}"}}\'; '
    "locally: make install, then .venv/bin/orch"
)


def missing_dependency():
    """The first dependency this Python cannot find, or None (a path search, no import)."""
    for name in REQUIRED_MODULES:
        if importlib.util.find_spec(name) is None:
            return name
    return None


def check_dependencies():
    """Exit 2 with one line naming this Python and the fix if a dependency is missing."""
    missing = missing_dependency()
    if missing is not None:
        sys.stderr.write(
            f"error: orch's dependencies are not installed for {sys.executable} "
            f"(No module named {missing!r}). {FIX}\n"
        )
        raise SystemExit(2)


if __name__ == "__main__":
    check_dependencies()
    from orchestrator.cli import main

    raise SystemExit(main())
