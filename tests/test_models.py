"""Tests for the paper's model zoo: parameter counts, shapes, initialisation, func-compat."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

from diversefl.models import MODELS, build_model

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)


def n_params(model: nn.Module) -> int:
    """Total number of trainable scalars in a model."""
    return sum(p.numel() for p in model.parameters())


def conv(cin: int, cout: int, k: int) -> int:
    """Parameter count of a Conv2d with bias."""
    return cin * cout * k * k + cout


def lin(fin: int, fout: int) -> int:
    """Parameter count of a Linear with bias."""
    return fin * fout + fout


def vgg_features() -> int:
    """Hand count of the VGG11 conv stack for 3 input channels, GroupNorm weight+bias included."""
    convs = (
        conv(3, 64, 3)
        + conv(64, 128, 3)
        + conv(128, 256, 3)
        + conv(256, 256, 3)
        + conv(256, 512, 3)
        + conv(512, 512, 3) * 3
    )
    gn = 2 * (64 + 128 + 256 + 256 + 512 * 4)
    return convs + gn


def test_registry_names() -> None:
    assert set(MODELS) == {"softmax", "mlp", "cifar_cnn", "vgg11_gn"}


def test_softmax_params_and_zero_init() -> None:
    model = build_model("softmax", MNIST, 10)
    assert n_params(model) == 784 * 10 + 10 == 7850
    assert all(torch.all(p == 0) for p in model.parameters())
    out = model(torch.randn(5, *MNIST))
    assert out.shape == (5, 10)
    assert torch.all(out == 0)


def test_softmax_zero_init_optional() -> None:
    model = build_model("softmax", MNIST, 10, zero_init=False)
    assert any(torch.any(p != 0) for p in model.parameters())


def test_mlp_params_and_shape() -> None:
    model = build_model("mlp", MNIST, 10)
    assert n_params(model) == (784 * 200 + 200) + (200 * 200 + 200) + (200 * 10 + 10) == 199210
    assert model(torch.randn(3, *MNIST)).shape == (3, 10)
    assert n_params(build_model("mlp", MNIST, 10, hidden=50)) == lin(784, 50) + lin(50, 50) + lin(
        50, 10
    )


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_cnn_params_and_shape(num_classes: int) -> None:
    model = build_model("cifar_cnn", CIFAR, num_classes)
    expected = (
        (3 * 16 * 3 * 3 + 16)
        + (16 * 64 * 4 * 4 + 64)
        + (64 * 384 + 384)
        + (384 * 192 + 192)
        + (192 * num_classes + num_classes)
    )
    assert n_params(model) == expected
    assert model(torch.randn(4, *CIFAR)).shape == (4, num_classes)


def test_cifar_cnn_param_count_cifar10_literal() -> None:
    assert n_params(build_model("cifar_cnn", CIFAR, 10)) == 448 + 16448 + 24960 + 73920 + 1930


def test_cifar_cnn_other_input_size() -> None:
    # 64x64: conv 64 -> pool 21 -> conv 18 -> pool 4, flatten 64*4*4
    model = build_model("cifar_cnn", (3, 64, 64), 10)
    assert model[7].in_features == 64 * 4 * 4
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_cifar_cnn_init() -> None:
    model = build_model("cifar_cnn", CIFAR, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            assert torch.all(m.bias == 0)
    _assert_glorot(convs)


def _assert_glorot(convs: list[nn.Conv2d]) -> None:
    """Conv weights lie within the Glorot-uniform bound and are not all tiny (not Kaiming)."""
    for m in convs:
        k = m.kernel_size[0] * m.kernel_size[1]
        bound = math.sqrt(6.0 / (m.in_channels * k + m.out_channels * k))
        assert m.weight.abs().max().item() <= bound + 1e-7
        assert m.weight.abs().max().item() > 0.9 * bound


@pytest.mark.parametrize("num_classes", [10, 100])
def test_vgg11_gn_params(num_classes: int) -> None:
    model = build_model("vgg11_gn", CIFAR, num_classes)
    head = lin(512, 4096) + lin(4096, 4096) + lin(4096, num_classes)
    assert n_params(model) == vgg_features() + head


def test_vgg11_gn_param_count_literals() -> None:
    # Paper Table 1 (three FC layers): 28,149,514; compact 1-FC head: 9,231,114.
    assert vgg_features() == 9220480 + 5504
    assert n_params(build_model("vgg11_gn", CIFAR, 10)) == 28_149_514
    assert n_params(build_model("vgg11_gn", CIFAR, 10, fc_hidden=0)) == 9_231_114
    assert n_params(build_model("vgg11_gn", CIFAR, 100, fc_hidden=0)) == vgg_features() + lin(
        512, 100
    )


def test_vgg11_gn_structure_and_init() -> None:
    model = build_model("vgg11_gn", CIFAR, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    gns = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    drops = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert [m.out_channels for m in convs] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert all(m.kernel_size == (3, 3) and m.padding == (1, 1) for m in convs)
    assert [g.num_groups for g in gns] == [c // 16 for c in [64, 128, 256, 256] + [512] * 4]
    assert len(pools) == 5
    assert drops == [0.2] * 8 + [0.5] * 2
    for g in gns:
        assert torch.all(g.weight == 1) and torch.all(g.bias == 0)
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            assert torch.all(m.bias == 0)
    _assert_glorot(convs)


def test_vgg11_gn_forward_eval() -> None:
    torch.manual_seed(0)
    model = build_model("vgg11_gn", CIFAR, 100).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *CIFAR))
    assert out.shape == (2, 100)
    assert torch.isfinite(out).all()


def test_functional_call_vmap_over_clients() -> None:
    """Batched per-client forward with stacked params, as the FL engine does."""
    torch.manual_seed(0)
    x = torch.randn(3, 2, *CIFAR)
    for name in ["softmax", "mlp", "cifar_cnn"]:
        model = build_model(name, CIFAR, 10)
        params = {k: torch.stack([v + i for i in range(3)]) for k, v in model.named_parameters()}

        def fwd(p: dict[str, torch.Tensor], xb: torch.Tensor, m: nn.Module = model) -> torch.Tensor:
            return functional_call(m, p, (xb,))

        out = vmap(fwd)(params, x)
        assert out.shape == (3, 2, 10)
        ref = functional_call(model, {k: v[1] for k, v in params.items()}, (x[1],))
        torch.testing.assert_close(out[1], ref)


def test_vgg11_gn_vmap_per_sample_grad() -> None:
    """Per-sample gradients through GroupNorm + dropout under vmap (train mode)."""
    torch.manual_seed(0)
    model = build_model("vgg11_gn", CIFAR, 10, fc_hidden=0)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, p, (xb.unsqueeze(0),))
        return nn.functional.cross_entropy(logits, yb.unsqueeze(0))

    grads = vmap(torch.func.grad(loss), in_dims=(None, 0, 0), randomness="different")(
        params, torch.randn(2, *CIFAR), torch.tensor([1, 2])
    )
    assert grads["0.weight"].shape == (2, 64, 3, 3, 3)


def test_unknown_model_name() -> None:
    with pytest.raises(ValueError, match="resnet") as info:
        build_model("resnet", CIFAR, 10)
    assert "vgg11_gn" in str(info.value)


def test_conv_models_reject_flat_shape() -> None:
    with pytest.raises(ValueError, match="C, H, W"):
        build_model("cifar_cnn", (784,), 10)


def test_layer_sizes_group_each_layers_weight_and_bias() -> None:
    from diversefl.engine.params import FlatModel

    mlp = FlatModel(build_model("mlp", MNIST, 10))
    assert mlp.layer_sizes == (784 * 200 + 200, 200 * 200 + 200, 200 * 10 + 10)
    assert FlatModel(build_model("softmax", MNIST, 10)).layer_sizes == (7850,)
    for name in MODELS:  # always a partition of theta, one block per parametrised module
        fm = FlatModel(
            build_model(name, (3, 32, 32) if name.startswith(("cifar", "vgg")) else MNIST, 10)
        )
        assert sum(fm.layer_sizes) == fm.dim
        owners = {k.rsplit(".", 1)[0] for k in fm.names}
        assert len(fm.layer_sizes) == len(owners)
