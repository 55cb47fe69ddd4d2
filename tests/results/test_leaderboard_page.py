"""``robench leaderboard -f html`` in a real browser: Debian's Chromium driven by
Playwright (no browser download), on the committed boards.

Skipped where Chromium or Playwright is missing (``.ci/run`` installs both)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import REPO, run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
WIDTH = 1400


@pytest.fixture(scope="module")
def page_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("page") / "boards.html"
    proc = run_cli("leaderboard", "-f", "html", "--results-dir", str(REPO / "leaderboards"), "-o", str(path))
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _open(browser, page_file: Path, javascript: bool = True):
    context = browser.new_context(viewport={"width": WIDTH, "height": 900}, java_script_enabled=javascript)
    page = context.new_page()
    page.goto(page_file.as_uri())
    return page


def _column(page, board: str, header: str) -> list[str]:
    return page.evaluate("""([board, header]) => {
        const table = document.querySelector(`section#${board} table.sortable`);
        const col = Array.from(table.tHead.rows[0].cells).findIndex(c => c.textContent.startsWith(header));
        return Array.from(table.tBodies[0].rows).map(r => r.cells[col].textContent);
    }""", [board, header])


def test_every_board_fits_the_window_with_each_number_on_one_line(browser, page_file: Path) -> None:
    page = _open(browser, page_file)
    titles = page.eval_on_selector_all("section h2", "hs => hs.map(h => h.textContent)")
    assert {"digits, Linf eps=3/16", "fashion-mnist, Linf eps=0.1", "cifar10, Linf eps=8/255"} <= set(titles)
    assert titles.index("fashion-mnist, Linf eps=0.1") < titles.index("cifar10, Linf eps=8/255")  # runs first
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
    widths = page.eval_on_selector_all("table.sortable", "ts => ts.map(t => [t.scrollWidth, t.parentElement.clientWidth])")
    assert widths and all(table <= room for table, room in widths), widths
    lines = page.eval_on_selector_all("td.num", """cells => cells.map(c => {
        const range = document.createRange(); range.selectNodeContents(c);
        return range.getClientRects().length; })""")
    assert lines and set(lines) == {1}  # "98.67 ± 0.23" never wraps


def test_a_click_on_a_header_sorts_its_column_both_ways(browser, page_file: Path) -> None:
    page = _open(browser, page_file)
    board = "board-digits-linf-3_16"
    ranks = _column(page, board, "Rank")
    assert ranks == [str(i) for i in range(1, len(ranks) + 1)] and len(ranks) == 6

    def numbers(cells: list[str]) -> list[float]:
        return [float(c.split(" ")[0]) for c in cells]

    header = page.locator(f"section#{board} table.sortable th", has_text="Clean (%)")
    header.click()
    clean = numbers(_column(page, board, "Clean (%)"))
    assert clean == sorted(clean) and clean != numbers(_column(_open(browser, page_file), board, "Clean (%)"))
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert numbers(_column(page, board, "Clean (%)")) == sorted(clean, reverse=True)
    page.locator(f"section#{board} table.sortable th", has_text="Defense").click()
    defenses = _column(page, board, "Defense")
    assert defenses == sorted(defenses) and _column(page, board, "Rank") != ranks
    page.locator(f"section#{board} table.sortable th", has_text="Train time").press("Enter")  # by keyboard too
    seconds = [float(t.split(" ")[0]) * (60 if t.endswith("min") else 1) for t in _column(page, board, "Train time")]
    assert seconds == sorted(seconds)


def test_a_board_on_two_data_settings_ranks_each_in_its_own_table(browser, page_file: Path) -> None:
    page = _open(browser, page_file)
    board = page.locator('section[id="board-fashion-mnist-linf-0.1"]')
    headings = board.locator("h3", has_text="Data: ").all_inner_texts()
    assert headings == ["Data: dataset defaults (train_subset unset)", "Data: train_subset=10000"]
    tables = board.evaluate("""section => Array.from(section.querySelectorAll("table.sortable")).map(t => {
        const col = Array.from(t.tHead.rows[0].cells).findIndex(c => c.textContent === "vs top");
        return Array.from(t.tBodies[0].rows).map(r => [r.cells[0].textContent, r.cells[col].textContent]); })""")
    assert len(tables) == 2 and all(len(rows) > 1 for rows in tables)
    for rows in tables:  # ranked from 1, one top row each
        assert [rank for rank, _ in rows] == [str(i) for i in range(1, len(rows) + 1)]
        assert [versus for _, versus in rows].count("top") == 1 and rows[0][1] == "top"


def test_without_javascript_the_tables_still_show(browser, page_file: Path) -> None:
    page = _open(browser, page_file, javascript=False)
    rows = page.locator("section#board-digits-linf-3_16 table.sortable tbody tr")
    assert rows.count() == 6 and rows.first.is_visible()
    assert page.locator("th[aria-sort]").count() == 0 and page.locator("th.sortable").count() == 0


def test_plots_reported_rows_and_run_details_are_on_the_page(browser, page_file: Path) -> None:
    page = _open(browser, page_file)
    images = page.eval_on_selector_all("section#board-digits-linf-3_16 img",
                                       "is => is.map(i => [i.src.slice(0, 22), i.naturalWidth])")
    assert len(images) == 2 and all(src == "data:image/png;base64," and width > 0 for src, width in images)
    cifar = page.locator("section#board-cifar10-linf-8_255")
    assert cifar.locator("h3", has_text="Reported (published numbers").count() == 1
    assert cifar.locator("table tbody tr").count() >= 1 and "No runs recorded yet." in cifar.inner_text()
    runs = page.locator("section#board-digits-linf-3_16 details.run")
    assert runs.count() == 30
    page.locator("section#board-digits-linf-3_16 details > summary", has_text="Runs (30)").click()
    first = runs.first
    first.locator("summary").click()
    assert first.locator("table caption", has_text="per-epoch history").is_visible()
    assert '"defense"' in first.locator("pre").inner_text()


def test_the_committed_screenshot_shows_this_page(browser, page_file: Path, tmp_path: Path) -> None:
    """docs/img/leaderboard.png is this page's first screen at 1,400 pixels (made by
    ``cd tests && PYTHONPATH=. python results/test_leaderboard_page.py``): the same size."""
    committed = REPO / "docs" / "img" / "leaderboard.png"
    assert committed.is_file()
    page = _open(browser, page_file)
    fresh = tmp_path / "now.png"
    page.screenshot(path=str(fresh))
    assert committed.read_bytes()[16:24] == fresh.read_bytes()[16:24]  # PNG width and height


if __name__ == "__main__":  # refresh the screenshot the README shows
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "boards.html"
        assert run_cli("leaderboard", "-f", "html", "--results-dir", str(REPO / "leaderboards"), "-o", str(out)).returncode == 0
        with sync_api.sync_playwright() as p:
            chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            shot = chromium.new_context(viewport={"width": WIDTH, "height": 900}).new_page()
            shot.goto(out.as_uri())
            (REPO / "docs" / "img").mkdir(exist_ok=True)
            shot.screenshot(path=str(REPO / "docs" / "img" / "leaderboard.png"))
            chromium.close()
    sys.exit(0)
