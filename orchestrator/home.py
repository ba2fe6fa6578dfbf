"""Where orch keeps its embedded state (one definition of ORCH_HOME), whose it is, and who
may read it.

Its own module, importing nothing of ours, so that the address parser, the runtime, the
queue client and the queue's store all read it without importing each other.

The state is private to the user orch runs as: the queue's database and audit key, the
job folders and their plans, MLflow's store and artifacts. orch's entry points (the CLI's
``main``, which every job's driver goes through, and ``serve_forever``) call
``private_umask`` first, so what they and the libraries they call create is 0600 (files)
and 0700 (folders); ``private_sqlite`` also tightens a queue database an older release
left readable by others.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
"""The umask of orch's processes: no permission for the group or others."""

_SQLITE_FILES = ("", "-wal", "-shm", "-journal")
"""Suffixes of a SQLite database's own file and of those SQLite keeps beside it."""


def orch_home() -> Path:
    """Root of the embedded state: $ORCH_HOME, else ./.orch in the working directory."""
    return Path(os.environ.get("ORCH_HOME") or Path.cwd() / ".orch").resolve()


def private_umask() -> int:
    """From now on this process creates files 0600 and folders 0700 (and so do the Ray
    processes, MLflow stores and artifacts it starts or writes).

    Returns:
        The umask before, for a caller (a test) that restores it.
    """
    return os.umask(PRIVATE_UMASK)


def private_sqlite(path: str | Path) -> None:
    """Make the SQLite database at ``path`` its user's only, before SQLite opens it.

    Creates the folder 0700 and the (empty) database file 0600 when missing, whatever the
    umask: SQLite gives its ``-wal``, ``-shm`` and ``-journal`` files the database's own
    mode. The files of an existing database (an older release made them 0644) and a folder
    of ours are tightened in place.
    """
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(path.parent, 0o700)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    for suffix in _SQLITE_FILES:
        _tighten(path.with_name(path.name + suffix), 0o600)


def _tighten(path: Path, mode: int) -> None:
    """chmod ``path`` to ``mode`` when it is ours and more open; missing is fine."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return
    if status.st_uid == os.geteuid() and stat.S_IMODE(status.st_mode) & ~mode:
        path.chmod(stat.S_IMODE(status.st_mode) & mode)


def os_user() -> str:
    """The operating-system user this process runs as, from its effective uid.

    Never ``$USER``, ``$LOGNAME`` or ``getpass.getuser()`` (which reads them first): the
    caller's environment says whatever the caller wants. A uid the password database does
    not know (a container's) is ``uid <N>``.
    """
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
