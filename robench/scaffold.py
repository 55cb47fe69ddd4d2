"""``robench new``: scaffold an installable third-party plugin package.

``scaffold("defense", "my-at", Path("robench-my-at"))`` writes::

    robench-my-at/
        pyproject.toml            setuptools, entry point robench.defenses: my-at
        README.md                 install, run, test, publish
        robench_my_at/__init__.py
        robench_my_at/defense.py  a working PGD-AT with a marked place for your loss
        tests/test_robench_my_at.py

The templates are the string constants below; placeholders such as ``{{NAME}}`` are
filled in with plain ``str.replace`` (nothing is evaluated).
"""
from __future__ import annotations

import re
from pathlib import Path

from robench.errors import UserError

#: lowercase letters, digits and single '-' between them, starting with a letter
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")

#: kind -> (entry-point group, module file stem, `robench run` flag)
KINDS: dict[str, tuple[str, str, str]] = {
    "defense": ("robench.defenses", "defense", "--defense"),
    "attack": ("robench.attacks", "attack", "--attack"),
    "architecture": ("robench.architectures", "architecture", "--arch"),
    "dataset": ("robench.datasets", "dataset", "--data"),
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
        "PARAMS_HINT": _PARAMS_HINT[kind].replace("NAME", name),
    }
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{pkg}/__init__.py": INIT,
        f"{pkg}/{module}.py": MODULES[kind],
        f"tests/test_{pkg}.py": TESTS[kind],
    }
    written: list[Path] = []
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {target}: {exc.strerror or exc}") from None
    for rel, template in files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_fill(template, values), encoding="utf-8")
        written.append(path)
    return written


# ------------------------------------------------------------------------ templates
PYPROJECT = '''\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "{{DIST}}"
version = "0.1.0"
description = "The {{NAME}} {{KIND}} plugin for robench."
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["robench>={{ROBENCH_VERSION}}"]

[project.optional-dependencies]
test = ["pytest>=8.0"]

# robench finds the plugin through this entry point: NAME = "module:Class"
[project.entry-points."{{GROUP}}"]
{{NAME}} = "{{PKG}}.{{MODULE}}:{{CLASS}}"

[tool.setuptools]
packages = ["{{PKG}}"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

INIT = '''\
"""The {{NAME}} {{KIND}} plugin for robench (entry point group {{GROUP}})."""
from {{PKG}}.{{MODULE}} import {{CLASS}}

__all__ = ["{{CLASS}}"]
__version__ = "0.1.0"
'''

README = '''\
# {{DIST}}

The `{{NAME}}` {{KIND}} plugin for [robench](https://pypi.org/project/robench/).
robench finds it through the `{{GROUP}}` entry point declared in `pyproject.toml`;
the code is in `{{PKG}}/{{MODULE}}.py`.

## Install

```bash
pip install -e .            # editable: your edits take effect without reinstalling
robench list {{KIND}}       # {{NAME}} shows up with status "ok"
```

## Run

```bash
robench run {{FLAG}} {{NAME}}
robench run {{FLAG}} {{NAME}} --epochs 1 --attack fgsm   # a quick smoke run
```

Hyperparameters are the fields of the `Params` dataclass (defaults are the official
values); {{PARAMS_HINT}}

## Test

```bash
pip install -e ".[test]"
pytest
```

## Publish

Bump `version` in `pyproject.toml`, then:

```bash
python -m pip install build twine
python -m build             # dist/*.whl and dist/*.tar.gz
twine upload dist/*         # users then run: pip install {{DIST}}
```

Written for robench plugin API {{API}} (the `api_version` attribute of the class).
'''

_PARAMS_HINT = {  # how a run changes the hyperparameters (README)
    "defense": "a run changes them with `--set`, e.g. `--set defense.steps=5`.",
    "attack": "`--attack NAME-20` sets 20 steps; a config file sets any of them "
              "(`attacks: [{name: NAME, steps: 20}]`).",
    "architecture": "a run changes them with `--set`, e.g. `--set arch.width=32`.",
    "dataset": "a run changes them with `--set`, e.g. `--set data.val_size=100`.",
}

DEFENSE = '''\
"""{{CLASS}}: PGD adversarial training (Madry et al., 2018), ready to be changed.

The inner maximisation (`adversary`) finds PGD adversaries with BN in eval mode and
frozen weights; the outer loss (`objective`) is what the optimizer minimises. Change
the outer loss at the marked place below; add hyperparameters to the Params dataclass.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from robench.api import Defense, LossOutput
from robench.params import param
from robench.perturb import attack_mode, cross_entropy_loss, default_step_size, pgd, random_start
from robench.threat import ThreatModel


@dataclass(frozen=True)
class {{CLASS}}Params:
    steps: int = param(10, ge=1, help="attack steps per training batch")
    step_size: float | None = param(None, gt=0, help="null: 2.5 * eps / steps")
    random_start: bool = param(True, help="start from a uniform draw in the eps-ball")
    clean_weight: float = param(0.0, ge=0, le=1, help="share of clean cross-entropy in the loss")


class {{CLASS}}(Defense):
    Params = {{CLASS}}Params
    api_version = "{{API}}"

    def adversary(self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel) -> Tensor:
        """The inner maximisation: PGD on the cross-entropy, inside `threat` and [0, 1]."""
        p: {{CLASS}}Params = self.params  # type: ignore[assignment]
        step = p.step_size or default_step_size(threat.value, p.steps)
        with attack_mode(model):  # eval-mode BN, frozen weights; restored on exit
            start = random_start(x, threat) if p.random_start else x
            return pgd(model, x, threat, cross_entropy_loss(y), steps=p.steps, step_size=step, start=start)

    def objective(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> LossOutput:
        """The outer loss given the adversaries; the model is in train mode."""
        p: {{CLASS}}Params = self.params  # type: ignore[assignment]
        logits = model(x_adv)
        # --- your loss here ---
        loss = F.cross_entropy(logits, y)
        if p.clean_weight > 0:
            loss = (1 - p.clean_weight) * loss + p.clean_weight * F.cross_entropy(model(x), y)
        # --- end of your loss ---
        # logits: whose accuracy robench reports as training accuracy
        return LossOutput(loss, logits)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel) -> LossOutput:
        return self.objective(model, x, self.adversary(model, x, y, threat), y)
'''

ATTACK = '''\
"""{{CLASS}}: an L-inf/L2 PGD attack on the cross-entropy, ready to be changed.

robench calls `perturb` with the model in any mode; `attack_mode` puts it in eval
mode with frozen weights. Adversarial inputs must stay inside `threat` and [0, 1]
(`robench.perturb.pgd` projects onto both).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robench.api import Attack
from robench.params import param
from robench.perturb import attack_mode, cross_entropy_loss, default_step_size, pgd, random_start
from robench.threat import ThreatModel


@dataclass(frozen=True)
class {{CLASS}}Params:
    steps: int = param(10, ge=1, help="gradient steps")
    step_size: float | None = param(None, gt=0, help="null: 2.5 * eps / steps")
    random_start: bool = param(True, help="start from a uniform draw in the eps-ball")


class {{CLASS}}(Attack):
    Params = {{CLASS}}Params
    api_version = "{{API}}"
    count_param = "steps"  # `{{NAME}}-20`: 20 steps

    def label(self) -> str:
        p: {{CLASS}}Params = self.params  # type: ignore[assignment]
        return f"{{CLASS}}-{p.steps}"

    def perturb(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        p: {{CLASS}}Params = self.params  # type: ignore[assignment]
        step = p.step_size or default_step_size(threat.value, p.steps)
        # --- your attack here: the loss to maximise, the start, the steps ---
        loss = cross_entropy_loss(y)
        with attack_mode(model):
            start = random_start(x, threat, generator) if p.random_start else x
            return pgd(model, x, threat, loss, steps=p.steps, step_size=step, start=start)
'''

ARCHITECTURE = '''\
"""{{CLASS}}: a small CNN for inputs of 8x8 and up, ready to be changed.

`build` returns a classifier of *normalised* inputs (robench adds the dataset's
normalisation in front). `feature_layers` names submodules whose outputs robench's
feature analyses read (robench.features).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from robench.api import Architecture
from robench.params import param


@dataclass(frozen=True)
class {{CLASS}}Params:
    width: int = param(16, ge=1, help="channels of the first conv layer (doubled once)")
    hidden: int = param(64, ge=1, help="units of the hidden fully connected layer")


class {{CLASS}}(Architecture):
    Params = {{CLASS}}Params
    api_version = "{{API}}"

    def build(self, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
        p: {{CLASS}}Params = self.params  # type: ignore[assignment]
        c, w = input_shape[0], p.width
        # --- your network here ---
        net = nn.Sequential(
            nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * w, p.hidden), nn.ReLU(inplace=True),
            nn.Linear(p.hidden, num_classes),
        )
        net.feature_layers = ("2", "5")  # outputs of the two conv blocks
        return net
'''

DATASET = '''\
"""{{CLASS}}: a tiny labelled image dataset, ready to be replaced by your own files.

As written it serves scikit-learn's 8x8 handwritten digits (no download). Put your
own loading at the marked place in `load`, and set the class attributes to match.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robench.api import DataSplits, Dataset, TensorSplit
from robench.errors import DataNotFoundError
from robench.params import param
from robench.threat import ThreatModel


@dataclass(frozen=True)
class {{CLASS}}Params:
    test_fraction: float = param(0.2, gt=0, lt=1, help="share of images held out for testing")
    val_size: int = param(180, ge=0, help="images held out from training for checkpoint selection")


class {{CLASS}}(Dataset):
    Params = {{CLASS}}Params
    api_version = "{{API}}"
    num_classes = 10
    input_shape = (1, 8, 8)  # (C, H, W)
    mean = (0.3053,)  # per channel, of images scaled to [0, 1]
    std = (0.3760,)
    threat_model = ThreatModel("Linf", "3/16")  # the budget results on this dataset use

    def load(self, root: Path, seed: int) -> DataSplits:
        # --- load your own files here ---
        # e.g.  path = root / "{{NAME}}.npz"
        #       if not path.is_file():
        #           raise DataNotFoundError(f"{{NAME}}: expected {path} with arrays x and y")
        #       arrays = np.load(path); x, y = arrays["x"], arrays["y"]
        # x: float32 in [0, 1] (or uint8 0..255) of shape (N, C, H, W); y: int64 class ids.
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
        y = bunch.target.astype(np.int64)
        # --- end of your loading ---
        if x.shape[1:] != self.input_shape:
            raise DataNotFoundError(f"{{NAME}}: images have shape {x.shape[1:]}, expected {self.input_shape}")
        p: {{CLASS}}Params = self.params  # type: ignore[assignment]
        order = np.random.default_rng(seed).permutation(len(y))  # a seeded split
        n_test = int(round(p.test_fraction * len(y)))
        test, rest = order[:n_test], order[n_test:]
        val, train = rest[: p.val_size], rest[p.val_size :]

        def split(idx: np.ndarray) -> TensorSplit:
            return TensorSplit(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))

        return DataSplits(train=split(train), test=split(test), val=split(val) if p.val_size else None)
'''

MODULES = {"defense": DEFENSE, "attack": ATTACK, "architecture": ARCHITECTURE, "dataset": DATASET}

_TEST_HEAD = '''\
"""Tests of the {{NAME}} {{KIND}} through robench's registry (run: pytest)."""
from __future__ import annotations

import math

import torch

from robench.registry import clear_cache, get_registry


def make(params=None):
    clear_cache()  # see plugins installed since the registry was first read
    return get_registry("{{KIND}}").create("{{NAME}}", params or {})


def digits_batch(n: int = 16):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def small_model():
    return get_registry("architecture").create("smallcnn", {"width": 4, "hidden": 16}).build(10, (1, 8, 8))


def threat():
    return get_registry("dataset").create("digits", {}).threat_model
'''

TEST_DEFENSE = _TEST_HEAD + '''

def test_registered_with_defaults():
    from {{PKG}} import {{CLASS}}

    defense = make()
    assert isinstance(defense, {{CLASS}})
    assert make({"steps": 3}).params.steps == 3


def test_training_step():
    torch.manual_seed(0)
    model, (x, y) = small_model(), digits_batch()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = make({"steps": 2}).loss(model, x, y, threat())
    assert out.logits.shape == (len(y), 10)
    assert math.isfinite(out.loss.item())
    assert model.training, "a defense must leave the model in train mode"
    opt.zero_grad()
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()


def test_adversaries_stay_in_the_threat_model():
    model, (x, y) = small_model(), digits_batch()
    t = threat()
    x_adv = make({"steps": 2}).adversary(model, x, y, t)
    assert (x_adv - x).abs().max() <= t.value + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
'''

TEST_ATTACK = _TEST_HEAD + '''

def test_registered_with_defaults():
    from {{PKG}} import {{CLASS}}

    assert isinstance(make(), {{CLASS}})
    assert make({"steps": 3}).label().endswith("3")


def test_perturb_stays_in_the_threat_model_and_is_seeded():
    model, (x, y) = small_model(), digits_batch()
    model.eval()
    t, attack = threat(), make({"steps": 3})
    x_adv = attack.perturb(model, x, y, t, generator=torch.Generator().manual_seed(1))
    again = attack.perturb(model, x, y, t, generator=torch.Generator().manual_seed(1))
    assert x_adv.shape == x.shape
    assert (x_adv - x).abs().max() <= t.value + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.equal(x_adv, again)
    assert attack.still_correct(model, x, y, t).shape == y.shape
'''

TEST_ARCHITECTURE = _TEST_HEAD + '''

def test_builds_for_several_shapes():
    arch = make()
    for shape, classes in (((1, 8, 8), 10), ((3, 32, 32), 100)):
        net = arch.build(classes, shape)
        net.eval()
        assert net(torch.rand(2, *shape)).shape == (2, classes)
        modules = dict(net.named_modules())
        assert all(name in modules for name in net.feature_layers)


def test_trains():
    net, (x, y) = make().build(10, (1, 8, 8)), digits_batch()
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    assert math.isfinite(loss.item())
'''

TEST_DATASET = _TEST_HEAD + '''

def test_loads_consistent_splits(tmp_path):
    data = make()
    splits = data.load(tmp_path, seed=0)
    assert len(data.mean) == len(data.std) == data.input_shape[0]
    assert data.threat_model.value > 0
    for split in (splits.train, splits.test, splits.val):
        assert split is not None and len(split) > 0
        assert tuple(split.x.shape[1:]) == tuple(data.input_shape)
        images = split.images()
        assert images.min() >= 0 and images.max() <= 1
        assert 0 <= int(split.y.min()) and int(split.y.max()) < data.num_classes


def test_split_is_seeded(tmp_path):
    a, b = make().load(tmp_path, seed=0), make().load(tmp_path, seed=0)
    assert torch.equal(a.test.y, b.test.y)
'''

TESTS = {
    "defense": TEST_DEFENSE,
    "attack": TEST_ATTACK,
    "architecture": TEST_ARCHITECTURE,
    "dataset": TEST_DATASET,
}
