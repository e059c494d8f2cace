"""Each attack produces exactly what the paper defines."""

from __future__ import annotations

import pytest
import torch

from diversefl import attacks
from diversefl.aggregators import RoundContext


def _ctx(seed: int = 0, num_classes: int = 10) -> RoundContext:
    return RoundContext(
        round=1,
        n=8,
        f=3,
        generator=torch.Generator().manual_seed(seed),
        num_classes=num_classes,
    )


def test_sign_flip_negates_own_gradient():
    honest, byz = torch.randn(5, 7), torch.randn(3, 7)
    torch.testing.assert_close(attacks.get("sign_flip")(honest, byz, _ctx()), -byz)


def test_same_value_is_sigma_times_ones():
    out = attacks.get("same_value", sigma=10.0)(torch.randn(5, 7), torch.randn(3, 7), _ctx())
    assert out.shape == (3, 7) and bool((out == 10.0).all())


def test_gaussian_statistics_and_reproducibility():
    atk = attacks.get("gaussian", sigma=100.0)
    byz = torch.zeros(3, 100_000)
    a = atk(torch.zeros(5, 100_000), byz, _ctx(1))
    b = atk(torch.zeros(5, 100_000), byz, _ctx(1))
    assert torch.equal(a, b)
    assert abs(float(a.mean())) < 1.0
    assert abs(float(a.std()) - 100.0) < 1.0
    assert not torch.equal(a, atk(torch.zeros(5, 100_000), byz, _ctx(2)))


@pytest.mark.parametrize("num_classes", [10, 100])
def test_label_flip_maps_c_to_cn_minus_1_minus_c(num_classes):
    y = torch.arange(num_classes).repeat(2, 1)
    x = torch.randn(2, num_classes, 3)
    x2, y2 = attacks.get("label_flip").poison(x, y, _ctx(num_classes=num_classes))
    assert torch.equal(x2, x)
    expected = [num_classes - 1 - c for c in range(num_classes)]
    assert y2[0].tolist() == expected and y2[1].tolist() == expected


def test_none_leaves_messages_alone_and_registry_errors():
    byz = torch.randn(3, 4)
    assert torch.equal(attacks.get("none")(torch.randn(5, 4), byz, _ctx()), byz)
    with pytest.raises(ValueError, match="attack.name: unknown attack 'flip'"):
        attacks.get("flip")
    with pytest.raises(ValueError, match="attack.sigma"):
        attacks.get("sign_flip", sigma=1.0)
