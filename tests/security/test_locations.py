"""Attack: a member spells a place outside the team's roots so that the check reads it as
inside while some reader of the spec (pyarrow, MLflow, SQLAlchemy and SQLite, Ray Train)
opens the outside place: another scheme case, a file: authority, one slash, a SQLite URI
filename, percent-escapes, '..', '~', links, object-store keys. Whatever a team's spec
gets past ``check_locations`` must lie inside its roots by every reading; on the API a
refusal is a 403 that names the member's own spelling and never the other team's path."""

from __future__ import annotations

import os
import posixpath
import re
import unicodedata
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from orchestrator.scheduling.identity import IdentityError, Team
from orchestrator.scheduling.locations import LocationRefused, check_locations
from orchestrator.scheduling.scheduler import SubmitRequest
from tests.helpers import spec_text
from tests.security.conftest import ROWS, submit_body

BUCKET_ROOT = ("bkt", ("data", "vision"))  # the team's object-store root s3://bkt/data/vision


# --------------------------------------------------------------------------- on the API


def _attacks(nlp: Path) -> list[tuple[dict, str, str]]:
    """(spec sections, bob's spelling, the field it is in): each reaches vision's root."""
    data = [
        "../vision/rows.csv",
        "%2e%2e/vision/rows.csv",
        f"file://{nlp}/../vision/rows.csv",
        f"file://localhost{nlp}/%2e%2e/vision/rows.csv",
        f"file:{nlp}/../vision/rows.csv",
        f"FILE://{nlp}/rows.csv",
        f"file://fileserver{nlp}/rows.csv",
        "shortcut.csv",  # a link in nlp's root to vision's rows
        "door/rows.csv",  # a link in nlp's root to vision's folder
        "folder",  # a folder in nlp's root holding a link to vision's rows
        "~/rows.csv",
    ]
    found = [({}, spelling, "data.source") for spelling in data]
    for uri in (
        f"sqlite:///file:{nlp}/../vision/mlflow.db?mode=ro&uri=true",
        f"sqlite:///file:{nlp}/%252e%252e/vision/mlflow.db?uri=true",
        "sqlite:///file:../vision/mlflow.db?mode=ro&uri=true",
        "sqlite:///../vision/mlflow.db",
        "SQLITE:///mlflow.db",
    ):
        found.append(({"tracking": {"tracking_uri": uri}}, uri, "tracking.tracking_uri"))
    for path in ("../vision/checkpoints", "s3://anybucket/vision", "door/checkpoints"):
        found.append(({"train": {"storage_path": path}}, path, "train.storage_path"))
    space = {"train.storage_path": {"choice": ["checkpoints", "../vision/ckpt"]}}
    found.append(({"tune": {"space": space}}, "../vision/ckpt", "tune.space.train.storage_path"))
    return found


def test_bob_cannot_reach_alices_root_by_any_spelling(tenancy):
    nlp, vision = tenancy.roots["nlp"].resolve(), tenancy.roots["vision"].resolve()
    (nlp / "shortcut.csv").symlink_to(vision / "rows.csv")
    (nlp / "door").symlink_to(vision, target_is_directory=True)
    (nlp / "folder").mkdir()
    (nlp / "folder" / "rows.csv").write_text(ROWS)
    (nlp / "folder" / "more.csv").symlink_to(vision / "rows.csv")
    api = tenancy.serve()
    bob = api.as_("bob")
    for sections, spelling, field in _attacks(nlp):
        source = spelling if field == "data.source" else "rows.csv"
        text = spec_text("nlp-steal", source, **sections)
        answer = bob.post("/jobs", json=submit_body(text))
        detail = answer.json()["detail"]
        assert answer.status_code == 403, (spelling, answer.text)
        assert field in detail and spelling in detail, detail
        for secret in (str(vision), str(tenancy.roots["vision"])):
            assert secret not in detail, detail
        assert "\n" not in detail
    assert tenancy.store.queued() == []  # nothing was queued
    assert bob.post("/jobs", json=submit_body(spec_text("nlp-ok", "rows.csv"))).status_code == 201


@pytest.mark.parametrize("character", ["\x00", "\n", "\r", "\t", "\x7f", "\u202e"])
def test_a_control_character_in_a_location_is_a_clear_4xx_not_a_500(tenancy, character):
    api = tenancy.serve()
    text = spec_text("nlp-nul", f"rows{character}.csv")
    answer = api.as_("bob").post("/jobs", json=submit_body(text))
    assert answer.status_code in (400, 403, 422), answer.text
    assert "data.source" in answer.json()["detail"]
    assert "\n" not in answer.json()["detail"]
    assert tenancy.store.queued() == []


def test_a_team_may_have_object_store_roots_and_a_prefix_is_segment_wise(tenancy):
    ids = tenancy.store.identities
    vision = tenancy.roots["vision"]
    team = ids.set_roots("vision", [f"file://{vision}", "s3://bkt/data/vision/", "gs://g/v"])
    assert team.roots == [str(vision.resolve()), "s3://bkt/data/vision", "gs://g/v"]
    alice = tenancy.serve().as_("alice")
    tries = {"s3://bkt/data/vision/ckpt": 201, "s3://bkt/data/vision2/ckpt": 403,
             "s3://bkt/data/vision/../nlp": 403, "gs://bkt/data/vision": 403}  # fmt: skip
    for path, status in tries.items():
        text = spec_text("vision-p", "rows.csv", train={"storage_path": path})
        answer = alice.post("/jobs", json=submit_body(text))
        assert answer.status_code == status, (path, answer.text)
    assert len(tenancy.store.queued()) == 1


@pytest.mark.parametrize(
    ("root", "rule"),
    [
        ("s3://bkt/x\n", "control or invisible character"),
        ("/data/vision\x00", "control or invisible character"),
        ("http://host/vision", "scheme 'http' is not taken"),
        ("hdfs://nn/vision", "scheme 'hdfs' is not taken"),
        ("relative/vision", "give an absolute path"),
        ("~/vision", "'~' is not expanded"),
        ("s3://bkt/data/../nlp", "no '.' or '..' segments"),
        ("/data/%2e%2e/nlp", "without percent-escapes"),
        ("file://fileserver/data", "not another host's"),
        ("/no/such/folder", "not an absolute path to a folder"),
    ],
)
def test_a_root_an_admin_cannot_mean_plainly_is_refused(tenancy, root, rule):
    ids = tenancy.store.identities
    before = ids.team("vision").roots
    with pytest.raises(IdentityError, match=rf"--roots: .*{re.escape(rule)}"):
        ids.set_roots("vision", [root])
    assert ids.team("vision").roots == before


# --------------------------------------------------------------------------- the property


class Case(NamedTuple):
    """One spelling: ``form`` wraps ``path`` (already percent-encoded as the attacker
    likes; ``<R>`` stands for the team's root, ``<B>`` for the folder above it) and
    ``suffix`` (a query or fragment) follows."""

    use: str  # data | storage | tracking
    form: str
    path: str
    suffix: str = ""


FORMS = {
    "plain": "{p}",
    "file3": "file://{p}",
    "file1": "file:{p}",
    "filelocal": "file://localhost{p}",
    "filehost": "file://fileserver{p}",
    "FILE": "FILE://{p}",
    "File": "File:{p}",
    "sqlite": "sqlite:///{p}",
    "sqliteuri": "sqlite:///file:{p}?uri=true",
    "sqliteuri_ro": "sqlite:///file:{p}?mode=ro&uri=true",
    "sqlitenouri": "sqlite:///file:{p}",
    "sqliteuri_auth": "sqlite:///file://localhost{p}?uri=true",
    "s3": "s3://{p}",
    "S3": "S3://{p}",
}
URI_FORMS = {"file3", "file1", "filelocal", "filehost", "FILE", "File", "sqliteuri",
             "sqliteuri_ro", "sqliteuri_auth"}  # fmt: skip
NAMES = ["rows.csv", "sub", "deep", "in_link", "out_link", "out_file", "loop", "vision",
         "vision2", "nlp", "secret.csv", "back", "%2e%2e", "~", "x", "data", "bkt"]  # fmt: skip


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """``<B>/vision`` (the team's root) beside ``<B>/nlp`` and ``<B>/vision2``, with links
    both ways, a link loop, and literal folders named ``%2e%2e`` and ``~``."""
    base = tmp_path_factory.mktemp("tree").resolve()
    root = base / "vision"
    for folder in ("vision/sub/deep", "vision/%2e%2e", "vision/~", "nlp", "vision2"):
        (base / folder).mkdir(parents=True)
    for file in ("vision/rows.csv", "vision/sub/deep/rows.csv", "nlp/secret.csv"):
        (base / file).write_text(ROWS)
    (root / "in_link").symlink_to(root / "sub")
    (root / "out_link").symlink_to(base / "nlp")
    (root / "out_file").symlink_to(base / "nlp" / "secret.csv")
    (root / "loop").symlink_to(root / "loop")
    (base / "nlp" / "back").symlink_to(root)
    team = Team(name="vision", created_at=0, roots=[str(root), "s3://bkt/data/vision"])
    return base, team


@pytest.fixture(scope="module")
def base_spec():
    from orchestrator.spec import PipelineSpec

    return PipelineSpec.model_validate(
        {"name": "vision-p", "data": {"source": "rows.csv"}, "model": {"type": "mlp"}}
    )


def spelling_of(case: Case, base: Path) -> str:
    path = case.path.replace("<R>", str(base / "vision")).replace("<B>", str(base))
    return FORMS[case.form].format(p=path) + case.suffix


def _with(spec, use: str, spelling: str):
    if use == "data":
        return spec.model_copy(update={"data": spec.data.model_copy(update={"source": spelling})})
    if use == "storage":
        train = spec.train.model_copy(update={"storage_path": spelling})
        return spec.model_copy(update={"train": train})
    tracking = spec.tracking.model_copy(update={"tracking_uri": spelling})
    return spec.model_copy(update={"tracking": tracking})


def _decoded(text: str) -> list[str]:
    return [text, unquote(text), unquote(unquote(text))]


def _local_targets(case: Case, path: str, cwd: Path) -> list[str]:
    """The oracle: os.path.realpath of the path, as written and decoded (a plain path
    keeps its '?' and '#'; SQLAlchemy cuts a SQLite URL at '?'; URIs cut both)."""
    if case.form == "plain":
        paths = _decoded(path + case.suffix)
    elif case.form == "sqlite":
        paths = [p.split("?")[0] for p in _decoded(path + case.suffix)]
    else:
        paths = [p.split("?")[0].split("#")[0] for p in _decoded(path)]
    if case.form == "sqlitenouri":
        paths += ["file:" + p for p in paths]
    return [os.path.realpath(os.path.join(cwd, p)) for p in paths]


def _inside_oracle(case: Case, base: Path) -> bool:
    """Whether every reading of ``case`` lies in the team's roots, computed without the
    module under test: realpath for local paths, posixpath.normpath for object keys."""
    path = case.path.replace("<R>", str(base / "vision")).replace("<B>", str(base))
    if case.form == "s3":
        bucket, _, key = path.partition("/")
        readings = [posixpath.normpath("/" + k.split("?")[0].split("#")[0]) for k in _decoded(key)]
        segments = [tuple(s for s in r.split("/") if s) for r in readings]
        want = BUCKET_ROOT[1]
        return bucket == BUCKET_ROOT[0] and all(s[: len(want)] == want for s in segments)
    root = str(base / "vision")
    return all(
        os.path.commonpath([target, root]) == root
        for target in _local_targets(case, path, base / "vision")
    )


def _must_refuse(case: Case, spelling: str) -> bool:
    """Spellings no reader agrees on: another case of scheme, another host, a control
    character (also once decoded), a leading '~', a file: URI with a query."""
    if case.form in ("filehost", "FILE", "File", "S3"):
        return True
    if case.form == "sqlitenouri" and case.suffix != "?uri=true":
        return True
    if any(unicodedata.category(c) == "Cc" for t in _decoded(spelling) for c in t):
        return True
    if case.form in URI_FORMS - {"sqliteuri", "sqliteuri_ro", "sqliteuri_auth"} and case.suffix:
        return True
    return case.form in ("plain", "sqlite") and any(t.startswith("~") for t in _decoded(case.path))


def _encode(text: str, chosen: frozenset, double: bool, upper: bool) -> str:
    def one(c: str) -> str:
        hexed = f"{ord(c):02X}" if upper else f"{ord(c):02x}"
        return ("%25" if double else "%") + hexed

    return "".join(one(c) if c in chosen else c for c in text)


@st.composite
def cases(draw) -> Case:
    form = draw(st.sampled_from(sorted(FORMS)))
    use = draw(st.sampled_from(["data", "storage", "tracking"]))
    segment = st.one_of(
        st.sampled_from(NAMES + ["..", ".", ""]),
        st.text(alphabet="a.~%/\x00\n\t\x7f ?#", min_size=1, max_size=3),
    )
    segments = draw(st.lists(segment, max_size=6))
    if form in ("s3", "S3"):
        bucket = draw(st.sampled_from(["bkt", "bkt2", "BKT", "bkt:1", "u@bkt"]))
        path = bucket + "/" + "/".join(segments)
    else:
        start = draw(st.sampled_from(["<R>/", "<B>/", "/", "//", "", "<R>//"]))
        if form in URI_FORMS and not start.startswith(("<", "/")):
            start = "/"
        path = start + "/".join(segments)
    chosen = draw(st.frozensets(st.sampled_from("./a~%"), max_size=3))
    path = _encode(path, chosen, draw(st.booleans()), draw(st.booleans()))
    suffix = draw(st.sampled_from(["", "", "", "?x=1", "#frag", "?uri=true"]))
    return Case(use, form, path, suffix)


CORPUS = [
    Case("data", "plain", "rows.csv"),
    Case("data", "plain", "../nlp/secret.csv"),
    Case("data", "plain", "%2e%2e/nlp/secret.csv"),
    Case("data", "plain", "%252e%252e/nlp/secret.csv"),
    Case("data", "plain", "%2e%2e/vision/rows.csv"),  # a literal folder '%2e%2e' exists
    Case("data", "plain", "out_file"),
    Case("data", "plain", "out_link/secret.csv"),
    Case("data", "plain", "out_link/back/rows.csv"),
    Case("data", "plain", "in_link/../../nlp/secret.csv"),
    Case("data", "plain", "out_link/../vision/rows.csv"),
    Case("data", "plain", "~/rows.csv"),
    Case("data", "plain", "sub/~"),
    Case("data", "plain", "loop/x"),
    Case("data", "plain", "<B>/vision2/x"),
    Case("data", "plain", "rows.csv", "?x=1"),
    Case("data", "FILE", "<R>/rows.csv"),
    Case("data", "File", "<R>/rows.csv"),
    Case("data", "file3", "<R>/rows.csv"),
    Case("data", "file3", "<R>/../nlp/secret.csv"),
    Case("data", "file3", "<R>/%2e%2e/nlp/secret.csv"),
    Case("data", "file3", "<R>/rows.csv", "#/../../nlp/secret.csv"),
    Case("data", "file1", "<R>/rows.csv"),
    Case("data", "file1", "<R>/../nlp"),
    Case("data", "filelocal", "<R>/rows.csv"),
    Case("data", "filelocal", "<R>/%2E%2E/nlp"),
    Case("data", "filehost", "<R>/rows.csv"),
    Case("data", "file3", "//<R>/rows.csv"),
    Case("storage", "s3", "bkt/data/vision/ckpt"),
    Case("storage", "s3", "bkt/data/vision2/ckpt"),
    Case("storage", "s3", "bkt/data/vision/../nlp"),
    Case("storage", "s3", "bkt/data/vision/%2e%2e/nlp"),
    Case("storage", "s3", "bkt/data/vision/%252e%252e/nlp"),
    Case("storage", "s3", "bkt/data/vision", "?endpoint_override=elsewhere"),
    Case("storage", "s3", "bkt2/data/vision/x"),
    Case("storage", "S3", "bkt/data/vision/x"),
    Case("tracking", "sqlite", "mlflow.db"),
    Case("tracking", "sqlite", "../nlp/mlflow.db"),
    Case("tracking", "sqlite", "<R>/mlflow.db"),
    Case("tracking", "sqliteuri", "<R>/mlflow.db"),
    Case("tracking", "sqliteuri", "<R>/../nlp/mlflow.db"),
    Case("tracking", "sqliteuri", "<R>/%252e%252e/nlp/mlflow.db"),
    Case("tracking", "sqliteuri_ro", "../nlp/mlflow.db"),
    Case("tracking", "sqliteuri_auth", "<R>/mlflow.db"),
    Case("tracking", "sqlitenouri", "<R>/mlflow.db"),
    # found by this test under pytest-xdist: SQLAlchemy decodes '%2f' before SQLite reads
    # the file: URI, so 'vision%2f' as written names a sibling of the root
    Case("tracking", "sqliteuri", "<R>%2f"),
    Case("storage", "plain", ""),  # left unset: the default, no location of its own
]


def _examples(test):
    for case in reversed(CORPUS):
        test = example(case=case)(test)
    return test


@settings(
    max_examples=2000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases())
@_examples
def test_whatever_a_team_may_use_lies_inside_its_roots(tree, base_spec, case):
    base, team = tree
    spelling = spelling_of(case, base)
    spec = _with(base_spec, case.use, spelling)
    try:
        locations = check_locations(spec, team, base / "vision")
    except LocationRefused as exc:
        message = str(exc)
        assert "\n" not in message
        assert str(base / "nlp") not in message.replace(repr(spelling), "")
        return
    assert not _must_refuse(case, spelling), f"{spelling!r} passed"
    assert _inside_oracle(case, base), f"{spelling!r} passed but leads outside"
    if spelling:  # an empty one is the field left unset: no location of its own
        assert locations[-1].spelling == spelling


INSIDE = [
    ("data", "rows.csv"),
    ("data", "sub/deep/rows.csv"),
    ("data", "in_link/deep/rows.csv"),
    ("data", "<R>/rows.csv"),
    ("data", "file://<R>/rows.csv"),
    ("data", "file:<R>/rows.csv"),
    ("data", "file://localhost<R>/sub"),
    ("data", "sub/~"),
    ("data", "sub%20x/rows.csv"),
    ("storage", "checkpoints"),
    ("storage", "s3://bkt/data/vision"),
    ("storage", "s3://bkt/data/vision/ckpt/"),
    ("storage", "s3://bkt/data/vision/with%20space"),
    ("tracking", "sqlite:///mlflow.db"),
    ("tracking", "sqlite:///<R>/mlflow.db"),
    ("tracking", "sqlite:///file:<R>/mlflow.db?mode=ro&uri=true"),
    ("tracking", "sqlite:///file://localhost<R>/mlflow.db?uri=true"),
    ("tracking", "<R>/mlruns"),
    ("tracking", "file://<R>/mlruns"),
]


@pytest.mark.parametrize(("use", "spelling"), INSIDE)
def test_plain_spellings_inside_the_roots_pass(tree, base_spec, use, spelling):
    base, team = tree
    spelling = spelling.replace("<R>", str(base / "vision"))
    location = check_locations(_with(base_spec, use, spelling), team, base / "vision")[-1]
    assert location.spelling == spelling
    if location.scheme == "file":
        assert location.path == location.path.resolve()
        assert base / "vision" in [location.path, *location.path.parents]
    else:
        assert (location.bucket, location.key.split("/")[:2]) == ("bkt", ["data", "vision"])


def test_a_folder_holding_a_link_out_is_refused_as_a_data_source(tree, base_spec):
    base, team = tree
    spec = _with(base_spec, "data", ".")  # the root holds out_link and out_file
    with pytest.raises(LocationRefused, match=r"data.source: '\.': the link 'out_\w+' in it"):
        check_locations(spec, team, base / "vision")
    check_locations(_with(base_spec, "storage", "."), team, base / "vision")  # written to


def test_links_to_folders_inside_are_walked_for_their_own_links_out(tmp_path, base_spec):
    root = tmp_path / "vision"
    for folder in ("vision/a", "vision/b", "nlp"):
        (tmp_path / folder).mkdir(parents=True)
    (root / "a" / "rows.csv").write_text(ROWS)
    (root / "a" / "other").symlink_to(root / "b")  # inside, but b holds a link out
    (root / "b" / "leak").symlink_to(tmp_path / "nlp")
    team = Team(name="vision", created_at=0, roots=[str(root)])
    for source in ("a", "a/*.csv", f"file://{root}/a"):
        with pytest.raises(LocationRefused, match=r"the link 'other/leak' in it leads outside"):
            check_locations(_with(base_spec, "data", source), team, root)
    (root / "b" / "leak").unlink()
    assert check_locations(_with(base_spec, "data", "a/*.csv"), team, root)[0].path.name == "*.csv"


def test_a_link_swapped_after_submit_is_caught_when_the_job_starts(tenancy):
    """Attack (TOCTOU): bob submits through a link that leads inside nlp's root, then points
    it at alice's data before the job starts. The start checks again: the job fails with
    the reason, and nothing reaches Ray."""
    _, scheduler = tenancy.app()
    bob = tenancy.store.identities.user("bob")
    link = tenancy.roots["nlp"] / "today.csv"
    link.symlink_to(tenancy.roots["nlp"] / "rows.csv")
    ask = SubmitRequest(**submit_body(spec_text("nlp-swap", "today.csv")))
    job, created = scheduler.submit(ask, bob)
    assert created and job.state == "queued"

    link.unlink()
    link.symlink_to(tenancy.roots["vision"] / "rows.csv")  # swapped before it starts
    scheduler.tick()
    started = tenancy.store.get(job.id)
    assert started.state == "failed"
    assert started.reason.startswith("its spec is refused at start: data.source: 'today.csv'")
    assert str(tenancy.roots["vision"]) not in started.reason
    assert scheduler.ray.submitted == []  # never reached Ray
