"""The built-in architectures and the timm family, through the registry as the engine uses them.

Big networks are built once per module (WRN-34-20 has about 184 M parameters) and run
under ``torch.no_grad`` in eval mode, on batches of two.
"""
from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict

import pytest
import timm
import torch
from torch import nn

from robench.api.errors import ConfigError
from robench.api.model import NormalizedClassifier, count_parameters
from robench.core.registry import get_registry

BUILTINS = ["smallcnn", "wrn-34-10", "wrn-28-10", "wrn-34-20", "preact-resnet-18", "resnet-18"]

#: /work/shared/REFERENCE.md section 4 (10 classes).
REFERENCE_PARAMS = {
    "wrn-34-10": 46.16e6,
    "wrn-28-10": 36.48e6,
    "preact-resnet-18": 11.17e6,
    "resnet-18": 11.17e6,
}

TIMM_NAMES = {
    "wrn-34-10": "wrn_34_10",
    "wrn-28-10": "wrn_28_10",
    "wrn-34-20": "wrn_34_20",
    "preact-resnet-18": "preact_resnet_18",
    "resnet-18": "resnet_18",
}


def _arch(name: str, params: dict | None = None):
    return get_registry("architecture").create(name, params)


@pytest.fixture(scope="module")
def nets():
    """Built lazily, once: ``nets(name)`` is the eval-mode network for 10 classes, (3, 32, 32)."""
    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = _arch(name).build(10, (3, 32, 32)).eval()
        return cache[name]

    yield get
    cache.clear()


def test_all_builtins_are_registered() -> None:
    assert set(BUILTINS) | {"timm"} <= set(get_registry("architecture").names())


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_parameter_counts_match_the_reference(nets, name: str) -> None:
    count = count_parameters(nets(name))
    assert abs(count / REFERENCE_PARAMS[name] - 1) < 0.005, f"{name}: {count:,} parameters"
    # and equal at the reference's printed precision (10 k parameters)
    assert round(count / 1e6, 2) == REFERENCE_PARAMS[name] / 1e6, f"{name}: {count:,} parameters"


def test_wrn_34_20_is_the_double_width_wrn_34(nets) -> None:
    # conv weights scale with width squared: about 4x WRN-34-10.
    count = count_parameters(nets("wrn-34-20"))
    assert 183e6 < count < 186e6, count


@pytest.mark.parametrize("name", BUILTINS)
def test_forward_shape_on_32_and_64_pixel_inputs(nets, name: str) -> None:
    for size in (32, 64):
        if name == "smallcnn":
            net = _arch(name).build(10, (3, size, size)).eval()
        else:
            net = nets(name)  # global average pooling: one build serves every input size
        with torch.no_grad():
            out = net(torch.rand(2, 3, size, size))
        assert out.shape == (2, 10), (name, size)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["wrn-28-10", "wrn-34-10", "wrn-34-20", "preact-resnet-18", "resnet-18"])
def test_channel_count_and_classes_follow_the_dataset(name: str) -> None:
    """Every ResNet and WRN takes Fashion-MNIST's and MNIST's 1x28x28 images."""
    net = _arch(name).build(7, (1, 28, 28)).eval()
    first_conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 1
    with torch.no_grad():
        assert net(torch.rand(2, 1, 28, 28)).shape == (2, 7)


def test_wrn_dropout_is_a_typed_param() -> None:
    net = _arch("wrn-28-10", {"dropout": "0.3"}).build(10, (3, 32, 32))
    assert {m.dropout for m in net.modules() if hasattr(m, "convShortcut")} == {0.3}
    assert _arch("wrn-34-10").params.dropout == 0.0
    with pytest.raises(ConfigError, match="dropout"):
        _arch("wrn-34-10", {"dropout": 1.5})


# ------------------------------------------------------------------------ timm registry
@pytest.mark.parametrize("name", ["wrn-28-10", "wrn-34-10", "preact-resnet-18", "resnet-18"])
def test_timm_registry_builds_the_same_network(nets, name: str) -> None:
    timm_name = TIMM_NAMES[name]
    model = timm.create_model(timm_name, num_classes=10)
    ours = nets(name)
    assert type(model) is type(ours)
    assert count_parameters(model) == count_parameters(ours)
    assert model.state_dict().keys() == ours.state_dict().keys()


def test_timm_registry_names_channels_and_pretrained() -> None:
    _arch("wrn-34-10"), _arch("preact-resnet-18"), _arch("resnet-18")  # imports the modules
    for timm_name in TIMM_NAMES.values():
        assert timm.models.is_model(timm_name), timm_name
    assert set(timm.list_models("wrn_*")) >= {"wrn_34_10", "wrn_28_10", "wrn_34_20"}
    small = timm.create_model("resnet_18", num_classes=5, in_chans=1)
    assert small.conv1.in_channels == 1 and small.linear.out_features == 5
    # ours is the CIFAR ResNet-18: 3x3 stride-1 stem, unlike timm's ImageNet resnet18
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert timm.create_model("resnet18").conv1.kernel_size == (7, 7)
    assert timm.create_model("wrn_28_10", drop_rate=0.2).block1.layer[0].dropout == 0.2
    with pytest.raises(ConfigError, match="no pretrained weights"):
        timm.create_model("preact_resnet_18", pretrained=True)
    with pytest.raises(TypeError, match="img_size"):
        timm.create_model("resnet_18", img_size=32)


def test_importing_the_modules_twice_neither_fails_nor_warns() -> None:
    code = (
        "import importlib, timm\n"
        "import robench_plugins.architectures.wideresnet as w\n"
        "import robench_plugins.architectures.preact_resnet as p\n"
        "import robench_plugins.architectures.resnet as r\n"
        "import robench_plugins.architectures.timm_models as t\n"
        "for m in (r, p, w, t): importlib.reload(m)\n"
        "print(sum(p.numel() for p in timm.create_model('preact_resnet_18').parameters()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.strip() == str(count_parameters(_arch("preact-resnet-18").build(10, (3, 32, 32))))


# --------------------------------------------------------------- TRADES checkpoints
def _trades_checkpoint(source: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """What the official TRADES code saves: the weights plus an unused ``sub_block1``."""
    sd = OrderedDict(source.state_dict())
    for key, value in list(sd.items()):
        if key.startswith("block1."):
            sd["sub_block1." + key[len("block1."):]] = torch.randn_like(value.float()).to(value.dtype)
    return sd


def test_trades_checkpoint_with_sub_block1_loads_strictly(nets) -> None:
    source = nets("wrn-34-10")
    with torch.no_grad():  # non-trivial BN statistics, so buffers must load too
        for m in source.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    checkpoint = _trades_checkpoint(source)
    assert any(k.startswith("sub_block1.layer.4.") for k in checkpoint)
    x = torch.rand(2, 3, 32, 32)

    torch.manual_seed(1)
    target = _arch("wrn-34-10").build(10, (3, 32, 32)).eval()
    with torch.no_grad():
        expected = source(x)
        assert not torch.allclose(target(x), expected)  # a fresh model differs
        result = target.load_state_dict(checkpoint, strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        assert torch.equal(target(x), expected)
    assert any(k.startswith("sub_block1.") for k in checkpoint)  # the caller's dict is untouched

    # saved from nn.DataParallel: every key under "module."
    wrapped = OrderedDict(("module." + k, v) for k, v in checkpoint.items())
    torch.manual_seed(2)
    target = _arch("wrn-34-10").build(10, (3, 32, 32)).eval()
    target.load_state_dict(wrapped)
    with torch.no_grad():
        assert torch.equal(target(x), expected)

    # inside robench's NormalizedClassifier the network is "net"
    model = NormalizedClassifier(target, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)).eval()
    full = OrderedDict([("normalize.mean", torch.zeros(1, 3, 1, 1)), ("normalize.std", torch.ones(1, 3, 1, 1))])
    full.update(("net." + k, v) for k, v in checkpoint.items())
    model.load_state_dict(full)
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_trades_leniency_is_limited_to_sub_block1(nets) -> None:
    net = _arch("wrn-28-10").build(10, (3, 32, 32))
    sd = OrderedDict(net.state_dict())
    with pytest.raises(RuntimeError, match="sub_block2"):
        net.load_state_dict({**sd, "sub_block2.weight": torch.zeros(1)})
    del sd["fc.weight"]
    with pytest.raises(RuntimeError, match="fc.weight"):
        net.load_state_dict(sd)
    with pytest.raises(RuntimeError) as info:  # "module." on only some keys: nothing is rewritten
        net.load_state_dict({**net.state_dict(), "module.extra": torch.zeros(1)})
    assert 'Unexpected key(s) in state_dict: "module.extra"' in str(info.value)
    assert "Missing" not in str(info.value)


# ------------------------------------------------------------------------ timm family
def test_timm_resnet18_builds_and_runs_on_32_and_64() -> None:
    plugin = _arch("timm", {"model": "resnet18"})
    for size in (32, 64):
        net = plugin.build(10, (3, size, size)).eval()
        with torch.no_grad():
            assert net(torch.rand(2, 3, size, size)).shape == (2, 10)
    assert count_parameters(net) == count_parameters(timm.create_model("resnet18", num_classes=10))
    gray = plugin.build(4, (1, 32, 32))
    assert gray.conv1.in_channels == 1 and gray.fc.out_features == 4


def test_timm_variant_name_sets_the_model_param() -> None:
    plugin = get_registry("architecture").create("timm/resnet18")
    assert plugin.params.model == "resnet18"
    assert type(plugin).variant_param == "model"


def test_timm_vit_gets_the_dataset_image_size() -> None:
    net = _arch("timm", {"model": "vit_tiny_patch16_224"}).build(10, (3, 32, 32)).eval()
    assert tuple(net.patch_embed.img_size) == (32, 32)
    assert net.pos_embed.shape[1] == 1 + (32 // 16) ** 2  # class token + 2x2 patches
    with torch.no_grad():
        assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_timm_family_includes_robench_builtins() -> None:
    net = _arch("timm", {"model": "preact_resnet_18"}).build(10, (3, 32, 32))
    assert count_parameters(net) == count_parameters(_arch("preact-resnet-18").build(10, (3, 32, 32)))


def test_timm_misspelt_model_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match="resnet18") as info:
        _arch("timm", {"model": "resnt18"}).build(10, (3, 32, 32))
    assert "unknown timm model 'resnt18'" in str(info.value) and "\n" not in str(info.value)


def test_timm_without_a_model_name_says_how_to_name_one() -> None:
    with pytest.raises(ConfigError, match=r"timm/<name>"):
        _arch("timm").build(10, (3, 32, 32))


def test_timm_refuses_hub_downloads() -> None:
    with pytest.raises(ConfigError, match="download"):
        _arch("timm", {"model": "hf-hub:timm/resnet18.a1_in1k"}).build(10, (3, 32, 32))
