"""Batched per-client gradients equal a plain per-client loop with one nn.Module."""

from __future__ import annotations

import pytest
import torch

from diversefl.engine.gradients import batched_grads, loop_grads
from diversefl.engine.params import FlatModel
from diversefl.models import build_model

CASES = [
    ("softmax", (1, 28, 28), 10, 7),
    ("mlp", (1, 28, 28), 10, 7),
    ("cifar_cnn", (3, 32, 32), 10, 3),
    ("vgg11_gn", (3, 32, 32), 10, 2),
]


@pytest.mark.parametrize("name,shape,classes,m", CASES)
def test_batched_equals_loop(name, shape, classes, m):
    torch.manual_seed(0)
    module = build_model(name, shape, classes)
    if name == "vgg11_gn":
        module.eval()  # dropout off, so both paths see the same network
    fm = FlatModel(module)
    theta = fm.flatten() + 0.01 * torch.randn(fm.dim)  # non-zero even for zero-init softmax
    n = 3
    x = torch.randn(n, m, *shape)
    y = torch.randint(0, classes, (n, m))
    fast = batched_grads(fm, theta, x, y)
    slow = loop_grads(fm, theta, x, y)
    assert fast.shape == (n, fm.dim)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)


def test_padding_weights_and_chunks_and_per_client_theta():
    torch.manual_seed(1)
    fm = FlatModel(build_model("mlp", (1, 8, 8), 10))
    n, m = 5, 6
    theta = fm.flatten()
    x, y = torch.randn(n, m, 1, 8, 8), torch.randint(0, 10, (n, m))
    w = torch.ones(n, m)
    w[1, 4:] = 0  # client 1 has a batch of 4: padding must not count
    w[3, 1:] = 0
    ref = loop_grads(fm, theta, x, y, w)
    torch.testing.assert_close(batched_grads(fm, theta, x, y, w), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        batched_grads(fm, theta, x, y, w, clients_per_chunk=2), ref, atol=1e-5, rtol=1e-4
    )
    # RSA-style: one model per client
    thetas = theta[None].repeat(n, 1) + 0.05 * torch.randn(n, fm.dim)
    torch.testing.assert_close(
        batched_grads(fm, thetas, x, y, w), loop_grads(fm, thetas, x, y, w), atol=1e-5, rtol=1e-4
    )
