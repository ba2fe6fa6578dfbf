"""No function of ours is longer than a screen: under 80 lines from its ``def`` (or first
decorator) to its last line, docstring included, so each one can be read whole."""

from __future__ import annotations

import ast

from tests.helpers import our_modules

LIMIT = 80


def function_lengths() -> dict[str, int]:
    """``module:line name`` -> lines, for every function and method of our packages."""
    lengths = {}
    for name, path in our_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lengths[f"{name}:{node.lineno} {node.name}"] = node.end_lineno - first + 1
    return lengths


def test_every_function_is_under_80_lines():
    lengths = function_lengths()
    assert len(lengths) > 500  # the walk saw the packages
    assert {f: n for f, n in lengths.items() if n >= LIMIT} == {}
