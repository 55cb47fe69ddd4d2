"""No function in ``robench/`` is over 60 lines, so each still reads on one screen.

A function's length runs from its ``def`` line to its last line: decorators are left
out, and a nested function counts inside its parent as well as on its own.
"""
from __future__ import annotations

import ast

from conftest import REPO

MAX_LINES = 60


def function_lengths(source: str) -> list[tuple[str, int, int]]:
    """``(qualified name, line of its def, length in lines)`` of every function in ``source``."""
    found: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert child.end_lineno is not None
                found.append((f"{prefix}{child.name}", child.lineno, child.end_lineno - child.lineno + 1))
                visit(child, f"{prefix}{child.name}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def _lengths() -> list[tuple[str, str, int, int]]:
    """``(path, qualified name, def line, length)`` of every function in ``robench/``
    (a name defined twice, as ``@overload`` stubs are, appears once per definition)."""
    return [
        (path.relative_to(REPO).as_posix(), name, line, length)
        for path in sorted((REPO / "robench").rglob("*.py"))
        for name, line, length in function_lengths(path.read_text(encoding="utf-8"))
    ]


def test_the_measure_counts_from_def_to_last_line_without_decorators() -> None:
    source = (
        "import functools\n"            # 1
        "@functools.cache\n"            # 2
        "@functools.wraps(print)\n"     # 3
        "def outer(\n"                  # 4
        "    a: int,\n"                 # 5
        ") -> int:\n"                   # 6
        "    def inner() -> int:\n"     # 7
        "        return a\n"            # 8
        "    return inner()\n"          # 9
        "class K:\n"                    # 10
        "    async def method(self) -> None:\n"  # 11
        "        pass\n"                # 12
    )
    assert function_lengths(source) == [
        ("outer", 4, 6), ("outer.<locals>.inner", 7, 2), ("K.method", 11, 2),
    ]


def test_no_function_in_robench_is_over_60_lines() -> None:
    lengths = _lengths()
    assert len(lengths) > 500, len(lengths)  # the walk found the package
    too_long = [f"{path}:{line} {name}: {length} lines" for path, name, line, length in lengths if length > MAX_LINES]
    assert not too_long, f"over {MAX_LINES} lines (decorators left out): " + "; ".join(too_long)

