"""trades-smallcnn: TRADES' MNIST CNN, its size, initialisation, checkpoint keys and timm entry."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from robench.api.errors import ConfigError
from robench.api.features import feature_modules
from robench.api.model import count_parameters
from robench.core.registry import get_registry

#: the state-dict keys of yaodongyu/TRADES models/small_cnn.py, whose checkpoints load as they are
OFFICIAL_KEYS = [
    f"feature_extractor.conv{i}.{p}" for i in range(1, 5) for p in ("weight", "bias")
] + [f"classifier.fc{i}.{p}" for i in range(1, 4) for p in ("weight", "bias")]


def _net(shape: tuple[int, int, int] = (1, 28, 28), classes: int = 10) -> nn.Module:
    return get_registry("architecture").create("trades-smallcnn").build(classes, shape)


def test_parameter_count_layers_and_keys() -> None:
    net = _net()
    assert count_parameters(net) == 312_202
    assert list(net.state_dict()) == OFFICIAL_KEYS
    convs = [m for m in net.feature_extractor if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 32, (3, 3), (0, 0)), (32, 32, (3, 3), (0, 0)), (32, 64, (3, 3), (0, 0)), (64, 64, (3, 3), (0, 0))]
    assert [m.in_features for m in net.classifier if isinstance(m, nn.Linear)] == [1024, 200, 200]
    assert net.classifier.drop.p == 0.5
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.feature_extractor) == 2


def test_initialisation_as_in_the_reference() -> None:
    torch.manual_seed(0)
    net = _net()
    for conv in (m for m in net.modules() if isinstance(m, nn.Conv2d)):
        assert torch.count_nonzero(conv.bias) == 0
        fan_in = conv.in_channels * 9
        assert conv.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.25)  # Kaiming normal
    assert torch.count_nonzero(net.classifier.fc3.weight) == 0 and torch.count_nonzero(net.classifier.fc3.bias) == 0
    with torch.no_grad():
        assert torch.count_nonzero(net.eval()(torch.rand(3, 1, 28, 28))) == 0  # every logit starts at 0


def test_forward_shapes_other_sizes_and_refusal_of_small_inputs() -> None:
    with torch.no_grad():
        assert _net().eval()(torch.rand(2, 1, 28, 28)).shape == (2, 10)
        big = _net((3, 32, 32), classes=100).eval()
        assert big(torch.rand(2, 3, 32, 32)).shape == (2, 100)
    assert big.classifier.fc1.in_features == 64 * 5 * 5
    with pytest.raises(ConfigError, match="at least 14x14"):
        _net((1, 8, 8))  # digits


def test_feature_layers_are_the_two_pooled_stages() -> None:
    net = _net()
    assert [name for name, _ in feature_modules(net)] == ["feature_extractor.maxpool1", "feature_extractor.maxpool2"]


def test_registered_in_timm() -> None:
    _net()  # imports the module
    model = timm.create_model("trades_smallcnn", num_classes=10)
    assert list(model.state_dict()) == OFFICIAL_KEYS and count_parameters(model) == 312_202
    assert timm.create_model("trades_smallcnn", in_chans=3, img_size=32).feature_extractor.conv1.in_channels == 3
    with pytest.raises(ConfigError, match="no pretrained weights"):
        timm.create_model("trades_smallcnn", pretrained=True)


@pytest.mark.parametrize("defense", ["standard", "pgd-at", "trades", "mart", "uadat"])
def test_every_defense_trains_it(defense: str) -> None:
    """One step of each built-in defense on 28x28 grey images, UAD-AT's feature statistics included."""
    from robench.api.model import NormalizedClassifier
    from robench.api.threat import ThreatModel

    torch.manual_seed(0)
    model = NormalizedClassifier(_net(), (0.2860,), (0.3530,)).train()
    x, y = torch.rand(16, 1, 28, 28), torch.arange(16) % 10
    out = get_registry("defense").create(defense).loss(model, x, y, ThreatModel("Linf", "0.1"))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.logits.shape == (16, 10) and model.training
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
