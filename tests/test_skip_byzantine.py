"""Skipping the gradients an attack throws away: ``batched_grads(compute=...)`` gives the full
call's rows for the wanted clients and zeros for the rest on every path, the simulator skips
the Byzantine clients exactly for the attacks that never read their own gradients, and every
attack that says so really ignores them."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from diversefl import attacks
from diversefl.aggregators import RoundContext
from diversefl.api import run
from diversefl.attacks.base import Attack
from diversefl.config import make_config
from diversefl.engine import gradients, simulator
from diversefl.engine.gradients import batched_grads, client_runs
from diversefl.engine.params import FlatModel
from diversefl.engine.simulator import Simulation
from diversefl.models import build_model

TIGHT = {"rtol": 1e-6, "atol": 1e-7}


def _setup(name: str, n: int = 7, m: int = 6, unequal: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    shape = (1, 28, 28) if name in ("softmax", "mlp") else (3, 32, 32)
    module = build_model(name, shape, 10)
    module.eval()
    fm = FlatModel(module)
    theta = fm.flatten() + 0.01 * torch.randn(fm.dim)
    x = torch.randn(n, m, *shape)
    y = torch.randint(0, 10, (n, m))
    w = torch.ones(n, m)
    if unequal:  # prefix masks of very different lengths, one client with no example at all
        lengths = [m, 1, 3, 0, m, 2, 5][:n]
        for j, k in enumerate(lengths):
            w[j, k:] = 0.0
    return fm, theta, x, y, w


def _check(full: torch.Tensor, part: torch.Tensor, compute: torch.Tensor) -> None:
    torch.testing.assert_close(part[compute], full[compute], **TIGHT)
    assert bool((part[~compute] == 0).all())


MASKS = [
    [True, False, True, True, False, True, True],  # two gaps
    [False, True, True, True, True, True, False],  # both ends skipped
    [False] * 6 + [True],  # one client
    [False] * 7,  # nobody: all zeros
]


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("chunk", [None, 2])
@pytest.mark.parametrize("name", ["softmax", "mlp"])
def test_dense_padded_rows_equal_full_call(name, chunk, mask):
    fm, theta, x, y, w = _setup(name)
    compute = torch.tensor(mask)
    full = batched_grads(fm, theta, x, y, w, clients_per_chunk=chunk)
    part = batched_grads(fm, theta, x, y, w, clients_per_chunk=chunk, compute=compute)
    _check(full, part, compute)


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("chunk", [None, 2])
def test_dense_unequal_batches_ragged_and_grouped(monkeypatch, chunk, mask):
    # thresholds at zero: the unpadded path (no chunk) or the size groups (chunk) run here
    monkeypatch.setattr(gradients, "MIN_WASTED_WORK", 0)
    monkeypatch.setattr(gradients, "PADDING_TOLERANCE", 0.0)
    fm, theta, x, y, w = _setup("mlp", unequal=True)
    assert gradients.length_groups(w, fm.dim) is not None
    compute = torch.tensor(mask)
    full = batched_grads(fm, theta, x, y, w, clients_per_chunk=chunk)
    part = batched_grads(fm, theta, x, y, w, clients_per_chunk=chunk, compute=compute)
    _check(full, part, compute)
    ref = gradients.loop_grads(fm, theta, x, y, w)  # and both equal the plain loop
    torch.testing.assert_close(part[compute], ref[compute], rtol=1e-4, atol=1e-5)


def test_vmap_path_computes_everyone_and_zeroes_the_rest():
    fm, theta, x, y, w = _setup("cifar_cnn", n=4, m=2)
    compute = torch.tensor([True, False, True, False])
    full = batched_grads(fm, theta, x, y, w)
    part = batched_grads(fm, theta, x, y, w, compute=compute)
    assert torch.equal(part[compute], full[compute])  # the very same call
    assert bool((part[~compute] == 0).all())


def test_all_true_mask_is_the_plain_call_and_bad_mask_is_refused():
    fm, theta, x, y, w = _setup("mlp")
    full = batched_grads(fm, theta, x, y, w)
    assert torch.equal(
        batched_grads(fm, theta, x, y, w, compute=torch.ones(7, dtype=torch.bool)), full
    )
    with pytest.raises(
        ValueError, match=r"compute must be a bool mask of shape \(7,\), got \(6,\)"
    ):
        batched_grads(fm, theta, x, y, w, compute=torch.ones(6, dtype=torch.bool))


def test_client_runs_against_a_plain_scan():
    gen = torch.Generator().manual_seed(3)
    for _ in range(50):
        mask = torch.rand(int(torch.randint(1, 12, (1,), generator=gen)), generator=gen) < 0.6
        runs = client_runs(mask)
        covered = [i for a, b in runs for i in range(a, b)]
        assert covered == [i for i, keep in enumerate(mask.tolist()) if keep]
        assert all(b > a for a, b in runs)
        assert all(runs[k][1] < runs[k + 1][0] for k in range(len(runs) - 1))  # maximal runs


# -- the simulator --------------------------------------------------------------------------


def _spy(monkeypatch) -> list:
    seen: list = []
    real = simulator.batched_grads

    def spy(*args, **kwargs):
        seen.append(kwargs.get("compute"))
        return real(*args, **kwargs)

    monkeypatch.setattr(simulator, "batched_grads", spy)
    return seen


@pytest.mark.parametrize(
    "attack,skips",
    [
        ("gaussian", True),
        ("alie", True),
        ("ipm", True),
        ("sign_flip", False),
        ("label_flip", False),
    ],
)
def test_simulator_skips_exactly_for_attacks_that_ignore_own_gradients(monkeypatch, attack, skips):
    cfg = make_config(tiny_config(attack={"name": attack, "f": 2, "byzantine": [1, 4]}))
    sim = Simulation(cfg)
    seen = _spy(monkeypatch)
    byz = sim.byzantine_mask(1)
    sim.client_updates(1, byz, sim.context(1, byz))
    assert len(seen) == 1  # the clients' call (no guiding gradients for mean)
    if skips:
        assert torch.equal(seen[0].cpu(), ~byz)
    else:
        assert seen[0] is None


@pytest.mark.parametrize("attack", ["gaussian", "min_max", "adaptive"])
def test_skipping_leaves_the_run_unchanged(monkeypatch, attack):
    agg = "diversefl" if attack == "adaptive" else "mean"
    cfg = tiny_config(
        rounds=12,
        model={"name": "mlp"},
        attack={"name": attack, "f": 2, "byzantine": [1, 4]},
        aggregator={"name": agg},
    )
    skipped = run(cfg)
    cls = type(attacks.get(attack))
    monkeypatch.setattr(cls, "uses_own_gradients", True)  # the reference: compute everyone
    full = run(cfg)
    for a, b in zip(skipped.metrics, full.metrics, strict=True):
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1e-12)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-5)
    torch.testing.assert_close(skipped.theta, full.theta, rtol=1e-5, atol=1e-6)


# -- the attacks' own claim -----------------------------------------------------------------


def _attack_ctx(n: int, f: int, byz: torch.Tensor, guiding: torch.Tensor) -> RoundContext:
    return RoundContext(
        round=1,
        n=n,
        f=f,
        generator=torch.Generator().manual_seed(7),
        byzantine=byz,
        guiding_fn=lambda: guiding,
        extras={"num_classes": 10},
    )


@pytest.mark.parametrize("name", sorted(attacks.REGISTRY))
def test_attacks_that_ignore_own_gradients_do(name):
    cls = attacks.REGISTRY[name]
    if cls.uses_own_gradients:
        assert cls.uses_own_gradients is Attack.uses_own_gradients  # the safe default
        return
    n, f, d = 9, 3, 12
    gen = torch.Generator().manual_seed(0)
    honest = torch.randn(n - f, d, generator=gen)
    own = torch.randn(f, d, generator=gen)
    guiding = torch.randn(n, d, generator=gen)
    byz = torch.zeros(n, dtype=torch.bool)
    byz[[0, 4, 7]] = True
    attack = attacks.get(name)
    with_own = attack(honest, own, _attack_ctx(n, f, byz, guiding))
    with_zeros = attack(honest, torch.zeros_like(own), _attack_ctx(n, f, byz, guiding))
    assert torch.equal(with_own, with_zeros)
    assert not torch.equal(with_own, own)
