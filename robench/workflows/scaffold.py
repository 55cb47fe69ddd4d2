"""``robench new``: scaffold an installable third-party plugin package.

``scaffold("defense", "my-at", Path("robench-my-at"))`` writes::

    robench-my-at/
        pyproject.toml            setuptools, entry point robench.defenses: my-at
        README.md                 install, run, test, publish
        robench_my_at/__init__.py
        robench_my_at/defense.py  a working PGD-AT with a marked place for your loss
        tests/test_robench_my_at.py

The contents live in ``robench/templates/`` as whole files, one template per written
file, so each reads (and diffs) as what a plugin author gets::

    pyproject.toml.tmpl  README.md.tmpl  __init__.py.tmpl   the same for every kind
    KIND.py.tmpl                                            the plugin module, e.g. defense.py.tmpl
    test_KIND.py.tmpl                                       its tests (shared helpers repeated per kind)

They end in ``.tmpl`` so that neither Python, setuptools nor pytest takes them for
modules (they do not parse before filling). The folder is flat on purpose: setuptools
ships a data-only folder only if it is listed in ``packages`` (it warns "Package would
be ignored" otherwise), so pyproject.toml lists ``robench.templates`` with its
``*.tmpl`` package data, and a subfolder per kind would need a line each. The files are
read through :mod:`importlib.resources`, so ``robench new`` works from a wheel as well
as from a checkout or an editable install. Placeholders such as ``{{NAME}}`` are
filled in with plain ``str.replace`` (nothing is evaluated); a placeholder left
unfilled is a bug here.
"""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from robench.api.errors import UserError
from robench.core.registry import KINDS as PLUGIN_KINDS

#: lowercase letters, digits and single '-' between them, starting with a letter
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")

#: kind -> the `robench run` flag that chooses a plugin of it, in the order `robench new` lists them
_RUN_FLAGS = {"defense": "--defense", "attack": "--attack", "architecture": "--arch", "dataset": "--data",
              "logger": "--logger"}
#: kind -> (entry-point group, module file stem, `robench run` flag); the group is the
#: registry's, so a kind is described once
KINDS: dict[str, tuple[str, str, str]] = {kind: (PLUGIN_KINDS[kind].group, kind, flag) for kind, flag in _RUN_FLAGS.items()}

#: kind -> how a run changes its hyperparameters: the {{PARAMS_HINT}} sentence of README.md
PARAMS_HINT: dict[str, str] = {
    "defense": "a run changes them with `--set`, e.g. `--set defense.steps=5`.",
    "attack": "`--attack {{NAME}}-20` sets 20 steps; a config file sets any of them "
              "(`attacks: [{name: {{NAME}}, steps: 20}]`).",
    "architecture": "a run changes them with `--set`, e.g. `--set arch.width=32`.",
    "dataset": "a run changes them with `--set`, e.g. `--set data.val_size=100`.",
    "logger": "a config file sets them (`loggers: [jsonl, {name: {{NAME}}, file: x.csv}]`).",
}


def check_name(name: str) -> None:
    if not NAME_PATTERN.match(name) or len(name) > 64:
        raise UserError(
            f"invalid plugin name {name!r}: use lowercase letters, digits and '-' "
            "(starting with a letter, at most 64 characters), e.g. my-at"
        )


def package_name(name: str) -> str:
    """``my-at`` -> ``robench_my_at``."""
    return "robench_" + name.replace("-", "_")


def class_name(name: str) -> str:
    """``my-at`` -> ``MyAt``."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("-"))


def default_directory(name: str) -> Path:
    return Path(f"robench-{name}")


def template(name: str) -> str:
    """The text of ``robench/templates/NAME``, e.g. ``test_defense.py.tmpl``."""
    return resources.files("robench").joinpath("templates").joinpath(name).read_text(encoding="utf-8")


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    leftover = re.search(r"\{\{[A-Z_]+\}\}", text)
    assert leftover is None, f"unfilled placeholder {leftover.group(0)}"
    return text


def scaffold(kind: str, name: str, target: Path) -> list[Path]:
    """Write a plugin package of ``kind`` named ``name`` into ``target``; return the files.

    Refuses (:class:`UserError`) an unknown kind, an invalid name, or a ``target``
    that exists and is not an empty folder; nothing is written then.
    """
    import robench

    if kind not in KINDS:
        raise UserError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KINDS)}")
    check_name(name)
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target} already exists and is not an empty folder; pick another with --dir")
    group, module, flag = KINDS[kind]
    pkg = package_name(name)
    values = {
        "NAME": name,
        "PKG": pkg,
        "DIST": f"robench-{name}",
        "CLASS": class_name(name),
        "KIND": kind,
        "GROUP": group,
        "MODULE": module,
        "FLAG": flag,
        "API": str(robench.api_version),
        "ROBENCH_VERSION": str(robench.__version__),
    }
    values["PARAMS_HINT"] = _fill(PARAMS_HINT[kind], values)
    files = {  # written file -> its template; all are read before anything is written
        "pyproject.toml": "pyproject.toml.tmpl",
        "README.md": "README.md.tmpl",
        f"{pkg}/__init__.py": "__init__.py.tmpl",
        f"{pkg}/{module}.py": f"{module}.py.tmpl",
        f"tests/test_{pkg}.py": f"test_{module}.py.tmpl",
    }
    texts = {rel: _fill(template(source), values) for rel, source in files.items()}
    written: list[Path] = []
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {target}: {exc.strerror or exc}") from None
    for rel, text in texts.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
