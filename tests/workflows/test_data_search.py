"""Where a run finds its dataset: --data-root, $ROBENCH_DATA, robench's cache, then the
dataset's system folders; the first that has its files wins, and a missing dataset
names every place looked at and every way to get it."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli
from dataset_files import write_idx

from robench.api.errors import DataNotFoundError
from robench.core.datasets import find_data, load_data
from robench.core.paths import DataPlace, data_places
from robench_plugins.datasets.mnist import FashionMNIST, IdxParams


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {"ROBENCH_DATA": str(tmp_path / "env"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def test_the_order_and_its_origins(tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the working folder plays no part
    cache = tmp_path / "xdg" / "robench" / "data"
    assert data_places(tmp_path / "flag", ["/sys-a"]) == [
        DataPlace(tmp_path / "flag", "--data-root"), DataPlace(tmp_path / "env", "$ROBENCH_DATA"),
        DataPlace(cache, "cache"), DataPlace(Path("/sys-a"), "system"),
    ]
    assert data_places(cache) == [DataPlace(cache, "--data-root"), DataPlace(tmp_path / "env", "$ROBENCH_DATA")]
    monkeypatch.delenv("ROBENCH_DATA")
    assert data_places() == [DataPlace(cache, "cache")]


def _fashion(system: Path) -> FashionMNIST:
    """Fashion-MNIST whose system folder is a temp folder, so that the test controls it."""
    cls = type("SystemFashion", (FashionMNIST,), {"system_folders": (str(system),)})
    return cls(IdxParams(verify_checksums=False, val_size=10))


def test_the_first_folder_with_files_wins(tmp_path: Path, env: dict[str, str]) -> None:
    dataset = _fashion(tmp_path / "system")
    write_idx(tmp_path / "system", gz=True)
    assert find_data(dataset, "fashion-mnist", tmp_path / "flag")[0] == DataPlace(tmp_path / "system", "system")
    write_idx(tmp_path / "xdg" / "robench" / "data" / "FashionMNIST" / "raw", gz=False, seed=1)
    assert find_data(dataset, "fashion-mnist", tmp_path / "flag")[0].origin == "cache"
    write_idx(tmp_path / "env", gz=True, seed=2)
    assert find_data(dataset, "fashion-mnist", tmp_path / "flag")[0].origin == "$ROBENCH_DATA"
    written = write_idx(tmp_path / "flag" / "FashionMNIST" / "raw", gz=True, seed=3)
    place, _ = find_data(dataset, "fashion-mnist", tmp_path / "flag")
    assert place == DataPlace(tmp_path / "flag", "--data-root")
    splits, used = load_data(dataset, "fashion-mnist", tmp_path / "flag")
    assert used == tmp_path / "flag" and splits.test.y.tolist() == written["test_y"].tolist()


def test_a_folder_with_part_of_the_files_is_reported_not_skipped(tmp_path: Path, env: dict[str, str]) -> None:
    dataset = _fashion(tmp_path / "system")
    write_idx(tmp_path / "system", gz=True)
    write_idx(tmp_path / "env", gz=True)
    (tmp_path / "env" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match="incomplete Fashion-MNIST data in .*env .missing train-labels"):
        load_data(dataset, "fashion-mnist")


def test_missing_data_names_every_place_and_both_ways_to_get_it(tmp_path: Path, env: dict[str, str]) -> None:
    dataset = _fashion(tmp_path / "system")
    with pytest.raises(DataNotFoundError) as info:
        load_data(dataset, "fashion-mnist", tmp_path / "flag")
    message = str(info.value)
    assert "\n" not in message
    for place in (f"{tmp_path / 'flag'} (--data-root)", f"{tmp_path / 'env'} ($ROBENCH_DATA)",
                  f"{tmp_path / 'xdg' / 'robench' / 'data'} (cache)", f"{tmp_path / 'system'} (system)"):
        assert place in message
    assert "`robench data fetch fashion-mnist`" in message and "apt-get install dataset-fashion-mnist" in message


def test_cli_missing_mnist_is_one_line_and_exit_2(tmp_path: Path, results: Path) -> None:
    env = {"ROBENCH_DATA": str(tmp_path / "env"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    for args in (["run", "--data", "mnist", "--results-dir", str(results)], ["data", "where", "mnist"]):
        proc = run_cli(*args, env=env)
        assert proc.returncode == 2, proc.stderr
        (line,) = [x for x in proc.stderr.splitlines() if x.strip()]
        assert f"looked in {tmp_path / 'env'} ($ROBENCH_DATA), {tmp_path / 'xdg' / 'robench' / 'data'} (cache)" in line
        assert "`robench data fetch mnist`" in line and "Traceback" not in proc.stderr


def test_cli_data_where_marks_the_folder_a_run_uses(tmp_path: Path) -> None:
    env = {"ROBENCH_DATA": str(tmp_path / "env"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    write_idx(tmp_path / "xdg" / "robench" / "data" / "MNIST" / "raw", gz=False)
    proc = run_cli("data", "where", "mnist", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"1. {tmp_path / 'env'} ($ROBENCH_DATA)",
                                        f"2. {tmp_path / 'xdg' / 'robench' / 'data'} (cache)  <- used"]
    proc = run_cli("data", "where", "digits", env=env)
    assert proc.returncode == 0 and "embedded" in proc.stdout


def test_cli_fetch_that_cannot_download_is_one_line(tmp_path: Path) -> None:
    """torchvision's download through a proxy that refuses every connection: one line, exit 2."""
    closed = "http://127.0.0.1:9"
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "http_proxy": closed, "https_proxy": closed,
           "HTTP_PROXY": closed, "HTTPS_PROXY": closed, "no_proxy": "", "NO_PROXY": ""}
    proc = run_cli("data", "fetch", "mnist", "--data-root", str(tmp_path / "data"), env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.strip()]
    assert line.startswith("error: mnist: download into ") and "Traceback" not in proc.stderr
