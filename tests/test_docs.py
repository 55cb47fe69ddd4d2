"""The README's promises stay true: its two commands, and figures from real records."""
from __future__ import annotations

import pathlib
import re
import subprocess

from conftest import REPO

from robench.results.leaderboard import render_markdown
from robench.results.records import load_records


def _first_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README has no command block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_readme_first_screen_has_the_two_commands() -> None:
    install_run, install_test = _first_commands()
    assert install_run.endswith("robench run") and "pip install -e ." in install_run
    assert install_test in (REPO / ".ci" / "run").read_text()  # CI runs exactly that


def _committed_records() -> list:
    """Records tracked by git: a user's own `robench run` adds records the README never saw."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "leaderboards/records"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    records, skipped = load_records(REPO / "leaderboards" / "records")
    assert not skipped
    tracked = {pathlib.PurePosixPath(name).stem for name in listed}
    return [r for r in records if r.run_id in tracked]


def test_readme_figures_come_from_the_committed_records() -> None:
    records = _committed_records()
    assert len(records) >= 6
    board = render_markdown(records, "digits, Linf eps=3/16", "records/digits/linf-3_16")
    figures = re.findall(r"\d+\.\d\d ± \d+\.\d\d", (REPO / "README.md").read_text())
    assert len(figures) >= 4
    for figure in figures:
        assert figure in board, figure
