"""A last whole copy of Ray Tune's experiment state, so a killed study can still resume.

Ray Tune 2.60 writes a study's state (``experiment_state-*.json``, the searcher's and the
callbacks' state) into a staging folder, then copies it over the experiment folder in a
background thread, in place. A driver killed during that copy leaves a cut-off JSON;
``Tuner.restore`` then logs "Failed to restore the run state", starts the experiment again
and the resumed study reran its trials or lost them from its result (seen on 2 busy
cores: the kill landed in the copy of a 81 KB state).

The study's callback calls ``StateCopy.refresh`` on every step of Tune's loop: when the
state files have stopped changing since the last step and the experiment state parses,
they are copied into ``.last-whole-state`` (a new folder swapped in by rename, so the copy
itself is never half written). ``put_back_if_cut_off`` runs before a resume.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

COPY_DIR = ".last-whole-state"
EXPERIMENT_STATE = "experiment_state-*.json"


def _state_files(tune_path: Path) -> list[Path]:
    """Tune's own top-level files (trial folders and our copy left out)."""
    return sorted(p for p in tune_path.iterdir() if p.is_file() and not p.name.startswith("."))


def _whole(tune_path: Path) -> bool:
    """The newest experiment state (the one ``Tuner.restore`` reads; a resumed study keeps
    its earlier sessions' too) parses: a cut-off one cannot, its last brace is gone."""
    states = sorted(tune_path.glob(EXPERIMENT_STATE))  # named by session start time
    try:
        return bool(states) and json.loads(states[-1].read_text()) is not None
    except (OSError, ValueError):
        return False


class StateCopy:
    """Keeps ``<tune_path>/.last-whole-state`` at the latest whole state Tune wrote."""

    def __init__(self, tune_path: str):
        self.tune_path = tune_path
        self._seen: tuple = ()
        self._copied: tuple = ()

    def refresh(self) -> None:
        tune_path = Path(self.tune_path)
        if not tune_path.is_dir():
            return
        files = _state_files(tune_path)
        stats = [(p.name, p.stat()) for p in files]
        signature = tuple((name, st.st_mtime_ns, st.st_size) for name, st in stats)
        settled, self._seen = signature == self._seen, signature
        if not settled or signature == self._copied or not _whole(tune_path):
            return
        fresh = tune_path / f"{COPY_DIR}.new"
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir()
        for path in files:
            shutil.copy2(path, fresh / path.name)
        old = tune_path / f"{COPY_DIR}.old"
        shutil.rmtree(old, ignore_errors=True)
        if (tune_path / COPY_DIR).exists():
            os.replace(tune_path / COPY_DIR, old)
        os.replace(fresh, tune_path / COPY_DIR)
        shutil.rmtree(old, ignore_errors=True)
        self._copied = signature

    # Pickled with Tune's callbacks: only the path travels.
    def __getstate__(self) -> dict:
        return {"tune_path": self.tune_path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["tune_path"])


def put_back_if_cut_off(tune_path: Path) -> bool:
    """Before a resume: when Tune's state was cut off, put the last whole copy back.

    Returns True if it did; False when the state is whole. Raises ``ValueError`` when the
    state is cut off and no whole copy exists (the study cannot resume)."""
    if not tune_path.is_dir() or not list(tune_path.glob(EXPERIMENT_STATE)) or _whole(tune_path):
        return False  # nothing to resume is Tuner.can_restore's to say
    copy = tune_path / COPY_DIR
    if not copy.is_dir() or not _whole(copy):
        raise ValueError(
            f"{tune_path}: Ray Tune's study state was cut off while being written (the "
            "driver was killed then) and no whole copy exists"
        )
    for path in _state_files(tune_path):
        if not (copy / path.name).exists() and path.match(EXPERIMENT_STATE):
            path.unlink()  # a newer session's cut-off state: Tune would read the newest
    for path in copy.iterdir():
        shutil.copy2(path, tune_path / path.name)
    return True
