"""Where the rows are: ``data.source`` resolved to a list of files on one filesystem.

A source is a file, a directory (read recursively; names starting with ``.`` or ``_``,
like ``_SUCCESS``, are skipped), a glob (``*``, ``?``, ``[...]``; ``*`` also crosses
``/``), or a list of them, on the local disk or on object storage (``s3://``, ``gs://``,
``abfs://``) through pyarrow's filesystems. Credentials and endpoints come from the
standard environment and instance roles (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``,
``GOOGLE_APPLICATION_CREDENTIALS``, ...), never from the spec.

Only metadata is read here (the listing: paths, sizes, modification times). The
fingerprint of a source comes from that listing, so a study's trials and a rerun find the
statistics computed before (``jobs.stats``) without scanning the rows again.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import PurePosixPath
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from jobs.errors import DataError

OBJECT_STORE_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss")
GLOB_CHARS = "*?["
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class SourceFile:
    """One data file: its path on the source's filesystem, size and modification time."""

    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ResolvedSource:
    """The files a ``data.source`` names, on one filesystem, in a stable order."""

    written: tuple[str, ...]  # the source as the spec gives it (one or a list)
    scheme: str  # "" for the local disk, else s3 | gs | abfs ...
    root_uri: str  # the URI a filesystem is made from ("" locally, s3://bucket, ...)
    files: tuple[SourceFile, ...]
    format: str  # parquet | csv
    partition_base: str | None  # where hive-style key=value folders start, if one folder

    @property
    def remote(self) -> bool:
        return bool(self.scheme)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]

    @cached_property
    def filesystem(self) -> pafs.FileSystem:
        return filesystem_for(self.root_uri) if self.remote else pafs.LocalFileSystem()

    def fingerprint(self) -> str:
        """sha256 of the listing (path, size, modification time of every file)."""
        listing = [[f.path, f.size, f.mtime_ns] for f in self.files]
        return hashlib.sha256(json.dumps([self.scheme, listing]).encode()).hexdigest()

    def __getstate__(self):  # the filesystem is made again where it is used
        state = dict(self.__dict__)
        state.pop("filesystem", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)


def filesystem_for(root_uri: str) -> pafs.FileSystem:
    """pyarrow's filesystem for an object-store URI, configured from the environment."""
    try:
        fs, _ = pafs.FileSystem.from_uri(root_uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise DataError("data.source", f"cannot open {root_uri}: {_short(exc)}") from None
    return fs


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _split(location: str) -> tuple[str, str, str]:
    """(scheme, root URI, path on that filesystem) of one location."""
    parsed = urlparse(location)
    scheme = parsed.scheme
    if scheme == "file":
        return "", "", os.path.abspath(parsed.path)
    if not scheme or len(scheme) == 1:  # a plain path (or a Windows drive letter)
        return "", "", os.path.abspath(location)
    if scheme not in OBJECT_STORE_SCHEMES:
        raise DataError(
            "data.source",
            f"unsupported scheme {scheme!r} in {location!r}; use sklearn://<set>, a local "
            "path, file://, s3://, gs:// or abfs://",
        )
    if not parsed.netloc:
        raise DataError("data.source", f"{location!r} names no bucket; write {scheme}://BUCKET/...")
    return scheme, f"{scheme}://{parsed.netloc}", f"{parsed.netloc}{parsed.path}".rstrip("/")


def _info(fs: pafs.FileSystem, path: str, shown: str) -> pafs.FileInfo:
    try:
        return fs.get_file_info(path)
    except OSError as exc:  # no credentials, access denied, no such bucket, unreachable
        raise DataError("data.source", f"cannot read {shown}: {_short(exc)}") from None


def _listing(fs: pafs.FileSystem, base: str, shown: str) -> list[pafs.FileInfo]:
    try:
        found = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except OSError as exc:
        raise DataError("data.source", f"cannot list {shown}: {_short(exc)}") from None
    return [
        info
        for info in found
        if info.type == pafs.FileType.File
        and not any(p.startswith((".", "_")) for p in info.path[len(base) :].split("/") if p)
    ]


def _files_of(fs: pafs.FileSystem, path: str, shown: str) -> tuple[list[pafs.FileInfo], str | None]:
    """The files one location names, and its folder (for partition columns) if a folder."""
    if any(c in path for c in GLOB_CHARS):
        segments = path.split("/")
        first = next(i for i, s in enumerate(segments) if any(c in s for c in GLOB_CHARS))
        base = "/".join(segments[:first]) or "/"
        if _info(fs, base, shown).type != pafs.FileType.Directory:
            raise DataError("data.source", f"{shown}: the folder {base} does not exist")
        matched = [i for i in _listing(fs, base, shown) if fnmatch.fnmatchcase(i.path, path)]
        if not matched:
            raise DataError("data.source", f"{shown} matches no file; check the pattern")
        return matched, base
    info = _info(fs, path, shown)
    if info.type == pafs.FileType.File:
        return [info], None
    if info.type == pafs.FileType.Directory:
        files = _listing(fs, path, shown)
        if not files:
            raise DataError("data.source", f"{shown} is an empty folder; put data files in it")
        return files, path
    raise DataError("data.source", f"{shown} does not exist; check the path in data.source")


def _format(files: list[pafs.FileInfo], shown: str) -> str:
    kinds = {FORMATS.get(PurePosixPath(f.path).suffix.lower()) for f in files}
    if len(kinds) == 1 and None not in kinds:
        return kinds.pop()
    suffixes = sorted({PurePosixPath(f.path).suffix.lower() or "(none)" for f in files})
    raise DataError(
        "data.source",
        f"{shown} holds {suffixes} files; expected .parquet or .csv files, one kind only",
    )


def resolve(source: str | list[str]) -> ResolvedSource:
    """The files ``source`` names (not yet opened).

    Raises:
        DataError: a missing file, folder, bucket or prefix; no credentials or access
            denied; an empty folder; no file matching a glob; mixed filesystems or formats.
    """
    written = (source,) if isinstance(source, str) else tuple(source)
    if not written:
        raise DataError("data.source", "the list is empty; name at least one file or folder")
    parts = [_split(location) for location in written]
    roots = {(scheme, root) for scheme, root, _ in parts}
    if len(roots) > 1:
        raise DataError(
            "data.source",
            f"the sources lie on {len(roots)} filesystems "
            f"({sorted(r or 'local' for _, r in roots)}); list sources of one filesystem "
            "(one bucket) only",
        )
    scheme, root_uri = roots.pop()
    fs = filesystem_for(root_uri) if scheme else pafs.LocalFileSystem()
    infos: dict[str, pafs.FileInfo] = {}
    bases = set()
    for location, (_, _, path) in zip(written, parts, strict=True):
        found, base = _files_of(fs, path, location)
        bases.add(base)
        for info in found:
            infos.setdefault(info.path, info)
    files = sorted(infos.values(), key=lambda i: i.path)
    shown = written[0] if len(written) == 1 else f"{len(written)} sources"
    return ResolvedSource(
        written=written,
        scheme=scheme,
        root_uri=root_uri,
        files=tuple(SourceFile(i.path, i.size or 0, i.mtime_ns or 0) for i in files),
        format=_format(files, shown),
        partition_base=bases.pop() if len(bases) == 1 else None,
    )


def filter_expression(terms: list | None):
    """``data.filter`` ([column, op, value] terms that must all hold) as a pyarrow
    expression, or None.

    Raises:
        DataError: a term pyarrow cannot make an expression of.
    """
    if not terms:
        return None
    import pyarrow.parquet as pq

    try:
        return pq.filters_to_expression([tuple(term) for term in terms])
    except (TypeError, ValueError, pa.ArrowInvalid) as exc:
        raise DataError("data.filter", f"{_short(exc)}; write [column, op, value] terms") from None


def _partitioning(source: ResolvedSource):
    if source.partition_base is None:
        return None
    return pads.partitioning(flavor="hive")


def open_dataset(source: ResolvedSource) -> pads.Dataset:
    """The source's files as one pyarrow dataset (partition folders as columns): what the
    in-memory path and every rank reading its own rows (``jobs.rank_reader``) read.

    Raises:
        DataError: a file listed when the run started is gone, or cannot be read.
    """
    fmt = "parquet" if source.format == "parquet" else pads.CsvFileFormat()
    try:
        return pads.dataset(
            source.paths,
            filesystem=source.filesystem,
            format=fmt,
            partitioning=_partitioning(source),
            partition_base_dir=source.partition_base,
        )
    except FileNotFoundError as exc:
        raise DataError(
            "data.source",
            f"{_short(exc)} is gone (FileNotFoundError); it was listed when the run "
            "started: put it back and resume the run, or start it again",
        ) from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError("data.source", f"cannot read {source.written[0]}: {_short(exc)}") from None
