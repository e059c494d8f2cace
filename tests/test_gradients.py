"""Batched per-client gradients equal a plain per-client loop with one nn.Module."""

from __future__ import annotations

import pytest
import torch

from diversefl.engine import gradients
from diversefl.engine.dense_grads import dense_grads, is_dense
from diversefl.engine.gradients import (
    batched_grads,
    length_buckets,
    loop_grads,
    padded_grads,
)
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
    if is_dense(module):  # "auto" took the hand-written path; vmap must agree too
        vm = batched_grads(fm, theta, x, y, method="vmap")
        torch.testing.assert_close(vm, slow, atol=1e-5, rtol=1e-4)
    else:
        with pytest.raises(ValueError, match="dense"):
            batched_grads(fm, theta, x, y, method="dense")


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
    for method in ("auto", "vmap", "dense"):
        torch.testing.assert_close(
            batched_grads(fm, theta, x, y, w, method=method), ref, atol=1e-5, rtol=1e-4
        )
        torch.testing.assert_close(
            batched_grads(fm, theta, x, y, w, clients_per_chunk=2, method=method),
            ref,
            atol=1e-5,
            rtol=1e-4,
        )
    scale = torch.tensor([1.0, 4.0, 0.5, 2.0, 3.0])  # summed-loss conventions scale per client
    torch.testing.assert_close(
        batched_grads(fm, theta, x, y, w, scale=scale, method="dense"),
        loop_grads(fm, theta, x, y, w, scale=scale),
        atol=1e-5,
        rtol=1e-4,
    )
    # RSA-style: one model per client
    thetas = theta[None].repeat(n, 1) + 0.05 * torch.randn(n, fm.dim)
    torch.testing.assert_close(
        batched_grads(fm, thetas, x, y, w), loop_grads(fm, thetas, x, y, w), atol=1e-5, rtol=1e-4
    )


def test_dense_path_applies_only_to_plain_dense_networks():
    assert is_dense(build_model("softmax", (1, 28, 28), 10))
    assert is_dense(build_model("mlp", (1, 28, 28), 10))
    assert not is_dense(build_model("cifar_cnn", (3, 32, 32), 10))
    assert not is_dense(
        torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    )
    assert not is_dense(torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False)))
    assert not is_dense(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()))


def test_dense_relu_at_a_hand_computed_point():
    """1-2-2 network, one client, one example: the gradient by hand."""
    net = torch.nn.Sequential(torch.nn.Linear(1, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2))
    fm = FlatModel(net)
    # W1 = [[1], [-1]], b1 = [0, 0]; W2 = [[1, 0], [0, 1]], b2 = [0, 0]; x = 2, label 0
    theta = torch.tensor([1.0, -1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    x, y = torch.tensor([[[2.0]]]), torch.tensor([[0]])
    # h = relu([2, -2]) = [2, 0]; logits [2, 0]; p = [e2, 1] / (e2 + 1); dz = p - [1, 0]
    p0 = torch.exp(torch.tensor(2.0)) / (torch.exp(torch.tensor(2.0)) + 1)
    dz = torch.tensor([p0 - 1, 1 - p0])
    dw2 = torch.outer(dz, torch.tensor([2.0, 0.0]))
    dh = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).t() @ dz * torch.tensor([1.0, 0.0])
    want = torch.cat([(dh * 2.0), dh, dw2.reshape(-1), dz])
    got = batched_grads(fm, theta, x, y, method="dense")[0]
    torch.testing.assert_close(got, want)


def test_dense_writes_into_a_given_buffer_and_leaves_inputs_alone():
    """``out=`` receives every layer's gradient in place (rows of a bigger buffer), the input
    batch is not modified by the in-place ReLU, and a ReLU on the raw input is handled."""
    torch.manual_seed(2)
    net = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.ReLU(),
        torch.nn.Linear(12, 5),
        torch.nn.ReLU(),
        torch.nn.Linear(5, 3),
    )
    fm = FlatModel(net)
    assert fm.dense
    theta = fm.flatten()
    n, m = 4, 3
    x, y = torch.randn(n, m, 3, 4), torch.randint(0, 3, (n, m))
    x_before = x.clone()
    coef = torch.full((n, m), 1.0 / m)
    big = torch.full((n + 2, fm.dim), float("nan"))
    got = dense_grads(fm, theta, x, y, coef, out=big[1 : n + 1])
    assert got.data_ptr() == big[1].data_ptr()
    torch.testing.assert_close(big[1 : n + 1], loop_grads(fm, theta, x, y), atol=1e-6, rtol=1e-5)
    assert torch.isnan(big[0]).all() and torch.isnan(big[-1]).all()  # other rows untouched
    assert torch.equal(x, x_before)
    with pytest.raises(ValueError, match=r"\[4, 83\]"):
        dense_grads(fm, theta, x, y, coef, out=torch.empty(n, fm.dim + 1))


def test_length_buckets_by_hand():
    # longest first: 0 (10), 4 (10), 2 (9), 3 (3) pad to 40 for 32 real = exactly 25% waste;
    # adding client 1 (2) would pad 50 for 34; so it starts its own group
    buckets = length_buckets(torch.tensor([10, 2, 9, 3, 10]))
    assert [(idx.tolist(), width) for idx, width in buckets] == [([0, 4, 2, 3], 10), ([1], 2)]
    assert [(i.tolist(), w) for i, w in length_buckets(torch.tensor([4, 4]))] == [([0, 1], 4)]


def test_length_buckets_cover_every_client_once_within_tolerance():
    gen = torch.Generator().manual_seed(3)
    for tolerance in (0.0, 0.25, 1.0):
        lengths = torch.randint(0, 600, (200,), generator=gen)
        buckets = length_buckets(lengths, tolerance)
        seen = torch.cat([idx for idx, _ in buckets])
        assert sorted(seen.tolist()) == list(range(200))
        for idx, width in buckets:
            real = int(lengths[idx].sum())
            assert width == int(lengths[idx].max())
            assert len(idx) == 1 or width * len(idx) <= (1 + tolerance) * real


@pytest.mark.parametrize("name", ["softmax", "mlp", "cifar_cnn"])
def test_unequal_batches_are_bucketed_and_match_the_loop(name, monkeypatch):
    """Dirichlet-like batch sizes (one long batch, many short ones, one empty): grouped by
    size, each group padded only to its own longest batch; same gradients as the loop."""
    monkeypatch.setattr(gradients, "MIN_WASTED_WORK", 0)  # these models are tiny
    calls = []
    monkeypatch.setattr(
        gradients, "length_buckets", lambda *a: calls.append(1) or length_buckets(*a)
    )
    torch.manual_seed(4)
    shape = (3, 32, 32) if name == "cifar_cnn" else (1, 28, 28)
    fm = FlatModel(build_model(name, shape, 10))
    theta = fm.flatten() + 0.01 * torch.randn(fm.dim)
    lengths = torch.tensor([12, 2, 3, 11, 0, 2, 6])
    n, m = len(lengths), int(lengths.max())
    x, y = torch.randn(n, m, *shape), torch.randint(0, 10, (n, m))
    w = (torch.arange(m)[None, :] < lengths[:, None]).float()
    fast = batched_grads(fm, theta, x, y, w)
    assert calls  # the grouped path was taken
    torch.testing.assert_close(fast, loop_grads(fm, theta, x, y, w), atol=1e-5, rtol=1e-4)
    assert torch.count_nonzero(fast[4]) == 0  # the empty client
    # the same as one padded call, to float rounding
    padded = padded_grads(fm, theta, x, y, w, None, torch.ones(n), "auto", is_dense(fm.module))
    torch.testing.assert_close(fast, padded, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["softmax", "mlp"])
def test_unequal_batches_of_a_dense_model_take_no_padding(name, monkeypatch):
    """A dense model with unequal batches gets its gradients from the concatenated real
    examples (dense_grads_ragged: one matmul per client for the weights), equal to the loop,
    with a loss scale per client; chunking or method="vmap" keep the size groups."""
    monkeypatch.setattr(gradients, "MIN_WASTED_WORK", 0)
    ragged_calls = []
    real_ragged = gradients.dense_grads_ragged
    monkeypatch.setattr(
        gradients, "dense_grads_ragged", lambda *a: ragged_calls.append(a[-1]) or real_ragged(*a)
    )
    torch.manual_seed(6)
    fm = FlatModel(build_model(name, (1, 28, 28), 10))
    theta = fm.flatten() + 0.01 * torch.randn(fm.dim)
    lengths = torch.tensor([9, 1, 0, 14, 3, 3])
    n, m = len(lengths), int(lengths.max())
    x, y = torch.randn(n, m, 1, 28, 28), torch.randint(0, 10, (n, m))
    w = (torch.arange(m)[None, :] < lengths[:, None]).float()
    scale = torch.tensor([1.0, 2.0, 3.0, 0.5, 1.0, 4.0])
    fast = batched_grads(fm, theta, x, y, w, scale=scale)
    assert ragged_calls == [lengths.tolist()]
    ref = loop_grads(fm, theta, x, y, w, scale)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-4)
    assert torch.count_nonzero(fast[2]) == 0  # the client without examples
    for kwargs in ({"clients_per_chunk": 2}, {"method": "vmap"}):
        other = batched_grads(fm, theta, x, y, w, scale=scale, **kwargs)
        torch.testing.assert_close(other, ref, atol=1e-5, rtol=1e-4)
    assert len(ragged_calls) == 1
    # no client with a single example: zero gradients, as the padded call gives
    none = batched_grads(fm, theta, x, y, torch.zeros_like(w))
    assert none.shape == (n, fm.dim) and torch.count_nonzero(none) == 0


def test_ragged_dense_grads_by_hand():
    """One Linear(2, 2) (softmax regression), two clients with 2 and 1 examples: the weight
    gradient of client j is sum_k coef_k (softmax(z_k) - onehot(y_k)) x_k^T."""
    from diversefl.engine.dense_grads import dense_grads_ragged

    fm = FlatModel(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    theta = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])  # W = I, b = 0
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    coef = torch.tensor([0.5, 0.5, 1.0])
    got = dense_grads_ragged(fm, theta, x, y, coef, [2, 1])
    want = []
    for rows in ([0, 1], [2]):
        gw, gb = torch.zeros(2, 2), torch.zeros(2)
        for k in rows:
            p = torch.softmax(x[k], dim=0)  # z = W x + b = x
            d = coef[k] * (p - torch.nn.functional.one_hot(y[k], 2).float())
            gw += torch.outer(d, x[k])
            gb += d
        want.append(torch.cat([gw.reshape(-1), gb]))
    torch.testing.assert_close(got, torch.stack(want))


def test_equal_holed_or_cheap_batches_take_one_padded_call(monkeypatch):
    monkeypatch.setattr(gradients, "length_buckets", lambda *a: pytest.fail("regrouped"))
    torch.manual_seed(5)
    fm = FlatModel(build_model("mlp", (1, 8, 8), 10))
    theta = fm.flatten()
    n, m = 4, 9
    x, y = torch.randn(n, m, 1, 8, 8), torch.randint(0, 10, (n, m))
    ones = torch.ones(n)
    w = torch.ones(n, m)
    w[2, 8:] = 0  # one example of padding: below the tolerance
    one_call = padded_grads(fm, theta, x, y, w, None, ones, "auto", True)
    assert torch.equal(batched_grads(fm, theta, x, y, w), one_call)
    holed = torch.zeros(n, m)
    holed[:, ::4] = 1  # weights that are not a prefix (padding in the middle): not regrouped
    one_call = padded_grads(fm, theta, x, y, holed, None, ones, "auto", True)
    assert torch.equal(batched_grads(fm, theta, x, y, holed), one_call)
    ref = loop_grads(fm, theta, x, y, holed)
    torch.testing.assert_close(one_call, ref, atol=1e-5, rtol=1e-4)
    # lots of padding, but little wasted work for so small a model (the default threshold)
    short = (torch.arange(m)[None, :] < torch.tensor([9, 1, 1, 1])[:, None]).float()
    assert fm.dim * int((short == 0).sum()) < gradients.MIN_WASTED_WORK
    batched_grads(fm, theta, x, y, short)
