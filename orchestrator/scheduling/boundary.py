"""What a member's queued job may reach: its team's roots, its team's names, loopback.

A queued job runs as a Ray job with the cluster's rights, so for a member the server, not
the submitter, picks where it runs (the team's first root) and its environment (the
server's: no ``ORCH_HOME`` or tracking URI from the submitter), and the spec is the
boundary, checked at submit:

- ``data.source``, ``train.storage_path`` and a file or SQLite ``tracking.tracking_uri``
  must resolve (symlinks followed) inside one of the team's roots (``orch teams set
  vision --roots /data/vision``); a tracking server URI is the admin's to choose, so a
  member leaves ``tracking.tracking_uri`` unset (the queue's store);
- the MLflow experiment, the registered model and the Serve application are the team's:
  their names start with ``<team>-``;
- ``serve.host`` is loopback.

Specs name no code to import (models come from the zoo), so nothing a member writes runs
code the admin did not install. Admins are not bounded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.scheduling.identity import Team

if TYPE_CHECKING:
    from orchestrator.spec import PipelineSpec

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class OutsideBoundary(Exception):
    """A member's spec reaches past its team's rights (HTTP 403); the message says where."""


def team_owns(team: str, name: str) -> bool:
    """Whether an experiment, registered model or Serve application ``name`` is ``team``'s."""
    return name.startswith(f"{team}-")


def _local(target: str) -> bool:
    return "://" not in target or target.startswith("file://")


def _inside(label: str, target: str, team: Team, cwd: Path) -> None:
    raw = target.removeprefix("sqlite:///").removeprefix("file://")
    path = Path(raw) if Path(raw).is_absolute() else cwd / raw
    real = path.resolve()  # follows symlinks: a link inside a root cannot lead out of it
    roots = [Path(root).resolve() for root in team.roots]
    if any(real == root or root in real.parents for root in roots):
        return
    allowed = ", ".join(str(r) for r in roots) or "none set (orch teams set --roots)"
    raise OutsideBoundary(
        f"{label}: {target!r} resolves to {real}, outside team {team.name}'s roots ({allowed})"
    )


def check_member_spec(spec: PipelineSpec, team: Team, cwd: Path) -> None:
    """Refuse a member's spec that reaches outside ``team``'s rights.

    Raises:
        OutsideBoundary: the first field that does, and why.
    """
    if _local(spec.data.source):
        _inside("data.source", spec.data.source, team, cwd)
    if spec.train.storage_path and _local(spec.train.storage_path):
        _inside("train.storage_path", spec.train.storage_path, team, cwd)
    uri = spec.tracking.tracking_uri
    if uri is not None:
        if not (uri.startswith("sqlite:///") or _local(uri)):
            raise OutsideBoundary(
                f"tracking.tracking_uri {uri!r}: a member's runs go to the queue's MLflow "
                "store; leave tracking.tracking_uri unset"
            )
        _inside("tracking.tracking_uri", uri, team, cwd)
    prefix = f"{team.name}-"
    names = {"tracking.experiment (or the pipeline name)": spec.experiment,
             "register.model_name (or the pipeline name)": spec.registered_model_name}  # fmt: skip
    if spec.serve is not None:
        names["serve.name"] = spec.serve.name
    for field, name in names.items():
        if not team_owns(team.name, name):
            raise OutsideBoundary(
                f"{field} {name!r}: a member of {team.name} names its experiments, models "
                f"and Serve applications {prefix}..."
            )
    if spec.serve is not None and spec.serve.host not in LOOPBACK:
        raise OutsideBoundary(
            f"serve.host {spec.serve.host!r}: a member's service binds loopback only "
            "(127.0.0.1); an admin serves on other addresses"
        )


def member_cwd(team: Team, fallback: Path) -> Path:
    """Where a member's job runs: the team's first root (``fallback`` without one)."""
    return Path(team.roots[0]).resolve() if team.roots else fallback
