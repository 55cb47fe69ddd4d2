"""robench.core.registry with real importlib.metadata entry points and real dist-info folders.

Nothing in robench is mocked: fake third-party distributions are ``*.dist-info``
folders written to a temporary directory and read back with
``importlib.metadata.distributions(path=...)``; their plugin modules are real files
imported from a temporary ``sys.path`` entry.
"""
from __future__ import annotations

import importlib.metadata as md
import sys
import textwrap
import uuid
import warnings
from pathlib import Path

import pytest

import robench
from robench.api import Architecture, Attack, Dataset, Defense
from robench.api.errors import ConfigError, PluginLoadError, UnknownPluginError
from robench.core.registry import (
    KINDS,
    PluginConflictWarning,
    Registry,
    clear_cache,
    get_registry,
)

ROBENCH_LABEL = f"robench {robench.__version__}"
#: The defenses robench itself registers.
BUILTIN_DEFENSES = {"standard", "pgd-at", "trades", "mart", "uadat"}


# ----------------------------------------------------------------------------- helpers
class Site:
    """A temporary place for fake distributions (dist-info folders) and plugin modules.

    Modules go to ``modules/`` (on ``sys.path``); dist-info folders go to ``dists/``
    (NOT on ``sys.path``), so the process-wide registries never see them.
    """

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.modules = root / "modules"
        self.dists = root / "dists"
        self.modules.mkdir()
        self.dists.mkdir()
        self.module_names: list[str] = []
        monkeypatch.syspath_prepend(str(self.modules))

    def module(self, stem: str, source: str) -> str:
        """Write a module with a unique name; return that name."""
        name = f"{stem}_{uuid.uuid4().hex[:10]}"
        (self.modules / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        self.module_names.append(name)
        return name

    def dist(self, name: str, version: str, groups: dict[str, dict[str, str]]) -> list[md.EntryPoint]:
        """Write ``<name>-<version>.dist-info``; return its entry points as importlib reads them."""
        folder = self.dists / f"{name.replace('-', '_')}-{version}.dist-info"
        folder.mkdir()
        (folder / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
        )
        lines = []
        for group, eps in groups.items():
            lines.append(f"[{group}]")
            lines += [f"{ep_name} = {target}" for ep_name, target in eps.items()]
            lines.append("")
        (folder / "entry_points.txt").write_text("\n".join(lines), encoding="utf-8")
        found = [d for d in md.distributions(path=[str(self.dists)]) if d.metadata["Name"] == name]
        assert len(found) == 1, found
        eps = list(found[0].entry_points)
        assert all(ep.dist is not None for ep in eps)  # so the registry can name the distribution
        return eps

    def cleanup(self) -> None:
        for name in self.module_names:
            sys.modules.pop(name, None)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    s = Site(tmp_path, monkeypatch)
    yield s
    s.cleanup()


@pytest.fixture(autouse=True)
def _fresh_registries():
    clear_cache()
    yield
    clear_cache()


GOOD_PLUGINS = """
    from dataclasses import dataclass

    from robench.api import Attack, Defense
    from robench.api.params import param


    @dataclass(frozen=True)
    class GoodParams:
        steps: int = param(3, ge=1)


    class Good(Defense):
        Params = GoodParams


    class WrongBase(Attack):
        pass


    class Future(Defense):
        api_version = "2.0"


    class MinorNewer(Defense):
        api_version = "1.7"


    class Exploding(Defense):
        def __init__(self, params=None):
            raise RuntimeError("kaboom in init")


    def not_a_class():
        return 42
"""


def _defense_eps(eps: list[md.EntryPoint]) -> list[md.EntryPoint]:
    return [ep for ep in eps if ep.group == KINDS["defense"].group]


# -------------------------------------------------------------------------- built-ins
@pytest.mark.parametrize(
    "kind, name, base",
    [
        ("dataset", "digits", Dataset),
        ("architecture", "smallcnn", Architecture),
        ("defense", "standard", Defense),
        ("defense", "pgd-at", Defense),
        ("defense", "trades", Defense),
        ("defense", "mart", Defense),
        ("attack", "pgd", Attack),
    ],
)
def test_builtins_are_discovered_through_entry_points(kind: str, name: str, base: type) -> None:
    registry = get_registry(kind)
    assert registry is get_registry(kind)  # one registry per kind and process
    assert name in registry.names()
    entry = registry.entry(name)
    assert entry.distribution == ROBENCH_LABEL and entry.kind == kind
    assert entry.target.startswith("robench_plugins.")
    cls = registry.load(name)
    assert isinstance(cls, type) and issubclass(cls, base)
    assert cls.__module__ == entry.target.split(":")[0]
    # the wrong bases are not accepted by accident: each kind has its own base
    for other in {Dataset, Architecture, Defense, Attack} - {base}:
        assert not issubclass(cls, other)


def test_builtin_names_per_kind_exactly() -> None:
    assert BUILTIN_DEFENSES <= set(get_registry("defense").names())
    assert "pgd" in get_registry("attack").names()
    assert "pgd" not in get_registry("defense").names()  # kinds do not leak into each other
    assert "digits" not in get_registry("architecture").names()


def test_clear_cache_gives_fresh_registries() -> None:
    first = get_registry("defense")
    clear_cache()
    assert get_registry("defense") is not first


def test_unknown_kind() -> None:
    with pytest.raises(UnknownPluginError) as info:
        get_registry("nope")
    assert "'nope'" in str(info.value) and "defense" in str(info.value)
    with pytest.raises(UnknownPluginError, match="did you mean 'defense'"):
        get_registry("defence")


# ----------------------------------------------------------------------- name lookup
@pytest.mark.parametrize("spelling", ["PGD_AT", "Pgd-At", " pgd_at ", "pgd-at", "pGd_aT\t"])
def test_names_are_case_and_separator_insensitive(spelling: str) -> None:
    registry = get_registry("defense")
    assert registry.entry(spelling) is registry.entry("pgd-at")
    assert registry.load(spelling) is registry.load("pgd-at")
    assert type(registry.create(spelling)) is registry.load("pgd-at")


def test_third_party_name_is_normalised_in_names(site: Site) -> None:
    mod = site.module("normplug", GOOD_PLUGINS)
    eps = site.dist("norm-dist", "1.0", {"robench.defenses": {"My_Fancy_Defense": f"{mod}:Good"}})
    registry = Registry(KINDS["defense"], entry_points=eps)
    assert registry.names() == ["my-fancy-defense"]
    entry = registry.entry("MY-FANCY_defense")
    assert entry.name == "My_Fancy_Defense"  # the registered spelling is kept for display
    assert entry.distribution == "norm-dist 1.0"


def test_unknown_name_suggests_the_close_one() -> None:
    with pytest.raises(UnknownPluginError) as info:
        get_registry("defense").load("pgdat")
    message = str(info.value)
    assert "did you mean 'pgd-at'" in message
    assert "'pgdat'" in message and "defense" in message


def test_unknown_name_lists_known_names_when_nothing_is_close() -> None:
    with pytest.raises(UnknownPluginError) as info:
        get_registry("defense").entry("qqqqqqqqqq")
    message = str(info.value)
    assert "did you mean" not in message
    assert "known:" in message and "pgd-at" in message and "standard" in message


def test_unknown_name_with_nothing_installed() -> None:
    registry = Registry(KINDS["attack"], entry_points=[])
    assert registry.names() == []
    with pytest.raises(UnknownPluginError, match="none installed"):
        registry.create("pgd")


# ----------------------------------------------------------------------------- laziness
def test_discovery_does_not_import_and_load_does(site: Site) -> None:
    mod = site.module("lazyplug", GOOD_PLUGINS)
    eps = site.dist("lazy-dist", "1.0", {"robench.defenses": {"lazy": f"{mod}:Good"}})
    registry = Registry(KINDS["defense"], entry_points=eps)
    assert [e.name for e in registry.entries()] == ["lazy"]
    assert registry.names() == ["lazy"]
    assert registry.entry("lazy").distribution == "lazy-dist 1.0"
    assert mod not in sys.modules  # discovery read metadata only
    cls = registry.load("lazy")
    assert mod in sys.modules
    assert cls is sys.modules[mod].Good
    assert registry.load("lazy") is cls


def test_builtin_registry_discovery_is_lazy_too(site: Site) -> None:
    """get_registry's own discovery (md.entry_points) imports no plugin module either."""
    mod = site.module("lazyglobal", GOOD_PLUGINS)
    # this dist goes on sys.path so that the process-wide discovery sees it
    folder = site.modules / "lazy_global_dist-1.0.dist-info"
    folder.mkdir()
    (folder / "METADATA").write_text("Metadata-Version: 2.1\nName: lazy-global-dist\nVersion: 1.0\n")
    (folder / "entry_points.txt").write_text(f"[robench.defenses]\nlazy-global = {mod}:Good\n")
    registry = get_registry("defense")
    assert "lazy-global" in registry.names() and "pgd-at" in registry.names()
    assert registry.entry("lazy-global").distribution == "lazy-global-dist 1.0"
    assert mod not in sys.modules
    registry.create("lazy-global")
    assert mod in sys.modules


# -------------------------------------------------------------------------- broken ones
@pytest.fixture
def broken_eps(site: Site) -> tuple[list[md.EntryPoint], str]:
    good = site.module("okplug", GOOD_PLUGINS)
    failing = site.module("failplug", 'raise ImportError("boom at import")\n')
    exiting = site.module("exitplug", 'import sys\nsys.exit("plugin exits")\n')
    eps = site.dist(
        "broken-dist",
        "0.3",
        {
            "robench.defenses": {
                "bad-import": f"{failing}:Thing",
                "exits": f"{exiting}:Thing",
                "a-function": f"{good}:not_a_class",
                "wrong-base": f"{good}:WrongBase",
                "future": f"{good}:Future",
                "missing-attr": f"{good}:NoSuchThing",
                "fine": f"{good}:Good",
                "minor-newer": f"{good}:MinorNewer",
                "exploding": f"{good}:Exploding",
            }
        },
    )
    return eps, good


BROKEN_REASONS = {
    "bad-import": "ImportError: boom at import",
    "exits": "SystemExit: plugin exits",
    "a-function": "not a subclass of robench.api.Defense",
    "wrong-base": "not a subclass of robench.api.Defense",
    "future": "targets plugin API 2.0",
    "missing-attr": "AttributeError",
}


@pytest.mark.parametrize("name", sorted(BROKEN_REASONS))
def test_broken_plugin_raises_plugin_load_error_naming_it(broken_eps, name: str) -> None:
    eps, _ = broken_eps
    registry = Registry(KINDS["defense"], entry_points=eps)
    with pytest.raises(PluginLoadError) as info:
        registry.load(name)
    message = str(info.value)
    assert f"'{name}'" in message
    assert "broken-dist 0.3" in message
    assert BROKEN_REASONS[name] in message
    assert "\n" not in message  # the CLI prints it as one line
    with pytest.raises(PluginLoadError):  # a failure is not cached as a success
        registry.create(name)


def test_import_error_is_chained(broken_eps) -> None:
    eps, _ = broken_eps
    with pytest.raises(PluginLoadError) as info:
        Registry(KINDS["defense"], entry_points=eps).load("bad-import")
    assert isinstance(info.value.__cause__, ImportError)


def test_check_reports_broken_ones_and_loads_the_others(broken_eps) -> None:
    eps, good = broken_eps
    builtin = list(md.entry_points(group="robench.defenses"))
    registry = Registry(KINDS["defense"], entry_points=eps + builtin)
    statuses = {s.entry.name: s for s in registry.check()}  # must not raise
    assert set(statuses) == set(BROKEN_REASONS) | {"fine", "minor-newer", "exploding"} | BUILTIN_DEFENSES
    for name, reason in BROKEN_REASONS.items():
        status = statuses[name]
        assert status.plugin is None, name
        assert status.error is not None and reason in status.error and "broken-dist 0.3" in status.error
        assert status.shadowed_by is None
    for name in sorted({"fine", "minor-newer", "exploding"} | BUILTIN_DEFENSES):
        status = statuses[name]
        assert status.error is None, status.error
        assert isinstance(status.plugin, type) and issubclass(status.plugin, Defense)
    assert statuses["fine"].plugin is sys.modules[good].Good
    assert statuses["pgd-at"].entry.distribution == ROBENCH_LABEL
    # and the good ones are usable after the broken ones failed
    assert registry.create("fine", {"steps": 5}).params.steps == 5
    assert registry.load("pgd-at").__name__ == "PGDAT"
    assert registry.conflicts == []


def test_minor_api_version_difference_is_accepted(broken_eps) -> None:
    eps, good = broken_eps
    assert Registry(KINDS["defense"], entry_points=eps).load("minor-newer") is sys.modules[good].MinorNewer


def test_entry_point_objects_without_a_distribution(site: Site) -> None:
    """Hand-made EntryPoint objects (no .dist) work; errors still name the plugin."""
    mod = site.module("bareplug", GOOD_PLUGINS)
    eps = [
        md.EntryPoint("bare", f"{mod}:Good", "robench.defenses"),
        md.EntryPoint("bare-fn", f"{mod}:not_a_class", "robench.defenses"),
    ]
    registry = Registry(KINDS["defense"], entry_points=eps)
    assert registry.load("bare") is sys.modules[mod].Good
    with pytest.raises(PluginLoadError, match="'bare-fn'.*not a subclass"):
        registry.load("bare-fn")


# ------------------------------------------------------------------------------ create
def test_create_builds_params_and_instance(broken_eps) -> None:
    eps, good = broken_eps
    registry = Registry(KINDS["defense"], entry_points=eps)
    plugin = registry.create("fine", {"steps": "7"})
    assert isinstance(plugin, sys.modules[good].Good)
    assert plugin.params.steps == 7 and plugin.params == sys.modules[good].GoodParams(steps=7)
    assert registry.create("fine").params.steps == 3  # the declared default


def test_constructor_failure_is_a_plugin_load_error(broken_eps) -> None:
    eps, good = broken_eps
    registry = Registry(KINDS["defense"], entry_points=eps)
    with pytest.raises(PluginLoadError) as info:
        registry.create("exploding")
    message = str(info.value)
    assert "constructor" in message and "kaboom in init" in message
    assert "'exploding'" in message and "broken-dist 0.3" in message
    assert isinstance(info.value.__cause__, RuntimeError)
    assert registry.load("exploding") is sys.modules[good].Exploding  # loading itself is fine


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"steps": "many"}, "expected an integer"),
        ({"steps": 0}, "must be >= 1"),
        ({"stepz": 2}, "did you mean 'steps'"),
        ({"steps": True}, "expected an integer"),
    ],
)
def test_create_with_bad_params_is_a_config_error(broken_eps, params: dict, fragment: str) -> None:
    eps, _ = broken_eps
    registry = Registry(KINDS["defense"], entry_points=eps)
    with pytest.raises(ConfigError) as info:
        registry.create("fine", params, where="defense")
    assert fragment in str(info.value)
    assert str(info.value).startswith("defense")  # names the config section


def test_create_builtin_with_bad_param() -> None:
    with pytest.raises(ConfigError, match="defense.steps"):
        get_registry("defense").create("pgd-at", {"steps": -1})
    with pytest.raises(ConfigError, match="unknown key 'eps'"):
        get_registry("defense").create("standard", {"eps": 0.1})


# ---------------------------------------------------------------------------- conflicts
@pytest.fixture
def conflicting(site: Site):
    # alpha's module sorts AFTER zeta's, so a winner chosen by target would be zeta's
    alpha_mod = site.module("zz_alpha", GOOD_PLUGINS)
    zeta_mod = site.module("aa_zeta", GOOD_PLUGINS)
    alpha = site.dist("alpha-dist", "1.0", {"robench.defenses": {"Shared_Def": f"{alpha_mod}:Good"}})
    zeta = site.dist(
        "zeta-dist",
        "2.0",
        {"robench.defenses": {"shared-def": f"{zeta_mod}:Good", "zeta-only": f"{zeta_mod}:Good"}},
    )
    return alpha, zeta, alpha_mod, zeta_mod


def _discover_with_one_conflict(registry: Registry) -> str:
    with pytest.warns(PluginConflictWarning) as record:
        registry.entries()
    messages = [str(w.message) for w in record if issubclass(w.category, PluginConflictWarning)]
    assert len(messages) == 1, messages
    return messages[0]


@pytest.mark.parametrize("order", ["zeta-first", "alpha-first"])
def test_conflict_alphabetical_winner_regardless_of_order(conflicting, order: str) -> None:
    alpha, zeta, alpha_mod, zeta_mod = conflicting
    eps = zeta + alpha if order == "zeta-first" else alpha + zeta
    registry = Registry(KINDS["defense"], entry_points=eps)
    message = _discover_with_one_conflict(registry)
    assert "alpha-dist 1.0" in message and "zeta-dist 2.0" in message
    assert "'shared-def'" in message
    assert message.endswith("using the one from alpha-dist 1.0")
    assert registry.conflicts == [message]

    assert registry.names() == ["shared-def", "zeta-only"]
    winner = registry.entry("SHARED-def")
    assert winner.distribution == "alpha-dist 1.0"
    assert registry.load("shared_def") is sys.modules[alpha_mod].Good
    assert zeta_mod not in sys.modules  # the loser is never imported by load()

    statuses = {(s.entry.name, s.entry.distribution): s for s in registry.check()}
    assert len(statuses) == 3
    loser = statuses[("shared-def", "zeta-dist 2.0")]
    assert loser.shadowed_by is winner
    assert loser.error is None  # shadowed, not broken
    assert statuses[("Shared_Def", "alpha-dist 1.0")].shadowed_by is None
    assert statuses[("zeta-only", "zeta-dist 2.0")].shadowed_by is None
    # discovery runs once: no second warning (it would be an error under pyproject's filter)
    registry.names()
    assert len(registry.conflicts) == 1


@pytest.mark.parametrize("order", ["robench-first", "robench-last"])
def test_conflict_robench_own_distribution_wins(site: Site, order: str) -> None:
    impostor_mod = site.module("impostor", GOOD_PLUGINS)
    # "aaa-dist" sorts before "robench": only the home-distribution rule makes robench win
    impostor = _defense_eps(site.dist("aaa-dist", "9.9", {"robench.defenses": {"PGD_AT": f"{impostor_mod}:Good"}}))
    home = [ep for ep in md.distribution("robench").entry_points if ep.group == "robench.defenses"]
    assert {ep.name for ep in home} == BUILTIN_DEFENSES
    eps = home + impostor if order == "robench-first" else impostor + home
    registry = Registry(KINDS["defense"], entry_points=eps)
    message = _discover_with_one_conflict(registry)
    assert ROBENCH_LABEL in message and "aaa-dist 9.9" in message
    assert message.endswith(f"using the one from {ROBENCH_LABEL}")
    assert registry.conflicts == [message]
    winner = registry.entry("pgd-at")
    assert winner.distribution == ROBENCH_LABEL
    assert registry.load("PGD_AT").__name__ == "PGDAT"
    assert impostor_mod not in sys.modules
    shadowed = [s for s in registry.check() if s.shadowed_by is not None]
    assert len(shadowed) == 1
    assert shadowed[0].entry.distribution == "aaa-dist 9.9" and shadowed[0].shadowed_by is winner


def test_no_conflict_no_warning(conflicting) -> None:
    alpha, zeta, _, _ = conflicting
    registry = Registry(KINDS["defense"], entry_points=alpha)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert registry.names() == ["shared-def"]
    assert registry.conflicts == []
    assert all(s.shadowed_by is None for s in registry.check())


# ------------------------------------------------------------------------ variants
def test_family_variant_names_set_the_variant_param() -> None:
    registry = get_registry("architecture")
    assert registry.canonical_name("TIMM/resnet18") == "timm/resnet18"
    plugin = registry.create("timm/resnet18")
    assert plugin.params.model == "resnet18"
    assert registry.canonical_name("PreAct_ResNet_18") == "preact-resnet-18"


def test_variant_of_a_plugin_without_variants_is_unknown() -> None:
    with pytest.raises(UnknownPluginError, match="has no variants"):
        get_registry("architecture").create("smallcnn/big")
    with pytest.raises(UnknownPluginError):
        get_registry("architecture").create("nosuchfamily/x")


@pytest.mark.parametrize("spelling, steps", [("pgd-20", 20), ("PGD100", 100), ("pgd_7", 7)])
def test_count_suffix_sets_the_count_param(spelling: str, steps: int) -> None:
    registry = get_registry("attack")
    attack = registry.create(spelling)
    assert attack.params.steps == steps and attack.label() == f"PGD-{steps}"
    assert registry.canonical_name(spelling) == f"pgd-{steps}"
    assert registry.create(f"cw-{steps}").label() == f"CW-{steps}"


def test_count_suffix_needs_a_count_param_and_agreement() -> None:
    from robench.api.errors import ConfigError

    registry = get_registry("attack")
    with pytest.raises(UnknownPluginError, match="takes no count suffix"):
        registry.create("fgsm-3")
    with pytest.raises(ConfigError, match="steps=10 is given too"):
        registry.create("pgd-20", {"steps": 10})
    assert registry.create("pgd-20", {"steps": 20}).params.steps == 20
    # a registered name that ends in digits is never split
    assert get_registry("architecture").canonical_name("wrn-34-10") == "wrn-34-10"
