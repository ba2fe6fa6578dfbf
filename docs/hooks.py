"""MkDocs hooks: the reference pages are generated from the code when the site is built.

A page holds a marker (``<!-- generated: spec -->``, ``<!-- generated: cli -->``) that is
replaced by tables made from the pydantic schema of the spec (``orchestrator.spec.
json_schema``) and from ``orch``'s argument parser, so the reference cannot drift from
the code (``tests/test_docs.py`` checks the built pages against both).
"""

from __future__ import annotations

import argparse
import json

MARKERS = {
    "<!-- generated: spec -->": lambda: spec_reference(),
    "<!-- generated: cli -->": lambda: cli_reference(),
}


def on_page_markdown(markdown: str, **kwargs) -> str:
    for marker, make in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown


# ------------------------------------------------------------------------- the spec


def spec_fields() -> list[dict]:
    """Every field of the spec, depth first: path, type, default, description."""
    from orchestrator.spec import json_schema

    schema = json_schema()
    rows: list[dict] = []
    _walk(schema, schema["$defs"], "", rows)
    return rows


def _resolve(node: dict, defs: dict) -> dict:
    if "$ref" in node:
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return {**defs[node["$ref"].split("/")[-1]], **rest}
    return node


def _object_of(node: dict, defs: dict) -> dict | None:
    """The object schema ``node`` holds (itself, or one branch of an optional)."""
    node = _resolve(node, defs)
    if "properties" in node:
        return node
    for branch in node.get("anyOf", []):
        branch = _resolve(branch, defs)
        if "properties" in branch:
            return branch
    return None


def _walk(node: dict, defs: dict, prefix: str, rows: list[dict]) -> None:
    for name, field in node.get("properties", {}).items():
        path = f"{prefix}{name}"
        resolved = _resolve(field, defs)
        rows.append({
            "path": path,
            "type": _type(field, defs),
            "default": _default(field, node, name),
            "description": resolved.get("description") or field.get("description", ""),
        })  # fmt: skip
        inner = _object_of(field, defs)
        if inner is not None:
            _walk(inner, defs, f"{path}.", rows)
            continue
        values = resolved.get("additionalProperties")
        values = _resolve(values, defs) if isinstance(values, dict) else {}
        if "properties" in values:  # a mapping of named objects (tune.space, serve.traffic)
            _walk(values, defs, f"{path}.<name>.", rows)


def _type(node: dict, defs: dict) -> str:
    node_ref = node.get("$ref")
    if node_ref:
        return "object"
    if "anyOf" in node:
        return " | ".join(dict.fromkeys(_type(b, defs) for b in node["anyOf"]))
    if "enum" in node:
        return " | ".join(json.dumps(v) for v in node["enum"])
    if "const" in node:
        return json.dumps(node["const"])
    kind = node.get("type", "any")
    if kind == "array":
        return f"list[{_type(node.get('items', {}), defs)}]"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map[str, {_type(node['additionalProperties'], defs)}]"
    return {"integer": "int", "number": "float", "boolean": "bool", "string": "str"}.get(kind, kind)


def _default(field: dict, parent: dict, name: str) -> str:
    if "default" in field:
        return f"`{json.dumps(field['default'])}`"
    return "required" if name in parent.get("required", []) else ""


def spec_reference() -> str:
    lines = []
    for section in _sections(spec_fields()):
        lines += [f"### `{section[0]['path']}`", "", section[0]["description"], ""]
        lines += ["| field | type | default | description |", "|:--|:--|:--|:--|"]
        for row in section:
            description = " ".join(row["description"].split()).replace("|", "\\|")
            kind = row["type"].replace("|", "\\|")
            lines.append(f"| `{row['path']}` | {kind} | {row['default']} | {description} |")
        lines.append("")
    return "\n".join(lines)


def _sections(rows: list[dict]) -> list[list[dict]]:
    """The rows grouped by their top-level field."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["path"].split(".")[0], []).append(row)
    return list(groups.values())


# ------------------------------------------------------------------------- the CLI


def cli_commands() -> list[tuple[str, argparse.ArgumentParser, str]]:
    """Every ``orch`` command and subcommand: (words, its parser, its one-line help)."""
    from orchestrator.cli import _parser

    found: list[tuple[str, argparse.ArgumentParser, str]] = []
    _commands(_parser(), "orch", found)
    return found


def _commands(parser: argparse.ArgumentParser, words: str, found: list) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                found.append((f"{words} {name}", sub, helps.get(name, "")))
                _commands(sub, f"{words} {name}", found)


def cli_reference() -> str:
    lines = []
    for words, parser, summary in cli_commands():
        usage = parser.format_usage().strip()
        lines += [f"### `{words}`", "", summary, "", "```text", usage, "```", ""]
        arguments = [
            a for a in parser._actions
            if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
        ]  # fmt: skip
        if arguments:
            lines += ["| argument | description |", "|:--|:--|"]
            for a in arguments:
                name = ", ".join(a.option_strings) or a.dest
                text = " ".join((a.help or "").split()).replace("|", "\\|")
                if a.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
                    text += f" (default: `{a.default}`)"
                lines.append(f"| `{name}` | {text} |")
            lines.append("")
    return "\n".join(lines)
