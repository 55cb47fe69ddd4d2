"""A dataset plugin's files: found along the data search order, fetched only on request,
loaded and checked.

The search order (:func:`robench.core.paths.data_places`) is shared by ``robench run``,
``robench eval`` and ``robench data``, so all three find the same copy; a missing dataset
names every folder looked at and the ways to get it, instead of a plugin's traceback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from robench.api.contracts import Dataset, DataSplits, TensorSplit
from robench.api.errors import DataNotFoundError, PluginLoadError
from robench.api.io import ensure_writable
from robench.core.paths import DataPlace, data_places
from robench.core.registry import plugin_origin

#: Train/val/test splits drawn by a dataset plugin use this seed, so that every run,
#: whatever its own seed, is evaluated on the same held-out images.
DATA_SPLIT_SEED = 0


def _check_splits(splits: Any, dataset: Dataset[Any], name: str) -> DataSplits:
    """A plugin's splits are what the engine expects; if not, the plugin is to blame (exit 2)."""
    if not isinstance(splits, DataSplits):
        raise PluginLoadError(f"{plugin_origin(dataset)}: load() returned {type(splits).__name__}, not robench.api.DataSplits")
    for split_name in ("train", "test", "val"):
        split = getattr(splits, split_name)
        if split is None and split_name == "val":
            continue
        if not isinstance(split, TensorSplit):
            raise PluginLoadError(
                f"{plugin_origin(dataset)}: its {split_name} split is {type(split).__name__}, not robench.api.TensorSplit"
            )
        if tuple(split.x.shape[1:]) != tuple(dataset.input_shape) or len(split) != split.x.shape[0]:
            raise PluginLoadError(
                f"{plugin_origin(dataset)}: its {split_name} split has images of shape {tuple(split.x.shape)} "
                f"and {len(split)} labels, expected (N, {', '.join(map(str, dataset.input_shape))}) and N labels"
            )
    return splits


def fetch_data(dataset: Dataset[Any], name: str, root: Path) -> None:
    """Download ``dataset`` into ``root`` (only ever on the user's request)."""
    ensure_writable(root)
    try:
        dataset.fetch(root)
    except DataNotFoundError:
        raise
    except Exception as exc:  # network and archive errors: one line, not a traceback
        raise DataNotFoundError(f"{name}: download into {root} failed: {type(exc).__name__}: {exc}") from exc


def find_data(dataset: Dataset[Any], name: str, explicit: str | Path | None) -> tuple[DataPlace | None, list[DataPlace]]:
    """The first folder of the search order that holds ``dataset``'s files, and the whole order."""
    places = data_places(explicit, tuple(getattr(dataset, "system_folders", ()) or ()))
    for place in places:
        try:
            found = dataset.has_files(place.path)
        except Exception as exc:  # a plugin's own bug must not look like missing data
            raise PluginLoadError(
                f"{plugin_origin(dataset)}: has_files({place.path}) raised {type(exc).__name__}: {exc}"
            ) from exc
        if found:
            return place, places
    return None, places


def _ways_to_get(dataset: Dataset[Any], name: str) -> str:
    """The commands (and the plugin's own hint) that get a missing dataset, for its error message."""
    hint = str(getattr(dataset, "install_hint", "") or "")
    return f"get it with `robench data fetch {name}`" + (f" or {hint}" if hint else "") + " (or `robench run --download ...`)"


def load_data(
    dataset: Dataset[Any], name: str, explicit: str | Path | None = None, *, download: bool = False
) -> tuple[DataSplits, Path | None]:
    """The dataset's splits and the folder they were read from (None for embedded data).

    The folder is the first of :func:`robench.core.paths.data_places` that has the files; a
    missing dataset names every folder looked at and the ways to get it.
    """
    if not getattr(dataset, "needs_files", True):
        return _check_splits(dataset.load(data_places(explicit)[0].path, DATA_SPLIT_SEED), dataset, name), None
    place, places = find_data(dataset, name, explicit)
    root = places[0].path if place is None else place.path
    if place is None and not download:
        looked = ", ".join(map(str, places))
        raise DataNotFoundError(f"{name}: not found; looked in {looked}; {_ways_to_get(dataset, name)}")
    if place is None:
        fetch_data(dataset, name, root)
    try:
        splits = dataset.load(root, DATA_SPLIT_SEED)
    except DataNotFoundError as exc:
        if not download or place is None:
            raise DataNotFoundError(f"{name}: {exc}; {_ways_to_get(dataset, name)}") from None
        fetch_data(dataset, name, root)  # a damaged copy, and the user asked for a download
        splits = dataset.load(root, DATA_SPLIT_SEED)
    return _check_splits(splits, dataset, name), root
