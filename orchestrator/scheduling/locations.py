"""Every place a spec names, in one canonical form, and whether a team may reach it.

A member's queued job runs with the cluster's rights, so what it may read and write is
decided here, from the spec alone (``boundary.check_member_spec``). A location is parsed
with real parsers (``urllib.parse.urlsplit``; SQLAlchemy's rules for ``sqlite:`` URLs and
SQLite's for their ``file:`` URI filenames), then checked against the team's roots: local
paths against its local roots, object-store prefixes against its object-store roots,
segment by segment (``s3://b/data/vision`` does not hold ``s3://b/data/vision2``).

The readers of one spelling disagree: ``jobs.data`` takes a ``file:`` URI's path as
written, MLflow percent-decodes paths, SQLAlchemy decodes a SQLite URL's database and
SQLite decodes its URI filename again, SQLAlchemy normalises ``..`` before the kernel
follows symbolic links. So a location is admitted only when *every* reading lies inside:
as written and percent-decoded once and twice, each with ``..`` taken lexically and after
following links. A spelling whose readings differ only in harmless ways still passes; one
that some reader would take outside is refused. Also refused, because readers disagree on
them:

- a control or invisible character anywhere (NUL, ``\\n``, ``\\t``, DEL, bidi marks), or
  spaces around the spelling (``urlsplit`` drops them, a path keeps them);
- a scheme not in lower case (MLflow takes ``FILE:///x`` for a relative path), and a
  path with ``://`` inside (the job's entrypoint would not anchor it at the team's root);
- a leading ``~`` (refused rather than kept as a folder named ``~`` under the job's
  folder): some readers expand it to the home of the user the cluster runs as (Ray
  Train's ``Checkpoint`` does), others do not, so no single reading is safe;
- a ``file:`` URI that is relative, names a host other than ``localhost``, or carries a
  query or fragment; a SQLite ``file:`` URI filename without ``uri=true`` (SQLite would
  open a file named ``file:...``) or with a relative path (the job's folder is not the
  team's root); an object-store URI with a query (``?endpoint_override=``), a fragment,
  credentials, a port, or ``.``/``..`` key segments.

Links are followed when a location is checked, so checking again when the job starts
(the scheduler does) catches a link swapped after the submit. A data source that is a
folder (or a glob) is read whole, so every link under it must lead inside too.
"""

from __future__ import annotations

import glob
import os
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

if TYPE_CHECKING:
    from orchestrator.spec import PipelineSpec

__all__ = [
    "OBJECT_SCHEMES",
    "Location",
    "LocationRefused",
    "Scheme",
    "Use",
    "check_locations",
    "check_plain_text",
    "parse_location",
    "parse_root",
    "spec_locations",
    "team_roots",
]

Scheme = Literal["file", "s3", "gs", "abfs"]
Use = Literal["data", "storage", "tracking", "root"]
"""What a field holds: data to read, checkpoints to write, an MLflow store, a team root."""

OBJECT_SCHEMES: dict[str, Scheme] = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gs",
    "gcs": "gs",
    "abfs": "abfs",
    "abfss": "abfs",
    "az": "abfs",
}
SQLITE_SCHEMES = ("sqlite", "sqlite+pysqlite")
WALK_LIMIT = 100_000
"""Most entries looked at under a folder data source; a larger one is refused."""
_TRUE = frozenset({"true", "yes", "on", "y", "t", "1"})  # SQLAlchemy's asbool
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_TRACKING = "a member's runs go to the queue's MLflow store; leave tracking.tracking_uri unset"


class Team(Protocol):
    """What the check reads of a team (``identity.Team``, which imports this module)."""

    name: str
    roots: list[str]


class LocationRefused(ValueError):
    """A location a member may not use; the one-line message names the field, the spelling
    as the user wrote it, and the rule (never a resolved path outside the team's roots)."""


@dataclass(frozen=True, slots=True)
class Location:
    """One location in canonical form.

    Local (``scheme == "file"``): ``path`` is absolute, percent-decoded once, ``..`` and
    links resolved; ``readings`` are every resolved path a reader might open; ``lexical``
    is ``path`` by its letters (``..`` taken lexically, links not followed).
    Object store: ``bucket`` and ``key`` (``/``-joined segments, decoded once, no ``.`` or
    ``..``, ``""`` = the whole bucket); ``keys`` are every reading's segments.
    """

    field: str
    spelling: str
    scheme: Scheme
    path: Path | None = None
    bucket: str = ""
    key: str = ""
    readings: tuple[Path, ...] = ()
    keys: tuple[tuple[str, ...], ...] = ()
    lexical: Path | None = None

    @property
    def uri(self) -> str:
        """The canonical spelling: an absolute path, or ``<scheme>://<bucket>[/<key>]``."""
        if self.scheme == "file":
            return str(self.path)
        return f"{self.scheme}://{self.bucket}" + (f"/{self.key}" if self.key else "")

    def within(self, root: Location) -> bool:
        """Whether every reading of this location lies in ``root`` (segment-wise)."""
        if self.scheme != root.scheme:
            return False
        if self.scheme == "file":
            return all(_under(path, root.path) for path in self.readings)
        prefix = tuple(root.key.split("/")) if root.key else ()
        return self.bucket == root.bucket and all(k[: len(prefix)] == prefix for k in self.keys)


def _under(path: Path, root: Path | None) -> bool:
    return root is not None and (path == root or root in path.parents)


def _refuse(field_name: str, spelling: str, rule: str) -> LocationRefused:
    return LocationRefused(f"{field_name}: {spelling!r}: {rule}")


def _check_text(text: str, field_name: str, spelling: str) -> None:
    """Refuse control and invisible characters (also once decoded) in ``text``."""
    bad = next((c for c in text if unicodedata.category(c) in _REFUSED_CATEGORIES), None)
    if bad is not None:
        raise _refuse(
            field_name,
            spelling,
            f"holds the control or invisible character {bad!r}; a location is plain text",
        )


def _decodings(text: str, field_name: str, spelling: str) -> list[str]:
    """``text`` as written, percent-decoded once and twice (distinct ones, each checked)."""
    found = [text]
    for _ in range(2):
        found.append(unquote(found[-1]))
    unique = list(dict.fromkeys(found))
    for reading in unique:
        _check_text(reading, field_name, spelling)
    return unique


def parse_location(spelling: str, field_name: str, cwd: Path | None, use: Use) -> Location | None:
    """The canonical form of one location, or None for one that names no place
    (``sklearn://<set>``, an in-memory SQLite store).

    Args:
        spelling: as written in the spec (or on ``orch teams set --roots``).
        field_name: the spec field, for the message (``data.source``).
        cwd: where a relative local path starts (the job's folder); None = relative paths
            are refused (team roots).
        use: what the field holds; it decides the schemes taken.

    Raises:
        LocationRefused: a spelling that some reader would take elsewhere, or a scheme the
            field does not take.
    """
    _check_text(spelling, field_name, spelling)
    if spelling != spelling.strip():
        raise _refuse(field_name, spelling, "has spaces around it; write the location alone")
    try:
        parts = urlsplit(spelling)
    except ValueError as exc:
        raise _refuse(field_name, spelling, f"is not a valid URI ({exc})") from None
    scheme = parts.scheme
    if not scheme:
        if "://" in spelling:
            raise _refuse(field_name, spelling, "is neither a path nor a URI (a '://' inside)")
        return _local(spelling, field_name, spelling, cwd)
    if spelling[: len(scheme)] != scheme:
        raise _refuse(
            field_name,
            spelling,
            f"write the scheme in lower case ({scheme}:); some readers "
            "take another case for a relative path",
        )
    if scheme == "file":
        return _file_uri(parts, field_name, spelling)
    if scheme in OBJECT_SCHEMES and use != "tracking":
        return _object(parts, field_name, spelling)
    if scheme in SQLITE_SCHEMES and use == "tracking":
        return _sqlite(spelling, scheme, field_name, cwd)
    if use == "data" and scheme == "sklearn" and spelling.startswith("sklearn://"):
        return None
    if use == "tracking":
        raise _refuse(field_name, spelling, _TRACKING)
    taken = "a path, file:///<path>, or s3://, gs://, abfs:// under an object-store root"
    raise _refuse(field_name, spelling, f"scheme {scheme!r} is not taken here; use {taken}")


def parse_root(spelling: str) -> Location:
    """A team root (``orch teams set --roots``): an absolute local path or ``file:`` URI,
    or an object-store prefix, written without percent-escapes.

    Raises:
        LocationRefused: anything else.
    """
    if unquote(spelling) != spelling:
        raise _refuse("--roots", spelling, "write a root without percent-escapes")
    location = parse_location(spelling, "--roots", None, "root")
    if location is None:
        raise _refuse("--roots", spelling, "is not a folder or an object-store prefix")
    return location


def _local(text: str, field_name: str, spelling: str, cwd: Path | None) -> Location:
    """A local location from its path ``text`` (relative ones start at ``cwd``)."""
    base = os.path.abspath(cwd) if cwd is not None else "/"
    readings: list[Path] = []
    for reading in _decodings(text, field_name, spelling):
        if reading.split("/", 1)[0].startswith("~"):
            raise _refuse(
                field_name,
                spelling,
                "'~' is not expanded for a queued job (readers "
                "disagree on whose home it is); write the path from the team's root",
            )
        if not reading.startswith("/") and cwd is None:
            raise _refuse(field_name, spelling, "give an absolute path")
        joined = os.path.join(base, reading)
        readings.append(Path(os.path.realpath(joined)))
        readings.append(Path(os.path.realpath(os.path.normpath(joined))))
    written = os.path.join(base, unquote(text))
    return Location(
        field_name,
        spelling,
        "file",
        path=Path(os.path.realpath(written)),
        readings=tuple(dict.fromkeys(readings)),
        lexical=Path(os.path.normpath(written)),
    )


def _file_uri(parts: SplitResult, field_name: str, spelling: str) -> Location:
    if parts.netloc.lower() not in ("", "localhost"):
        raise _refuse(
            field_name,
            spelling,
            "a file: URI names this machine's files (file:///<path> "
            "or file://localhost/<path>), not another host's",
        )
    if "?" in spelling or "#" in spelling:
        raise _refuse(field_name, spelling, "a file: URI takes no query or fragment ('?', '#')")
    if not parts.path.startswith("/"):
        raise _refuse(field_name, spelling, "a file: URI takes an absolute path (file:///<path>)")
    return _local(parts.path, field_name, spelling, None)


def _object(parts: SplitResult, field_name: str, spelling: str) -> Location:
    """An object-store prefix: bucket (exact) and key segments (no ``.`` or ``..``)."""
    scheme = OBJECT_SCHEMES[parts.scheme]
    if "?" in spelling or "#" in spelling:
        raise _refuse(field_name, spelling, "an object-store URI takes no query or fragment")
    bucket = parts.netloc
    bad_bucket = not bucket or ":" in bucket or "%" in bucket
    if bad_bucket or ("@" in bucket and (scheme != "abfs" or bucket.count("@") > 1)):
        raise _refuse(
            field_name,
            spelling,
            f"name the bucket plainly ({parts.scheme}://<bucket>/<key>): "
            "no credentials, port or escapes",
        )
    keys = []
    for reading in _decodings(parts.path, field_name, spelling):
        segments = reading.split("/")[1:]
        while segments and not segments[-1]:
            segments.pop()
        if any(s in (".", "..") for s in segments):
            raise _refuse(field_name, spelling, "an object key has no '.' or '..' segments")
        keys.append(tuple(segments))
    key = "/".join(keys[min(1, len(keys) - 1)])
    return Location(field_name, spelling, scheme, bucket=bucket, key=key, keys=tuple(keys))


def _sqlite(spelling: str, scheme: str, field_name: str, cwd: Path | None) -> Location | None:
    """A SQLite store as SQLAlchemy reads ``sqlite:///<database>?<query>``."""
    rest = spelling[len(scheme) + 1 :]
    if not rest.startswith("//") or "#" in spelling:
        raise _refuse(field_name, spelling, "write sqlite:///<relative> or sqlite:////<absolute>")
    host, _, tail = rest[2:].partition("/")
    if host:
        raise _refuse(field_name, spelling, "a SQLite URL names no host: sqlite:////<path>")
    database, _, query = tail.partition("?")
    if unquote(database) in ("", ":memory:"):
        return None
    uri = dict(parse_qsl(query, keep_blank_values=True)).get("uri", "").lower() in _TRUE
    decoded = unquote(database)
    if not decoded.startswith("file:"):
        return _local(database, field_name, spelling, cwd)
    if not uri:
        raise _refuse(
            field_name,
            spelling,
            "a SQLite file: URI filename needs uri=true (without it "
            "SQLite opens a relative file named 'file:...')",
        )
    filename = decoded.removeprefix("file:")
    if filename.startswith("//"):
        authority, _, path = filename[2:].partition("/")
        if authority.lower() not in ("", "localhost"):
            raise _refuse(field_name, spelling, "a SQLite file: URI names no host")
        filename = "/" + path
    path = filename.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        raise _refuse(field_name, spelling, "a SQLite file: URI takes an absolute path")
    location = _local(path, field_name, spelling, None)
    written = database.removeprefix("file:").split("?", 1)[0].split("#", 1)[0]
    if written.startswith("//"):  # the host was checked above, on the decoded spelling
        written = "/" + written[2:].partition("/")[2]
    if written != path and written.startswith("/"):
        # SQLAlchemy decodes the filename before SQLite does; the spelling as written must
        # lie inside too, as every other location's readings do (no reader may disagree)
        also = _local(written, field_name, spelling, None).readings
        location = replace(location, readings=(*location.readings, *also))
    return location


def check_plain_text(spec: PipelineSpec) -> None:
    """Refuse a control or invisible character in any location of ``spec`` (also once or
    twice percent-decoded): the rule every spec keeps, an admin's too, before any of its
    locations reaches a file system call or a log line.

    Raises:
        LocationRefused: naming the field and the spelling.
    """
    for field_name, spelling, _ in spec_locations(spec):
        _decodings(spelling, field_name, spelling)


def spec_locations(spec: PipelineSpec) -> list[tuple[str, str, Use]]:
    """(field, spelling, use) for every location ``spec`` holds: ``data.source`` (one or
    a list), ``train.storage_path`` (also as ``tune.refit`` and ``tune.space`` set it) and
    ``tracking.tracking_uri``. Unset and empty ones (the defaults) are left out."""
    found: list[tuple[str, str, Use]] = []
    source = spec.data.source
    if isinstance(source, list):
        found += [(f"data.source[{i}]", s, "data") for i, s in enumerate(source)]
    else:
        found.append(("data.source", source, "data"))
    storage = [("train.storage_path", spec.train.storage_path)]
    if spec.tune is not None:
        storage.append(("tune.refit.storage_path", (spec.tune.refit or {}).get("storage_path")))
        dist = spec.tune.space.get("train.storage_path")
        choices = (dist.choice or []) if dist is not None else []
        storage += [(f"tune.space.train.storage_path[{i}]", c) for i, c in enumerate(choices)]
    found += [(f, s, "storage") for f, s in storage if isinstance(s, str) and s]
    if spec.tracking.tracking_uri:
        found.append(("tracking.tracking_uri", spec.tracking.tracking_uri, "tracking"))
    return found


def team_roots(team: Team) -> list[Location]:
    """``team``'s roots, parsed (and local ones resolved) now; unreadable ones left out."""
    roots = []
    for root in team.roots:
        try:
            roots.append(parse_root(root))
        except LocationRefused:
            continue
    return roots


def check_locations(spec: PipelineSpec, team: Team, cwd: Path) -> list[Location]:
    """Every location of ``spec`` in canonical form, once each lies inside ``team``'s roots.

    Deterministic for a given spec, team and file tree; call it again when the job starts,
    to see links as they are then.

    Args:
        spec: a member's pipeline spec.
        team: the member's team (its ``roots``).
        cwd: where the job's relative paths start (``boundary.member_cwd``).

    Returns:
        The locations, in the order of ``spec_locations``.

    Raises:
        LocationRefused: the first location that is unreadable or outside, with why.
    """
    roots = team_roots(team)
    shown = ", ".join(team.roots) or "none set (orch teams set --roots)"
    checked = []
    for field_name, spelling, use in spec_locations(spec):
        location = parse_location(spelling, field_name, cwd, use)
        if location is None:
            continue
        if not any(location.within(root) for root in roots):
            how = "leads outside" if _through_link(location, roots) else "is outside"
            raise _refuse(field_name, spelling, f"{how} team {team.name}'s roots ({shown})")
        if use == "data" and location.scheme == "file":
            _check_tree(location, roots, f"team {team.name}'s roots ({shown})")
        checked.append(location)
    return checked


def _through_link(location: Location, roots: list[Location]) -> bool:
    """Whether the spelling is inside by its letters and outside only through a link."""
    lexical = location.lexical
    return lexical is not None and any(_under(lexical, root.path) for root in roots)


def _check_tree(location: Location, roots: list[Location], shown: str) -> None:
    """Every link under a folder data source (or under a glob's fixed part) leads inside
    ``roots``, also under the folders such links lead to: readers follow them."""
    parts = str(location.path).split("/")
    magic = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    top = "/".join(parts[:magic]) or "/"
    local = [root.path for root in roots if root.scheme == "file"]
    stack, walked, seen = [(top, "")], {top}, 0  # (a real folder, how the reader names it)
    while stack:
        folder, named = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        seen += len(entries)
        if seen > WALK_LIMIT:
            raise _refuse(
                location.field,
                location.spelling,
                f"holds more than {WALK_LIMIT} entries to check; name a smaller folder",
            )
        for entry in entries:
            name = named + entry.name
            real = os.path.realpath(entry.path) if entry.is_symlink() else entry.path
            if real != entry.path and not any(_under(Path(real), root) for root in local):
                rule = f"the link {name!r} in it leads outside {shown}"
                raise _refuse(location.field, location.spelling, rule)
            if real not in walked and entry.is_dir():
                walked.add(real)
                stack.append((real, name + "/"))
