"""Packed gradients (K dense models on one shared batch) against the one-model path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diversefl.engine.dense_grads import dense_grads
from diversefl.engine.packed_grads import packed_dense_grads
from diversefl.engine.params import FlatModel


def _model(kind: str) -> FlatModel:
    torch.manual_seed(0)
    if kind == "softmax":
        return FlatModel(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)))
    return FlatModel(
        nn.Sequential(
            nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 4)
        )
    )


@pytest.mark.parametrize("kind", ["softmax", "mlp"])
def test_packed_equals_each_model_alone(kind: str) -> None:
    fm = _model(kind)
    gen = torch.Generator().manual_seed(1)
    k_models, n, m = 3, 5, 6
    thetas = torch.randn(k_models, fm.dim, generator=gen) * 0.5
    x = torch.randn(n, m, 3, 4, generator=gen)
    ys = torch.randint(0, 4, (k_models, n, m), generator=gen)
    coef = torch.rand(n, m, generator=gen)
    coef[1, 4:] = 0.0  # client 1's batch is shorter (padding)
    x_before = x.clone()
    got = packed_dense_grads(fm, thetas, x, ys, coef)
    assert got.shape == (k_models, n, fm.dim)
    assert torch.equal(x, x_before)  # the shared batch is not modified
    for k in range(k_models):
        want = dense_grads(fm, thetas[k], x, ys[k], coef)
        torch.testing.assert_close(got[k], want, rtol=1e-5, atol=1e-6)


def test_packed_matches_autograd_per_client() -> None:
    """An independent reference: autograd on a per-client nn.Module loop."""
    fm = _model("mlp")
    gen = torch.Generator().manual_seed(2)
    k_models, n, m = 2, 3, 4
    thetas = torch.randn(k_models, fm.dim, generator=gen)
    x = torch.randn(n, m, 12, generator=gen)
    ys = torch.randint(0, 4, (k_models, n, m), generator=gen)
    coef = torch.full((n, m), 1.0 / m)
    got = packed_dense_grads(fm, thetas, x, ys, coef)
    for k in range(k_models):
        module = fm.load_into_module(thetas[k])
        for j in range(n):
            module.zero_grad()
            loss = nn.functional.cross_entropy(module(x[j]), ys[k, j])
            loss.backward()
            want = torch.cat([p.grad.reshape(-1) for p in module.parameters()])
            torch.testing.assert_close(got[k, j], want, rtol=1e-5, atol=1e-6)


def test_packed_refuses_wrong_theta_shape() -> None:
    fm = _model("softmax")
    with pytest.raises(ValueError, match="thetas must be"):
        packed_dense_grads(
            fm,
            torch.zeros(2, fm.dim + 1),
            torch.zeros(1, 2, 12),
            torch.zeros(2, 1, 2, dtype=torch.long),
            torch.ones(1, 2),
        )


def test_packed_logits_equal_each_model() -> None:
    from diversefl.engine.packed_grads import packed_logits

    fm = _model("mlp")
    gen = torch.Generator().manual_seed(3)
    thetas = torch.randn(3, fm.dim, generator=gen)
    x = torch.randn(9, 12, generator=gen)
    got = packed_logits(fm, thetas, x)
    for k in range(3):
        want = fm.load_into_module(thetas[k])(x).detach()
        torch.testing.assert_close(got[k], want, rtol=1e-5, atol=1e-6)
