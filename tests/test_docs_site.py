"""The documentation stays a user's documentation: it builds, and every module it names exists.

* ``mkdocs build --strict`` passes (broken links between pages, links to files outside
  ``docs/`` and pages missing from the nav all fail it);
* no page cites issue numbers, development notes or files outside the repository;
* every ``robench/...`` or ``robench_plugins/...`` path and every dotted
  ``robench.x.y`` name in the pages exists in this checkout, so a page cannot keep
  naming a module after it moved.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
PAGES = sorted(DOCS.rglob("*.md"))  # the user pages and docs/measurements/

#: entry-point groups, not modules
GROUPS = {"robench.defenses", "robench.attacks", "robench.datasets", "robench.architectures",
          "robench.presets", "robench.loggers"}


def _name(page: Path) -> str:
    """A page's path under docs/ without ``.md``, as the nav and the built site name it."""
    return page.relative_to(DOCS).with_suffix("").as_posix()


def test_there_are_pages() -> None:
    assert len(PAGES) >= 10, PAGES
    assert (DOCS / "measurements" / "index.md") in PAGES


# ------------------------------------------------------------------ the site builds
def test_mkdocs_build_strict_passes(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
         "--site-dir", str(site)],
        capture_output=True, text=True, cwd=str(tmp_path), timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (site / "index.html").is_file()
    built = {p.relative_to(site).with_suffix("").as_posix() for p in site.rglob("*.html")}
    missing = [_name(p) for p in PAGES if _name(p) not in built]
    assert not missing, f"pages not built: {missing}"


def test_every_page_is_in_the_nav() -> None:
    config = (REPO / "mkdocs.yml").read_text()
    missing = [f"{_name(p)}.md" for p in PAGES if not re.search(rf":\s*{re.escape(_name(p))}\.md\s*$", config, re.M)]
    assert not missing, f"not in mkdocs.yml's nav: {missing}"


# ------------------------------------------------------- nothing but user documentation
FORBIDDEN = [
    (re.compile(r"\bissues?\s*#?\d+", re.I), "an issue number"),
    (re.compile(r"(?<![\w&/])#\d+\b"), "a #N reference"),
    (re.compile(r"REFERENCE\.md"), "REFERENCE.md"),
    (re.compile(r"(?<![\w.-])shared/"), "the shared/ folder"),
    (re.compile(r"\bsessions?\b", re.I), "a session"),
    (re.compile(r"/work/"), "a path outside the repository"),
]


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_page_cites_nothing_outside_the_repository(page: Path) -> None:
    text = page.read_text()
    found = [f"{what}: {m.group(0)!r} (line {text.count(chr(10), 0, m.start()) + 1})"
             for pattern, what in FORBIDDEN for m in pattern.finditer(text)]
    assert not found, found


#: pages a user reads: what a thing is, how to use it, what it measures now
USER_PAGES = [p for p in PAGES if p.parent == DOCS] + [REPO / "README.md"]
#: a word of hex digits with a letter among them: a commit hash, if git knows it as one
HEX = re.compile(r"(?<![\w-])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}(?![\w-])")


def _commits(text: str) -> list[str]:
    return sorted(token for token in set(HEX.findall(text)) if subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{token}^{{commit}}"],
        capture_output=True).returncode == 0)


def test_user_pages_name_no_commit() -> None:
    """Which code measured what, and the runs before, belong to docs/measurements/."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    found = {page.name: commits for page in USER_PAGES if (commits := _commits(page.read_text()))}
    assert not found, found
    assert _commits((DOCS / "measurements" / "uadat.md").read_text()), "the check finds commits where they are"


# ------------------------------------------------------------- named modules exist
#: a file (``robench/api/perturb.py``) or a folder (``robench/engine/``); not prose like "robench/direct"
PATH = re.compile(r"(?<![\w./<>-])(robench(?:_plugins)?/(?:(?:[\w.-]+/)*[\w-]+\.\w+|(?:[\w.-]+/)+))")
DOTTED = re.compile(r"(?<![\w./-])(robench(?:_plugins)?(?:\.[A-Za-z_]\w*)+)")


def _module_file(name: str) -> Path | None:
    """The file of a dotted module or package name in this checkout, or None."""
    base = REPO.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


@cache
def _defined_names(module: Path) -> frozenset[str]:
    """Top-level names a module defines or imports (what ``module.NAME`` can refer to)."""
    names: set[str] = set()
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return frozenset(names)


def _dotted_problem(name: str) -> str | None:
    """Why ``name`` (a module, or a module's attribute) does not resolve; None if it does."""
    if name in GROUPS:
        return None
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        module = _module_file(".".join(parts[:cut]))
        if module is not None:
            break
    else:
        return "no such module"
    if cut == len(parts):
        return None
    attribute = parts[cut]
    if attribute in _defined_names(module):
        return None
    return f"{'.'.join(parts[:cut])} has no module or top-level name {attribute!r}"


def _named(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    return [(_name(page), m.group(1)) for page in PAGES for m in pattern.finditer(page.read_text())]


def test_the_pages_name_paths_and_modules() -> None:
    assert len(_named(PATH)) >= 20 and len(_named(DOTTED)) >= 20


def test_every_robench_path_in_the_docs_exists() -> None:
    missing = sorted({f"{page}: {path}" for page, path in _named(PATH) if not (REPO / path).exists()})
    assert not missing, missing


def test_every_dotted_robench_name_in_the_docs_resolves() -> None:
    problems = sorted({f"{page}: {name}: {why}" for page, name in _named(DOTTED)
                       if (why := _dotted_problem(name)) is not None})
    assert not problems, problems


def test_the_resolver_catches_the_old_flat_layout() -> None:
    """The check itself: old flat names fail, current names and their attributes pass."""
    for old in ("robench.registry", "robench.perturb.project", "robench.run", "robench.engine.evaluate"):
        assert _dotted_problem(old) is not None, old
    for new in ("robench.core.registry", "robench.api.perturb.project", "robench.api.Defense",
                "robench.api_version", "robench.evaluation.contract.TOLERANCE", "robench.defenses"):
        assert _dotted_problem(new) is None, new
    assert not (REPO / "robench/run.py").exists() and (REPO / "robench/workflows/run.py").exists()
