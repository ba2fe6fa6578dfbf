"""What a user's terminal shows: our lines on it, the libraries' chatter in a log file.

Ray, DeepSpeed and MLflow print from places we do not control: Python loggers, native
code, and Ray's driver threads that forward raylet and worker messages to ``sys.stdout``
for as long as the process lives (a ``(raylet) WARNING`` can arrive after our last line).
So the redirection is done on the file descriptors, once per command, and never undone:

- stdout (fd 1) carries the command's result and nothing else (``--json``: one document);
- everything else written to fd 1 or fd 2 goes to ``$ORCH_HOME/logs/<command>-<time>.log``,
  or, with ``--verbose``, to the terminal's stderr;
- our own lines (stages, progress, warnings, errors) go to the terminal through
  ``Terminal.err``, a handle on the original stderr.

When a command fails, the CLI prints the log's path (``Terminal.failure_hint``) just above
its one error line.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


@dataclass
class Terminal:
    """Where the CLI writes: ``out`` (the result), ``err`` (everything meant for the user)."""

    out: TextIO
    err: TextIO
    log_path: Path | None = None

    def failure_hint(self) -> str | None:
        """The line that says where the full log of a failed command is, if there is one."""
        try:
            if self.log_path is None or self.log_path.stat().st_size == 0:
                return None  # nothing was logged (a spec error before anything started)
        except OSError:
            return None
        return f"full log: {self.log_path}"


_current: Terminal | None = None


def current() -> Terminal:
    """The terminal of this process: the captured one, or plain stdout/stderr."""
    return _current or Terminal(out=sys.stdout, err=sys.stderr)


def capture(command: str, *, verbose: bool, log_dir: Path) -> Terminal:
    """Send what the libraries print away from the terminal, for the rest of the process.

    Args:
        command: names the log file (``run``, ``serve``).
        verbose: the chatter goes to the terminal's stderr instead of the log file; stdout
            still carries only the result.
        log_dir: where the log file goes (created on demand).
    """
    global _current
    if _current is not None:
        return _current
    sys.stdout.flush()
    sys.stderr.flush()
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
    err = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    log_path = None
    if verbose:
        os.dup2(2, 1)
    else:
        log_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        log_path = log_dir / f"{command}-{stamp}-{os.getpid()}.log"
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    _current = Terminal(out=out, err=err, log_path=log_path)
    return _current


def leave(exit_code: int) -> None:
    """End the ``orch`` process now that its result is out: stop Ray, flush, exit.

    Interpreter teardown after a run cost 3-3.5 s here (library exit hooks, thread pools
    and module finalizers of torch, Ray and MLflow), every one of which has nothing left to
    do: the result is printed, MLflow's writes are flushed, and Ray is shut down here (which
    also stops a local Ray this command started).
    """
    import logging

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    if "orchestrator.runtime" in sys.modules:
        from orchestrator.runtime import remove_local_ingress_state

        remove_local_ingress_state()  # its exit handler will not run
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr, current().out, current().err):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(exit_code)
