"""ALIE, IPM, Min-Max / Min-Sum and the adaptive DiverseFL attack against hand computations and
plain-loop references."""

from __future__ import annotations

import math
from statistics import NormalDist, pstdev

import numpy as np
import pytest
import torch

from diversefl import aggregators, attacks
from diversefl.aggregators import RoundContext
from diversefl.attacks.alie import alie_z_max
from diversefl.attacks.min_max import agr_agnostic_gamma, gamma_scale, perturbation_vector


def _ctx(n: int, f: int, **kw) -> RoundContext:
    return RoundContext(round=1, n=n, f=f, generator=torch.Generator().manual_seed(0), **kw)


def _rows(t: torch.Tensor) -> list[list[float]]:
    return [[float(x) for x in row] for row in t]


def _dist(a: list[float], b: list[float]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


# -- ALIE ---------------------------------------------------------------------------------


def test_alie_z_max_hand_computation():
    # n = 23, f = 5: s = floor(23 / 2 + 1) - 5 = floor(12.5) - 5 = 7 supporters needed,
    # z_max = Phi^{-1}((23 - 7) / 23) = Phi^{-1}(0.695652...) = 0.511936...
    assert alie_z_max(23, 5) == pytest.approx(0.5119362138713294, abs=1e-12)
    assert alie_z_max(23, 5) == pytest.approx(NormalDist().inv_cdf(16 / 23), abs=1e-12)
    # n = 50, f = 24: s = 26 - 24 = 2, z = Phi^{-1}(48 / 50)
    assert alie_z_max(50, 24) == pytest.approx(NormalDist().inv_cdf(0.96), abs=1e-12)
    assert math.isfinite(alie_z_max(10, 9))  # Byzantine majority: s clamped to 1


@pytest.mark.parametrize("z", [None, 1.5])
def test_alie_sends_mean_minus_z_std_plain_loops(z):
    n, f, d = 23, 5, 4
    gen = torch.Generator().manual_seed(1)
    honest = torch.randn(n - f, d, generator=gen, dtype=torch.float64)
    byz = torch.randn(f, d, generator=gen, dtype=torch.float64)
    out = attacks.get("alie", z=z)(honest, byz, _ctx(n, f))
    zz = NormalDist().inv_cdf(16 / 23) if z is None else z
    rows = _rows(honest)
    m = len(rows)
    for j in range(d):
        mu = sum(r[j] for r in rows) / m
        sigma = math.sqrt(sum((r[j] - mu) ** 2 for r in rows) / m)  # population std
        for k in range(f):
            assert float(out[k, j]) == pytest.approx(mu - zz * sigma, abs=1e-12)


# -- IPM ----------------------------------------------------------------------------------


def test_ipm_direction_and_norm():
    gen = torch.Generator().manual_seed(2)
    honest, byz = torch.randn(6, 9, generator=gen), torch.randn(3, 9, generator=gen)
    out = attacks.get("ipm", epsilon=0.3)(honest, byz, _ctx(9, 3))
    mean = honest.mean(0)
    assert out.shape == (3, 9)
    for row in out:
        cos = torch.nn.functional.cosine_similarity(row, mean, dim=0)
        assert float(cos) == pytest.approx(-1.0, abs=1e-6)
        assert float(row.norm()) == pytest.approx(0.3 * float(mean.norm()), rel=1e-6)


# -- Min-Max / Min-Sum --------------------------------------------------------------------


def _holds(rule: str, mal: list[float], rows: list[list[float]]) -> bool:
    """The rule's bound with plain loops (a tiny relative slack for float rounding)."""
    if rule == "max":
        lhs = max(_dist(mal, h) for h in rows)
        rhs = max(_dist(a, b) for a in rows for b in rows)
    else:
        lhs = sum(_dist(mal, h) ** 2 for h in rows)
        rhs = max(sum(_dist(a, b) ** 2 for b in rows) for a in rows)
    return lhs <= rhs * (1 + 1e-9)


@pytest.mark.parametrize("name,rule", [("min_max", "max"), ("min_sum", "sum")])
@pytest.mark.parametrize("perturbation", ["std", "unit", "sign"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agr_agnostic_gamma_is_at_the_edge(name, rule, perturbation, seed):
    gen = torch.Generator().manual_seed(seed)
    honest = torch.randn(7, 5, generator=gen, dtype=torch.float64) + 0.5
    byz = torch.zeros(2, 5, dtype=torch.float64)
    tol = 1e-3
    out = attacks.get(name, perturbation=perturbation, tol=tol)(honest, byz, _ctx(9, 2))
    assert out.shape == (2, 5) and torch.equal(out[0], out[1])
    rows = _rows(honest)
    mean = [sum(r[j] for r in rows) / len(rows) for j in range(5)]
    p = perturbation_vector(honest, perturbation)
    assert [float(x) for x in p] == pytest.approx(_hand_direction(rows, perturbation), rel=1e-6)
    scale = gamma_scale(honest, p, perturbation)
    gamma = agr_agnostic_gamma(honest, p, rule, tol=tol, scale=scale)
    expected = [mean[j] + gamma * float(p[j]) for j in range(5)]
    # the message pushes against the honest mean (the paper's "inverse" directions)
    push = [float(out[0][j]) - mean[j] for j in range(5)]
    if perturbation == "std":
        assert all(x < 0 for x in push)
    else:
        assert sum(x * m for x, m in zip(push, mean, strict=True)) < 0
    assert [float(x) for x in out[0]] == pytest.approx(expected, abs=1e-12)
    assert gamma > 0
    assert _holds(rule, expected, rows)
    larger = [mean[j] + (gamma + tol * scale) * float(p[j]) for j in range(5)]
    assert not _holds(rule, larger, rows)


def _hand_direction(rows: list[list[float]], kind: str) -> list[float]:
    """The attack's direction by hand: -(population std), -mean / |mean| or -sign(mean)."""
    cols = list(zip(*rows, strict=True))
    mean = [sum(c) / len(c) for c in cols]
    if kind == "std":
        return [-pstdev(c) for c in cols]
    if kind == "unit":
        norm = math.sqrt(sum(m * m for m in mean))
        return [-m / norm for m in mean]
    return [-math.copysign(1.0, m) if m else 0.0 for m in mean]


def test_perturbation_directions_on_a_hand_example():
    """-std, -mean/|mean| and -sign(mean) of three 2-d rows, worked by hand."""
    honest = torch.tensor([[1.0, -2.0], [3.0, -2.0], [5.0, 1.0]])
    # column 0: mean 3, population std sqrt(8/3); column 1: mean -1, std sqrt(2)
    std = perturbation_vector(honest, "std")
    assert std.tolist() == pytest.approx([-math.sqrt(8 / 3), -math.sqrt(2)])
    assert perturbation_vector(honest, "unit").tolist() == pytest.approx(
        [-3 / math.sqrt(10), 1 / math.sqrt(10)]
    )
    assert perturbation_vector(honest, "sign").tolist() == [-1.0, 1.0]


def _exact_edge(honest: np.ndarray, p: np.ndarray, rule: str) -> float:
    """The largest feasible gamma in closed form: the positive root of the quadratic
    ``c g^2 + 2 b g + a = bound`` (Min-Max: the first row to reach the bound; Min-Sum: the
    sum over rows, whose b terms cancel), in float64 numpy."""
    mu = honest.mean(0)
    diff = mu[None, :] - honest
    a, b, c = (diff**2).sum(1), diff @ p, float(p @ p)
    sq = ((honest[:, None, :] - honest[None, :, :]) ** 2).sum(2)
    if rule == "max":
        bound = sq.max()
        return float(
            min(
                (-bi + math.sqrt(bi * bi - c * (ai - bound))) / c
                for ai, bi in zip(a, b, strict=True)
            )
        )
    m = len(honest)
    return math.sqrt(m * c * (sq.sum(1).max() - a.sum())) / (m * c)


@pytest.mark.parametrize("rule", ["max", "sum"])
@pytest.mark.parametrize("perturbation", ["std", "unit", "sign"])
@pytest.mark.parametrize("size", [1.0, 1e-3, 3e-4])
def test_agr_agnostic_search_finds_the_edge_at_any_gradient_scale(rule, perturbation, size):
    """Gradients of size 1e-3 and smaller: with -sign(mean) (length sqrt(d)) the feasible gamma
    is ~1e-3; a tolerance in absolute gamma would stop at gamma 0 there (no attack). The search
    lands within tol of the closed-form edge in units of |std| / |p| at every scale."""
    gen = torch.Generator().manual_seed(7)
    honest = (torch.randn(18, 2000, generator=gen) + 0.3) * size
    attack = attacks.get("min_max" if rule == "max" else "min_sum", perturbation=perturbation)
    sent = attack(honest, torch.zeros(5, 2000), _ctx(23, 5))[0].double()
    h = honest.double().numpy()
    mu = h.mean(0)  # the direction in numpy, not from the code under test
    p = {"std": -h.std(0), "unit": -mu / np.linalg.norm(mu), "sign": -np.sign(mu)}[perturbation]
    edge = _exact_edge(h, p, rule)
    gamma = float((sent.numpy() - h.mean(0)) @ p / (p @ p))  # the gamma that was sent
    unit = float(np.linalg.norm(h.std(0))) / float(np.linalg.norm(p))
    assert edge > 0
    assert gamma <= edge * (1 + 1e-6)  # feasible (float32 message: relative slack)
    assert edge - gamma <= attack.tol * unit + 1e-6 * edge  # within tol, in units of the spread
    if perturbation == "std":
        assert unit == pytest.approx(1.0)


# -- adaptive -----------------------------------------------------------------------------


def _adaptive_round(seed: int, n: int = 10, f: int = 3, d: int = 8, guiding=None):
    gen = torch.Generator().manual_seed(seed)
    updates = torch.randn(n, d, generator=gen)
    if guiding is None:
        guiding = torch.randn(n, d, generator=gen) * (0.1 + torch.rand(n, 1, generator=gen))
    byz = torch.zeros(n, dtype=torch.bool)
    byz[torch.randperm(n, generator=gen)[:f]] = True
    ctx = _ctx(n, f, guiding_fn=lambda: guiding, byzantine=byz)
    sent = attacks.get("adaptive")(updates[~byz], updates[byz], ctx)
    full = updates.clone()
    full[byz] = sent
    return full, guiding, byz, ctx, -updates[~byz].mean(0)


@pytest.mark.parametrize("seed", range(8))
def test_adaptive_passes_diversefl_and_does_harm(seed):
    full, guiding, byz, ctx, target = _adaptive_round(seed)
    out = aggregators.get("diversefl")(full, ctx)
    assert bool(out.accepted[byz].all())
    cos = torch.nn.functional.cosine_similarity
    for z, g in zip(full[byz], guiding[byz], strict=True):
        assert float(cos(z, target, dim=0)) > float(cos(g, target, dim=0))
        assert float(z.norm() / g.norm()) == pytest.approx(1.95, rel=1e-5)  # eps2 - margin


def test_adaptive_inside_cone_sends_target_direction_and_antiparallel_case():
    n, f, d = 6, 2, 5
    gen = torch.Generator().manual_seed(3)
    updates = torch.randn(n, d, generator=gen)
    byz = torch.tensor([True, False, False, True, False, False])
    target = -updates[~byz].mean(0)
    guiding = torch.randn(n, d, generator=gen)
    guiding[0] = target + 0.01 * torch.randn(d, generator=gen)  # t well inside the cone
    guiding[3] = -target  # t anti-parallel to g: the fallback orthogonal axis is used
    ctx = _ctx(n, f, guiding_fn=lambda: guiding, byzantine=byz)
    sent = attacks.get("adaptive")(updates[~byz], updates[byz], ctx)
    cos = torch.nn.functional.cosine_similarity
    assert float(cos(sent[0], target, dim=0)) == pytest.approx(1.0, abs=1e-6)
    assert float(cos(sent[1], guiding[3], dim=0)) == pytest.approx(0.05, abs=1e-6)
    full = updates.clone()
    full[byz] = sent
    assert bool(aggregators.get("diversefl")(full, ctx).accepted[byz].all())


def test_adaptive_guide_too_small_for_float32_sends_the_target_instead_of_failing():
    """A guide whose float32 squares underflow (norm 1e-34 here) has no usable ratio in the
    server's float32 test: that client sends the target (as for a zero guide) rather than
    stopping the run; the others still pass at the top of the band."""
    n, f, d = 6, 3, 50
    gen = torch.Generator().manual_seed(5)
    updates = torch.randn(n, d, generator=gen)
    byz = torch.tensor([True, True, False, False, True, False])
    guiding = torch.randn(n, d, generator=gen)
    guiding[1] = guiding[1] / guiding[1].norm() * 1e-34  # float32 norm of it: 0
    assert float(guiding[1].norm()) == 0.0 and float(guiding[1].double().norm()) > 0
    ctx = _ctx(n, f, guiding_fn=lambda: guiding, byzantine=byz)
    sent = attacks.get("adaptive")(updates[~byz], updates[byz], ctx)
    target = -updates[~byz].mean(0)
    assert torch.equal(sent[1], target)
    for row, j in ((0, 0), (2, 4)):
        assert float(sent[row].norm() / guiding[j].norm()) == pytest.approx(1.95, rel=1e-5)


def test_adaptive_end_to_end_is_always_accepted_by_diversefl():
    from conftest import tiny_config

    from diversefl.config import make_config
    from diversefl.engine.simulator import Simulation

    cfg = tiny_config(attack={"name": "adaptive", "f": 2, "byzantine": [1, 4]})
    sim = Simulation(make_config({**cfg, "aggregator": {"name": "diversefl"}}))
    for r in range(1, 4):
        rec = sim.step(r)
        assert bool(rec.accepted[rec.byzantine].all())
    assert bool(torch.isfinite(sim.theta).all())


def _cone_direction_every_branch(guiding, target, cos_min):
    """The cone construction with every case computed on every row and picked by ``where``
    (as the attack was first written): the fast path must give exactly these bits."""
    g, t = guiding.to(torch.float64), target.to(torch.float64)
    u = g / g.norm(dim=1, keepdim=True)
    t_norm = t.norm()
    t_par = u @ t
    perp = t[None, :] - t_par[:, None] * u
    perp_norm = perp.norm(dim=1)
    axis = u.abs().argmin(dim=1)
    e = torch.zeros_like(u).scatter_(1, axis[:, None], 1.0)
    fallback = e - u.gather(1, axis[:, None]) * u
    perp = torch.where((perp_norm <= 1e-12 * t_norm)[:, None], fallback, perp)
    perp_norm = perp.norm(dim=1)
    v = perp / perp_norm.clamp_min(torch.finfo(torch.float64).tiny)[:, None]
    rotated = cos_min * u + math.sqrt(1.0 - cos_min * cos_min) * v
    rotated = torch.where((perp_norm > 0)[:, None], rotated, u)
    inside = (t_par / t_norm) >= cos_min
    return torch.where(inside[:, None], (t / t_norm)[None, :], rotated)


@pytest.mark.parametrize("case", ["ordinary", "inside", "antiparallel", "zero_row", "mixed"])
def test_cone_direction_bit_equal_to_every_branch_reference(case):
    from diversefl.attacks.adaptive import cone_direction

    gen = torch.Generator().manual_seed(11)
    k, d = 5, 301
    target = torch.randn(d, generator=gen)
    guiding = torch.randn(k, d, generator=gen)
    if case in ("inside", "mixed"):
        guiding[1] = target + 0.1 * torch.randn(d, generator=gen)
    if case in ("antiparallel", "mixed"):
        guiding[2] = -3.0 * target
    if case in ("zero_row", "mixed"):
        guiding[4] = 0.0
    for cos_min in (0.05, 0.7):
        got = cone_direction(guiding, target, cos_min)
        ref = _cone_direction_every_branch(guiding, target, cos_min)
        assert torch.equal(got.isnan(), ref.isnan())
        assert torch.equal(got.nan_to_num(), ref.nan_to_num())


def test_adaptive_attack_and_server_share_one_guide_when_the_defense_assumes_another_f(
    monkeypatch,
):
    """With aggregator.assumed_f != attack.f the attack gets its own round context (its true
    f); the guiding gradients are still computed once a round, so attacker and server test
    the same guides (with dropout, a second computation would draw other masks)."""
    from conftest import tiny_config

    from diversefl.config import make_config
    from diversefl.engine.simulator import Simulation

    cfg = tiny_config(attack={"name": "adaptive", "f": 2, "byzantine": [1, 4]})
    cfg["aggregator"] = {"name": "diversefl", "assumed_f": 3}
    sim = Simulation(make_config(cfg))
    calls = []
    real = sim.guiding
    monkeypatch.setattr(sim, "guiding", lambda theta, r=None: calls.append(1) or real(theta, r))
    for r in range(1, 4):
        rec = sim.step(r)
        assert bool(rec.accepted[rec.byzantine].all())
    assert len(calls) == 3
