"""How a queued job starts: from code the admin installed, in a folder the member cannot write.

A Ray job's driver is a shell command. Two things would put a member-writable folder on the
module search path of the job's processes, and a package planted there (``orchestrator/``,
``jobs/``, ``yaml.py``) would then run with the cluster's rights:

- ``python -m`` puts the working directory first on the driver's ``sys.path``: the driver
  runs in isolated mode (``-I``: no working directory, no ``PYTHON*`` variables, no user
  site-packages), so only the installed interpreter's own paths are searched;
- Ray puts the driver's working directory on every worker's ``sys.path``
  (``ray/_private/worker.py``, ``job_config._py_driver_sys_path``): the driver runs in the
  job's folder under the queue's state directory, which only the server writes.

The folder the submitter ran from (an admin's) or the team's root (a member's) is then only
data: the spec the job reads has its relative local locations anchored there.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import yaml

# The spec's fields that hold local locations a relative spelling resolves against the
# folder the job was submitted from (``data.source`` may also be a list of them).
_LOCATIONS = (("data", "source"), ("train", "storage_path"), ("tracking", "tracking_uri"))
_SQLITE = "sqlite:///"


def _anchored(value: str, base: Path) -> str:
    """``value`` with a relative local path made absolute under ``base``; URIs with a
    scheme and absolute paths unchanged (a SQLite URI's relative file is anchored too)."""
    if value.startswith(_SQLITE) and not value.startswith(_SQLITE + "/"):
        rest = value.removeprefix(_SQLITE)
        return value if rest.startswith("file:") else _SQLITE + os.path.join(base, rest)
    if "://" in value or value.startswith(("/", "file:")):
        return value
    return os.path.join(base, value)


def anchored_spec_text(spec_text: str, base: str | Path) -> str:
    """The spec YAML with its relative local locations made absolute under ``base``.

    The job runs elsewhere (its server-owned folder), so ``data.source: rows.csv`` must
    still mean ``<base>/rows.csv``. The text was validated at submit; YAML that is not a
    mapping is returned as is (the job's own load reports it).
    """
    document = yaml.safe_load(spec_text)
    if not isinstance(document, dict):
        return spec_text
    changed = False
    for section, field in _LOCATIONS:
        part = document.get(section)
        if not isinstance(part, dict) or part.get(field) is None:
            continue
        value = part[field]
        if isinstance(value, str):
            part[field] = _anchored(value, Path(base))
        elif isinstance(value, list):
            part[field] = [_anchored(v, Path(base)) if isinstance(v, str) else v for v in value]
        changed = changed or part[field] != value
    return yaml.safe_dump(document, sort_keys=False) if changed else spec_text


def isolated_command(python: str, job_folder: Path, arguments: list[str]) -> str:
    """The shell entrypoint: ``cd <job folder> && exec <python> -I -m orchestrator ...``."""
    command = [python, "-I", "-m", "orchestrator", *arguments]
    return f"cd {shlex.quote(str(job_folder))} && exec " + shlex.join(command)
