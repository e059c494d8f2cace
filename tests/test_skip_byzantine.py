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
from diversefl.config import make_config
from diversefl.engine import gradients, simulator
from diversefl.engine.gradients import batched_grads, client_runs
from diversefl.engine.params import FlatModel
from diversefl.engine.simulator import Simulation
from diversefl.models import build_model

TIGHT = {"rtol": 1e-6, "atol": 1e-7}


def _setup(name: str, n: int = 7, m: int = 40, unequal: bool = False, seed: int = 0):
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
        lengths = [m, 33, 38, 0, m, 35, 36][:n]
        for j, k in enumerate(lengths):
            w[j, k:] = 0.0
    return fm, theta, x, y, w


def _check(
    full: torch.Tensor, part: torch.Tensor, compute: torch.Tensor, exact: bool = True
) -> None:
    """The wanted rows equal the full call's, the very same bits on one thread; with more
    threads a BLAS may split a one-client matmul across them and round it differently (seen on
    an Intel Xeon, not on an AMD EPYC), so there they agree to float rounding."""
    if exact:
        assert torch.equal(part[compute], full[compute])
    else:
        torch.testing.assert_close(part[compute], full[compute], **TIGHT)
    assert bool((part[~compute] == 0).all())


def _calls(monkeypatch, name: str) -> list[int]:
    """Record the examples (rows of x) of every call to gradients.<name>."""
    rows: list[int] = []
    real = getattr(gradients, name)

    def spy(fm, theta, x, *args, **kwargs):
        rows.append(int(x.shape[0]))  # clients (padded) or examples (unpadded)
        return real(fm, theta, x, *args, **kwargs)

    monkeypatch.setattr(gradients, name, spy)
    return rows


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


MASKS = [
    [True, False, True, True, False, True, True],  # two gaps
    [False, True, True, True, True, True, False],  # both ends skipped
    [False] * 6 + [True],  # one client
    [False] * 7,  # nobody: all zeros
]


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("name", ["softmax", "mlp"])
def test_dense_padded_computes_only_the_wanted_runs(monkeypatch, threads, name, mask):
    fm, theta, x, y, w = _setup(name)
    compute = torch.tensor(mask)
    full = batched_grads(fm, theta, x, y, w)
    calls = _calls(monkeypatch, "padded_grads")
    part = batched_grads(fm, theta, x, y, w, compute=compute)
    _check(full, part, compute, exact=threads == 1)
    # one call per run of wanted clients, none for the others (nobody wanted: the full call)
    runs = client_runs(compute)
    assert calls == ([b - a for a, b in runs] if runs else [7])


@pytest.mark.parametrize("mask", MASKS)
def test_dense_unequal_batches_unpadded(monkeypatch, threads, mask):
    # thresholds at zero: the unpadded path runs here
    monkeypatch.setattr(gradients, "MIN_WASTED_WORK", 0)
    monkeypatch.setattr(gradients, "PADDING_TOLERANCE", 0.0)
    fm, theta, x, y, w = _setup("mlp", unequal=True)
    assert gradients.length_groups(w, fm.dim) is not None
    compute = torch.tensor(mask)
    full = batched_grads(fm, theta, x, y, w)
    calls = _calls(monkeypatch, "dense_grads_ragged")
    part = batched_grads(fm, theta, x, y, w, compute=compute)
    _check(full, part, compute, exact=threads == 1)
    wanted = int((w[compute] != 0).sum())
    assert calls == ([wanted] if wanted else [int((w != 0).sum())])  # only the wanted examples
    ref = gradients.loop_grads(fm, theta, x, y, w)  # and both equal the plain loop
    torch.testing.assert_close(part[compute], ref[compute], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mask", MASKS[:2])
@pytest.mark.slow
def test_size_groups_and_small_calls_fall_back_to_the_full_call(monkeypatch, threads, mask):
    compute = torch.tensor(mask)
    # clients_per_chunk with unequal batches: size groups, computed whole then zeroed
    monkeypatch.setattr(gradients, "MIN_WASTED_WORK", 0)
    monkeypatch.setattr(gradients, "PADDING_TOLERANCE", 0.0)
    fm, theta, x, y, w = _setup("mlp", unequal=True)
    full = batched_grads(fm, theta, x, y, w, clients_per_chunk=2)
    _check(full, batched_grads(fm, theta, x, y, w, clients_per_chunk=2, compute=compute), compute)
    monkeypatch.undo()
    # a run of 1 client x 3 examples is below MIN_SKIP_ROWS: the full call, then zeros
    fm, theta, x, y, w = _setup("mlp", m=3)
    calls = _calls(monkeypatch, "padded_grads")
    part = batched_grads(fm, theta, x, y, w, compute=compute)
    assert calls == [7]
    _check(batched_grads(fm, theta, x, y, w), part, compute)


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
    everyone = torch.ones(7, dtype=torch.bool)
    assert torch.equal(batched_grads(fm, theta, x, y, w, compute=everyone), full)
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
@pytest.mark.slow
def test_skipping_leaves_the_run_unchanged(monkeypatch, attack):
    agg = "diversefl" if attack == "adaptive" else "mean"
    cfg = tiny_config(
        rounds=12,
        model={"name": "mlp"},
        attack={"name": attack, "f": 2, "byzantine": [1, 4]},
        aggregator={"name": agg},
    )
    skipped = run(cfg, out=False)
    cls = type(attacks.get(attack))
    monkeypatch.setattr(cls, "uses_own_gradients", True)  # the reference: compute everyone
    full = run(cfg, out=False)
    keys = ("round", "test_accuracy", "test_loss", "n_accepted")
    assert [[row[k] for k in keys] for row in skipped.metrics] == [
        [row[k] for k in keys] for row in full.metrics
    ]
    assert torch.equal(skipped.theta, full.theta)


# -- the attacks' own claim -----------------------------------------------------------------


def _attack_ctx(n: int, f: int, byz: torch.Tensor, guiding: torch.Tensor) -> RoundContext:
    return RoundContext(
        round=1,
        n=n,
        f=f,
        generator=torch.Generator().manual_seed(7),
        byzantine=byz,
        guiding_fn=lambda: guiding,
        num_classes=10,
    )


@pytest.mark.parametrize("name", sorted(attacks.REGISTRY))
def test_the_flag_says_whether_an_attack_reads_its_own_gradients(name):
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
    # False: the update does not depend on the own gradients; True: it does (so the flag is
    # needed, not just cautious)
    assert torch.equal(with_own, with_zeros) is (not type(attack).uses_own_gradients)


def test_a_subclass_that_overrides_call_is_back_at_the_safe_default():
    ipm = type(attacks.get("ipm"))

    class Reads(ipm):
        def __call__(self, honest, byzantine, ctx):
            return byzantine * 2

    class Keeps(ipm):
        epsilon: float = 0.5

    class Declares(ipm):
        uses_own_gradients = False

        def __call__(self, honest, byzantine, ctx):
            return -honest.mean(0).expand_as(byzantine)

    assert ipm.uses_own_gradients is False
    assert Reads.uses_own_gradients is True
    assert Keeps.uses_own_gradients is False
    assert Declares.uses_own_gradients is False


@pytest.mark.parametrize("name", sorted(attacks.REGISTRY))
def test_the_honest_flag_says_whether_an_attack_reads_the_honest_gradients(name):
    """An attack flagged ``uses_honest_gradients = False`` sends the same message when given
    an empty ``[0, d]`` honest tensor (what the simulator then passes) as with the real rows."""
    n, f, d = 9, 3, 12
    gen = torch.Generator().manual_seed(0)
    honest = torch.randn(n - f, d, generator=gen)
    own = torch.randn(f, d, generator=gen)
    guiding = torch.randn(n, d, generator=gen)
    byz = torch.zeros(n, dtype=torch.bool)
    byz[[0, 4, 7]] = True
    attack = attacks.get(name)
    if type(attack).uses_honest_gradients:
        return  # read or not, the rows are passed: nothing to check
    with_rows = attack(honest, own, _attack_ctx(n, f, byz, guiding))
    without = attack(honest[:0], own, _attack_ctx(n, f, byz, guiding))
    assert torch.equal(with_rows, without)


def test_attacks_built_from_their_own_gradient_or_noise_skip_the_honest_copy():
    flagged = {k for k, a in attacks.REGISTRY.items() if not a.uses_honest_gradients}
    assert {"sign_flip", "gaussian", "same_value", "inf", "backdoor", "label_flip"} <= flagged
    assert not {"alie", "ipm", "min_max", "mimic", "adaptive"} & flagged

    class Reads(type(attacks.get("sign_flip"))):
        def __call__(self, honest, byzantine, ctx):
            return byzantine + honest.mean(0)

    assert Reads.uses_honest_gradients is True


@pytest.mark.parametrize("attack", ["sign_flip", "alie"])
def test_simulator_passes_the_honest_rows_only_to_attacks_that_read_them(monkeypatch, attack):
    seen: list[int] = []
    cls = type(attacks.get(attack))
    real = cls.__call__

    def spy(self, honest, byzantine, ctx):
        seen.append(int(honest.shape[0]))
        return real(self, honest, byzantine, ctx)

    monkeypatch.setattr(cls, "__call__", spy)
    cfg = make_config(tiny_config(rounds=2, attack={"name": attack, "f": 2}))
    sim = Simulation(cfg)
    sim.step(1)
    assert seen == ([0] if attack == "sign_flip" else [cfg.clients.n - 2])
