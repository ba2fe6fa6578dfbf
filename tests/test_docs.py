"""The documentation site: it builds strict (a broken link or reference fails), its
reference holds every spec field and every CLI command and option, and every command
block in the docs and the README is run by a test or says why not."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
COMMAND_LANGUAGES = {"bash", "console", "sh", "shell"}
MARKER = re.compile(r"<!-- (run|not run): (\S.*) -->")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "-d", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": str(Path(sys.executable).parent)},
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    assert "WARNING" not in built.stderr, built.stderr[-3000:]
    return out


def _spec_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every field of a pydantic model, by walking the models themselves (not the JSON
    Schema the reference is generated from)."""
    paths = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        paths.append(path)
        for inner in _models_in(field.annotation):
            paths += _spec_paths(inner, f"{path}.")
    return paths


def _models_in(annotation) -> list[type[BaseModel]]:
    """The models an annotation holds directly or as an optional (not in a list or map)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def test_the_reference_has_every_spec_field(site):
    from orchestrator.spec import PipelineSpec

    page = (site / "reference" / "spec" / "index.html").read_text()
    missing = [p for p in _spec_paths(PipelineSpec) if f"<code>{p}</code>" not in page]
    assert not missing, missing
    assert "<code>train.deepspeed.zero_stage</code>" in page  # the walk went deep


def _commands(parser: argparse.ArgumentParser, words: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{words} {name}", sub
                yield from _commands(sub, f"{words} {name}")


def test_the_reference_has_every_cli_command_and_option(site):
    from orchestrator.cli import _parser

    page = (site / "reference" / "cli" / "index.html").read_text()
    commands = list(_commands(_parser(), "orch"))
    assert len(commands) > 30
    for words, parser in commands:
        assert f"<code>{words}</code>" in page, words
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert option in page, (words, option)


def test_the_sdk_reference_documents_every_client_method(site):
    from orchestrator.client import Client

    page = (site / "reference" / "sdk" / "index.html").read_text()
    public = [n for n in vars(Client) if not n.startswith("_") and callable(getattr(Client, n))]
    assert public and all(f'id="orchestrator.client.Client.{n}"' in page for n in public)


def test_the_benchmarks_page_is_benchmarks_md_as_the_bench_wrote_it(site):
    import html

    page = (site / "benchmarks" / "index.html").read_text()
    shown = {
        html.unescape(re.sub(r"<[^>]+>", "", h)).replace("\u00b6", "").strip()
        for h in re.findall(r"<h2[^>]*>(.*?)</h2>", page)
    }
    written = re.findall(r"^## (.+)$", (ROOT / "BENCHMARKS.md").read_text(), re.M)
    assert written and {h.replace("`", "") for h in written} <= shown


def _blocks(path: Path):
    """(language, the line before the fence, the block's lines) of every fenced block."""
    lines = path.read_text().split("\n")
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            yield lines[i][3:].strip(), lines[i - 1] if i else "", lines[i + 1 : j]
            i = j
        i += 1


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_block_is_run_by_a_test_or_says_why_not(path):
    for language, before, block in _blocks(path):
        assert language, f"{path.name}: a block without a language: {block[:1]}"
        if language in COMMAND_LANGUAGES:
            marker = MARKER.fullmatch(before.strip())
            missing = "no <!-- run: ... --> or <!-- not run: why -->"
            assert marker, f"{path.name}: {missing} before {block[:1]}"
            if marker.group(1) == "run":  # names the test that runs it, which exists
                test = re.search(r"tests/\S+\.py", marker.group(2))
                assert test and (ROOT / test.group(0)).exists(), marker.group(2)


def test_the_readme_is_short_and_shows_the_docs_picture_and_the_example_it_runs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    blocks = {lang: "\n".join(lines) + "\n" for lang, _, lines in _blocks(ROOT / "README.md")}
    assert blocks["mermaid"] == (ROOT / "docs" / "flow.mmd").read_text()
    assert blocks["yaml"] == (ROOT / "examples" / "quickstart.yaml").read_text()
    for link in re.findall(r"\]\(([^)#]+)\)", readme):  # every link lands on a file
        assert (ROOT / link).exists(), link


def test_the_architecture_page_names_every_module():
    page = (ROOT / "docs" / "architecture.md").read_text()
    missing = [
        str(module.relative_to(ROOT))
        for package in ("orchestrator", "jobs", "tuning", "serve", "cluster")
        for module in sorted((ROOT / package).rglob("*.py"))
        if module.name != "__init__.py" and f"`{module.name}`" not in page
        and f"`{module.relative_to(ROOT / package)}`" not in page
    ]  # fmt: skip
    assert not missing, missing
