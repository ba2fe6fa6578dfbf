"""What a member's queued job may reach: its team's roots, its team's names, loopback.

A queued job runs as a Ray job with the cluster's rights, so for a member the server, not
the submitter, picks where it runs (the team's first local root) and its environment (the
server's: no ``ORCH_HOME`` or tracking URI from the submitter), and the spec is the
boundary, checked at submit and again when the job starts:

- every location the spec holds (``data.source``, ``train.storage_path`` however tune sets
  it, a file or SQLite ``tracking.tracking_uri``) must lie inside one of the team's roots
  (``orch teams set vision --roots /data/vision,s3://bucket/vision``) by every reading of
  its spelling (``locations``); a tracking server URI is the admin's to choose, so a member
  leaves ``tracking.tracking_uri`` unset (the queue's store);
- the MLflow experiment, the registered model, the model served and the Serve application
  are the team's: their names are ``<team>-<rest>`` (a team name has no ``-``, so the team
  part of a name is exact);
- ``serve.host`` is loopback.

- ``model.type`` names the zoo or an installed plugin (entry point ``orch.models``), never
  an import path (``package.module:function``): nothing a member writes runs code the
  admin did not install.

Admins are not bounded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.plugins import is_import_path
from orchestrator.scheduling.identity import Team
from orchestrator.scheduling.locations import LocationRefused, check_locations

if TYPE_CHECKING:
    from orchestrator.spec import PipelineSpec

__all__ = ["LOOPBACK", "OutsideBoundary", "check_member_spec", "member_cwd", "team_owns"]

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_SERVED = re.compile(r"^models:/(?P<name>[^@/]+)")


class OutsideBoundary(Exception):
    """A member's spec reaches past its team's rights (HTTP 403); the message says where."""


def team_owns(team: str, name: str) -> bool:
    """Whether an experiment, registered model or Serve application ``name`` is ``team``'s:
    ``<team>-<rest>``, the team being everything before the first ``-``.

    >>> team_owns("vision", "vision-a-x"), team_owns("vision-a", "vision-a-x")
    (True, False)
    """
    head, dash, rest = name.partition("-")
    return bool(dash and rest) and head == team


def _names(spec: PipelineSpec) -> dict[str, str]:
    """field -> every experiment, registered-model and Serve name ``spec`` holds."""
    names = {"tracking.experiment (or the pipeline name)": spec.experiment,
             "register.model_name (or the pipeline name)": spec.registered_model_name}  # fmt: skip
    if spec.serve is not None:
        names["serve.name"] = spec.serve.name
        served = _SERVED.match(spec.serve.model or "")
        if served:
            names["serve.model"] = served["name"]
    return names


def check_member_spec(spec: PipelineSpec, team: Team, cwd: Path) -> None:
    """Refuse a member's spec that reaches outside ``team``'s rights.

    Deterministic for a given spec, team and file tree: the scheduler calls it at submit
    and again when it starts the job, so a link swapped in between is seen.

    Args:
        spec: the member's pipeline spec.
        team: the member's team (its name and roots).
        cwd: where the job's relative paths start (``member_cwd``).

    Raises:
        OutsideBoundary: the first field that does, and why (naming the spelling the
            member wrote, never a resolved path outside the team's roots).
    """
    if is_import_path(spec.model.type):
        raise OutsideBoundary(
            f"model.type {spec.model.type!r}: a member's model is from the zoo or a plugin "
            "the admin installed (orch schema lists them); an import path would run code "
            "from the member's files on the cluster. Ask an admin to install the package"
        )
    try:
        check_locations(spec, team, cwd)
    except LocationRefused as exc:
        raise OutsideBoundary(str(exc)) from None
    for field, name in _names(spec).items():
        if not team_owns(team.name, name):
            raise OutsideBoundary(
                f"{field} {name!r}: a member of {team.name} names its experiments, models "
                f"and Serve applications {team.name}-..."
            )
    if spec.serve is not None and spec.serve.host not in LOOPBACK:
        raise OutsideBoundary(
            f"serve.host {spec.serve.host!r}: a member's service binds loopback only "
            "(127.0.0.1); an admin serves on other addresses"
        )


def member_cwd(team: Team, fallback: Path) -> Path:
    """Where a member's job runs: the team's first local root (``fallback`` without one)."""
    local = [root for root in team.roots if "://" not in root]
    return Path(local[0]).resolve() if local else fallback
