"""Plugin discovery and loading through Python entry points.

Discovery (reading entry-point metadata) is separate from loading (importing the
module), and loading is lazy: ``robench run --defense trades`` imports the TRADES
module and nothing else. Each load runs inside its own error handling, so a broken
third-party plugin is reported with its distribution and never stops the others.

Names are case- and ``-``/``_``-insensitive. When two distributions claim one name,
robench's own distribution wins, then the alphabetically first distribution; a
:class:`PluginConflictWarning` names both.
"""
from __future__ import annotations

import importlib.metadata as md
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, overload

from robench import api_version
from robench.api.contracts import Architecture, Attack, Dataset, Defense, Plugin
from robench.api.errors import ConfigError, PluginLoadError, UnknownPluginError, UserError
from robench.api.loggers import Logger
from robench.api.params import build_params, suggest

#: The distribution whose plugins win name conflicts.
HOME_DISTRIBUTION = "robench"


#: the contract a registry's plugins subclass
T = TypeVar("T", bound=Plugin[Any])


@dataclass(frozen=True)
class PluginKind(Generic[T]):
    """One kind of plugin, everything robench knows about it: the run configuration
    (:mod:`robench.core.config`) derives its plugin sections from these, so a kind is
    described once."""

    name: str
    #: the entry-point group its plugins register in
    group: str
    #: the contract its plugins subclass
    base: type[T]
    #: the run config's section that chooses its plugins
    section: str
    #: the section is a list of plugins (``attacks: [fgsm, pgd-20]``), not
    #: one plugin with its params (``defense: {name: trades, beta: 6}``)
    listed: bool = False


#: every plugin kind, in the order ``robench list`` shows them
KINDS: dict[str, PluginKind[Any]] = {
    k.name: k
    for k in (
        PluginKind("defense", "robench.defenses", Defense, section="defense"),
        PluginKind("architecture", "robench.architectures", Architecture, section="arch"),
        PluginKind("dataset", "robench.datasets", Dataset, section="data"),
        PluginKind("attack", "robench.attacks", Attack, section="attacks", listed=True),
        PluginKind("logger", "robench.loggers", Logger, section="loggers", listed=True),
    )
}


class PluginConflictWarning(UserWarning):
    """Two distributions register the same plugin name."""


def split_variant(name: str) -> tuple[str | None, str]:
    """``timm/resnet18`` -> (``timm``, ``resnet18``); a plain name -> (None, name)."""
    family, sep, variant = name.strip().partition("/")
    if not sep or not family or not variant:
        return None, name
    return family, variant


_COUNT = re.compile(r"^(?P<base>.*?[^-_\d])[-_]?(?P<count>\d+)$")


def split_count(name: str) -> tuple[str | None, int]:
    """``pgd-20`` -> (``pgd``, 20); a name without a numeric suffix -> (None, 0)."""
    match = _COUNT.match(name.strip())
    if match is None:
        return None, 0
    return match["base"], int(match["count"])


def normalize_name(name: str) -> str:
    """``WRN_34_10`` and ``wrn-34-10`` are the same plugin."""
    return name.strip().lower().replace("_", "-")


@dataclass(frozen=True)
class PluginEntry:
    """A discovered, not yet loaded, plugin."""

    kind: str
    name: str
    target: str
    distribution: str
    entry_point: md.EntryPoint = field(repr=False, compare=False)

    @property
    def key(self) -> str:
        return normalize_name(self.name)

    @property
    def dist_name(self) -> str:
        return self.distribution.split(" ")[0]


@dataclass(frozen=True)
class PluginStatus:
    """The outcome of loading one entry: the class, or the error as one line."""

    entry: PluginEntry
    plugin: type[Plugin[Any]] | None
    error: str | None
    shadowed_by: PluginEntry | None = None


def _distribution_label(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "<unknown distribution>"
    return f"{dist.metadata['Name'] or dist.name} {dist.version}"


def _priority(entry: PluginEntry) -> tuple[int, str, str]:
    home = normalize_name(entry.dist_name) == HOME_DISTRIBUTION
    return (0 if home else 1, entry.dist_name.lower(), entry.target)


class Registry(Generic[T]):
    """All plugins of one kind."""

    def __init__(self, kind: PluginKind[T], entry_points: Iterable[md.EntryPoint] | None = None):
        self.kind = kind
        self._entry_points = entry_points
        self._entries: list[PluginEntry] | None = None
        self._winners: dict[str, PluginEntry] = {}
        self._loaded: dict[str, type[T]] = {}
        self.conflicts: list[str] = []

    # -------------------------------------------------------------- discovery
    def entries(self) -> list[PluginEntry]:
        """Every entry point of this kind, conflicting ones included, sorted by name."""
        if self._entries is None:
            self._discover()
        assert self._entries is not None
        return self._entries

    def _discover(self) -> None:
        eps = self._entry_points
        if eps is None:
            eps = md.entry_points(group=self.kind.group)
        entries = sorted(
            (
                PluginEntry(self.kind.name, ep.name, ep.value, _distribution_label(ep), ep)
                for ep in eps
            ),
            key=lambda e: (e.key, _priority(e)),
        )
        winners: dict[str, PluginEntry] = {}
        for entry in entries:
            current = winners.get(entry.key)
            if current is None:
                winners[entry.key] = entry
                continue
            message = (
                f"{self.kind.name} '{entry.key}' is registered by both {current.distribution} "
                f"({current.target}) and {entry.distribution} ({entry.target}); "
                f"using the one from {current.distribution}"
            )
            self.conflicts.append(message)
            warnings.warn(message, PluginConflictWarning, stacklevel=2)
        self._entries = entries
        self._winners = winners

    def names(self) -> list[str]:
        self.entries()
        return sorted(self._winners)

    def entry(self, name: str) -> PluginEntry:
        self.entries()
        key = normalize_name(name)
        if key in self._winners:
            return self._winners[key]
        family, _ = split_variant(name)
        if family is not None and normalize_name(family) in self._winners:
            return self._winners[normalize_name(family)]
        base, _ = split_count(name)
        if base is not None and normalize_name(base) in self._winners:
            return self._winners[normalize_name(base)]
        known = self.names()
        hint = suggest(key, known)
        if not hint:
            hint = "; known: " + (", ".join(known) if known else "none installed")
        raise UnknownPluginError(
            f"unknown {self.kind.name} {name!r}{hint} (robench list {self.kind.name} shows all)"
        )

    # ---------------------------------------------------------------- loading
    def _load_entry(self, entry: PluginEntry) -> type[T]:
        where = f"{self.kind.name} plugin '{entry.name}' from {entry.distribution}"
        try:
            obj = entry.entry_point.load()
        except (Exception, SystemExit) as exc:  # a broken plugin must not break robench
            raise PluginLoadError(
                f"{where} failed to load ({entry.target}): {type(exc).__name__}: {exc}"
            ) from exc
        if not (isinstance(obj, type) and issubclass(obj, self.kind.base)):
            raise PluginLoadError(
                f"{where}: {entry.target} is {obj!r}, not a subclass of "
                f"robench.api.{self.kind.base.__name__}"
            )
        declared = str(getattr(obj, "api_version", "1.0"))
        if declared.split(".")[0] != api_version.split(".")[0]:
            raise PluginLoadError(
                f"{where} targets plugin API {declared}; this robench provides {api_version}"
            )
        return obj

    def load(self, name: str) -> type[T]:
        """The plugin class for ``name``; imports its module on first use."""
        entry = self.entry(name)
        if entry.key not in self._loaded:
            self._loaded[entry.key] = self._load_entry(entry)
        return self._loaded[entry.key]

    def _implied(self, name: str, cls: type[T], entry: PluginEntry) -> dict[str, Any]:
        """The parameter a ``FAMILY/VARIANT`` or ``NAME-N`` spelling sets, if any."""
        if normalize_name(name) in self._winners:
            return {}
        family, variant = split_variant(name)
        if family is not None:
            if not cls.variant_param:
                raise UnknownPluginError(
                    f"{self.kind.name} '{entry.name}' has no variants, so {name!r} is unknown"
                )
            return {cls.variant_param: variant}
        _, count = split_count(name)
        if not cls.count_param:
            raise UnknownPluginError(
                f"{self.kind.name} '{entry.name}' takes no count suffix, so {name!r} is unknown"
            )
        return {cls.count_param: count}

    def canonical_name(self, name: str) -> str:
        """The registered spelling: ``PGD_AT`` -> ``pgd-at``, ``TIMM/resnet18`` ->
        ``timm/resnet18``, ``PGD20`` -> ``pgd-20``."""
        entry = self.entry(name)
        if normalize_name(name) in self._winners:
            return entry.name
        family, variant = split_variant(name)
        if family is not None:
            return f"{entry.name}/{variant}"
        return f"{entry.name}-{split_count(name)[1]}"

    def create(self, name: str, params: Mapping[str, Any] | None = None, where: str = "") -> T:
        """Load ``name``, build its Params from ``params`` and instantiate it.

        ``FAMILY/VARIANT`` names set the family plugin's ``variant_param``; ``NAME-N``
        names set its ``count_param`` (an explicit value in ``params`` must agree).
        """
        cls = self.load(name)
        entry = self.entry(name)
        section = where or self.kind.name
        values = dict(params or {})
        for key, value in self._implied(name, cls, entry).items():
            if key in values and values[key] != value:
                raise ConfigError(
                    f"{section}: {name!r} sets {key}={value}, but {key}={values[key]!r} is given too"
                )
            values[key] = value
        built = build_params(cls.Params, values, section)
        try:
            return cls(built)
        except UserError:  # the plugin checked its own params: already one clear line
            raise
        except (Exception, SystemExit) as exc:
            raise PluginLoadError(
                f"{self.kind.name} plugin '{entry.name}' from {entry.distribution} failed in its "
                f"constructor: {type(exc).__name__}: {exc}"
            ) from exc

    def check(self) -> list[PluginStatus]:
        """Load every entry (for ``robench list``), each in its own error handling."""
        out = []
        for entry in self.entries():
            winner = self._winners[entry.key]
            try:
                plugin = self._load_entry(entry)
                error = None
            except PluginLoadError as exc:
                plugin, error = None, str(exc)
            out.append(PluginStatus(entry, plugin, error, None if winner is entry else winner))
        return out


_REGISTRIES: dict[str, Registry[Any]] = {}


def plugin_origin(plugin: Plugin[Any] | type[Plugin[Any]]) -> str:
    """``defense plugin 'trades' from robench 0.1.0``: who to blame for a plugin object.

    A broken plugin often shows only when the engine uses it (a loss of the wrong type,
    an attack's output of the wrong shape), far from the registry that loaded it; this
    names the plugin and its distribution there too. A class that no registry loaded
    (built directly, in tests or notebooks) is named by its import path.
    """
    cls = plugin if isinstance(plugin, type) else type(plugin)
    for registry in _REGISTRIES.values():
        for key, loaded in registry._loaded.items():
            if loaded is cls:
                entry = registry._winners[key]
                return f"{registry.kind.name} plugin '{entry.name}' from {entry.distribution}"
    kind = next((k.name for k in KINDS.values() if issubclass(cls, k.base)), "plugin")
    return f"{kind} plugin {cls.__module__}:{cls.__qualname__}"


@overload
def get_registry(kind: Literal["defense"]) -> Registry[Defense[Any]]: ...
@overload
def get_registry(kind: Literal["architecture"]) -> Registry[Architecture[Any]]: ...
@overload
def get_registry(kind: Literal["dataset"]) -> Registry[Dataset[Any]]: ...
@overload
def get_registry(kind: Literal["attack"]) -> Registry[Attack[Any]]: ...
@overload
def get_registry(kind: Literal["logger"]) -> Registry[Logger[Any]]: ...
@overload
def get_registry(kind: str) -> Registry[Any]: ...
def get_registry(kind: str) -> Registry[Any]:
    """The process-wide registry of one kind ('defense', 'architecture', 'dataset', 'attack', 'logger')."""
    if kind not in KINDS:
        raise UnknownPluginError(
            f"unknown plugin kind {kind!r}{suggest(kind, KINDS)}; kinds: {', '.join(KINDS)}"
        )
    if kind not in _REGISTRIES:
        _REGISTRIES[kind] = Registry(KINDS[kind])
    return _REGISTRIES[kind]


def clear_cache() -> None:
    """Forget discovered plugins (after installing one at run time, and in tests)."""
    _REGISTRIES.clear()
