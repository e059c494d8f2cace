"""FLTrust, GeoMed and centered clipping against hand computations and plain-loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diversefl import aggregators
from diversefl.aggregators import AggregatorError, RoundContext


def _ctx(n: int, f: int = 0, r: int = 1, **kw) -> RoundContext:
    return RoundContext(round=r, n=n, f=f, generator=torch.Generator().manual_seed(0), **kw)


def _fltrust_ctx(n: int, g0: torch.Tensor, calls: list | None = None) -> RoundContext:
    def grad_fn(idx: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            calls.append(idx.clone())
        return g0.clone()

    shared = torch.tensor([4, 9, 4, 1, 7, 30, 12, 9, 2, 5, 40, 41])  # 10 distinct indices
    return _ctx(n, server_grad_fn=grad_fn, shared_samples=shared)


# -- FLTrust ------------------------------------------------------------------------------


def test_fltrust_hand_example():
    # g0 = (2, 0), |g0| = 2.
    # z1 = (3, 4):  |z1| = 5,   cos = 6 / 10 = 0.6          -> TS = 0.6,    rescaled (1.2, 1.6)
    # z2 = (1, 1):  |z2| = √2,  cos = 2 / (2√2) = 0.70711   -> TS = 0.70711, rescaled (√2, √2)
    # z3 = (-1, 1): cos = -2 / (2√2) = -0.70711             -> TS = 0 (ReLU)
    # aggregate = (0.6 (1.2, 1.6) + 0.70711 (1.41421, 1.41421)) / 1.30711
    #           = (0.72 + 1, 0.96 + 1) / 1.30711 = (1.315883, 1.499495)
    updates = torch.tensor([[3.0, 4.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
    g0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    out = aggregators.get("fltrust")(updates, _fltrust_ctx(3, g0))
    torch.testing.assert_close(
        out.scores["trust"], torch.tensor([0.6, math.sqrt(0.5), 0.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        out.update, torch.tensor([1.315883311720441, 1.4994949366116652], dtype=torch.float64)
    )
    assert out.accepted.tolist() == [True, True, False]


def test_fltrust_all_negative_gives_zero_and_root_data_is_fixed():
    updates = torch.tensor([[-1.0, 0.5], [-2.0, -3.0], [-0.1, 0.0]])
    calls: list[torch.Tensor] = []
    agg = aggregators.get("fltrust", root_size=4, root_seed=3)
    out = agg(updates, _fltrust_ctx(3, torch.tensor([1.0, 0.0]), calls))
    assert torch.equal(out.update, torch.zeros(2))
    assert not bool(out.accepted.any())
    agg(updates, _fltrust_ctx(3, torch.tensor([1.0, 0.0]), calls))
    shared = {4, 9, 1, 7, 30, 12, 2, 5, 40, 41}
    assert calls[0].numel() == 4 and len(set(calls[0].tolist())) == 4
    assert set(calls[0].tolist()) <= shared
    assert torch.equal(calls[0], calls[1])  # same root data every round
    aggregators.get("fltrust", root_size=100)(updates, _fltrust_ctx(3, torch.ones(2), calls))
    assert sorted(calls[2].tolist()) == sorted(shared)  # min(root_size, available)


def test_fltrust_needs_server_data():
    with pytest.raises(AggregatorError, match="server"):
        aggregators.get("fltrust")(torch.randn(3, 2), _ctx(3))


# -- GeoMed -------------------------------------------------------------------------------


def _numpy_weiszfeld(points: np.ndarray, iters: int, eps: float, tol: float) -> np.ndarray:
    z = points.mean(axis=0)
    obj = sum(max(eps, float(np.linalg.norm(z - p))) for p in points)
    for _ in range(iters):
        betas = [1.0 / max(eps, float(np.linalg.norm(z - p))) for p in points]
        z = sum(b * p for b, p in zip(betas, points, strict=True)) / sum(betas)
        new = sum(max(eps, float(np.linalg.norm(z - p))) for p in points)
        if abs(obj - new) <= tol * new:
            break
        obj = new
    return z


@pytest.mark.parametrize("seed", [0, 1])
def test_geomed_matches_numpy_weiszfeld(seed):
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(9, 6))
    points[0] += 50.0
    out = aggregators.get("geomed")(torch.from_numpy(points), _ctx(9, 1))
    ref = _numpy_weiszfeld(points, 100, 1e-6, 1e-7)
    np.testing.assert_allclose(out.update.numpy(), ref, atol=1e-9)
    assert bool(out.accepted.all())
    assert float(out.scores["weight"].sum()) == pytest.approx(1.0)


def test_geomed_triangle_with_far_outlier():
    # Triangle (0,0), (1,0), (0,1) and an outlier on the symmetry axis y = x. At m = (0.5, 0.5)
    # the unit vectors toward (1,0) and (0,1) cancel, and those toward (0,0) and the outlier,
    # (-1,-1)/√2 and (1,1)/√2, cancel too: m is the geometric median, wherever the outlier sits
    # on the axis (only its direction enters the optimality condition), while the mean moves.
    tri = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    agg = aggregators.get("geomed", tol=0.0)  # run all 100 iterations
    for far in (100.0, 1e4):
        points = torch.tensor([*tri, [far, far]], dtype=torch.float64)
        out = agg(points, _ctx(4, 1))
        torch.testing.assert_close(
            out.update, torch.tensor([0.5, 0.5], dtype=torch.float64), atol=1e-5, rtol=0
        )
        assert int(out.scores["weight"].argmin()) == 3  # the outlier has the smallest weight


# -- centered clipping --------------------------------------------------------------------


def _plain_cc_step(rows: list[list[float]], v: list[float], tau: float) -> list[float]:
    total = [0.0] * len(v)
    for row in rows:
        diff = [x - y for x, y in zip(row, v, strict=True)]
        norm = math.sqrt(sum(x * x for x in diff))
        scale = min(1.0, tau / norm) if norm > 0 else 1.0
        total = [t + scale * x for t, x in zip(total, diff, strict=True)]
    return [y + t / len(rows) for y, t in zip(v, total, strict=True)]


def test_centered_clipping_steps_and_momentum_vs_plain_loop():
    gen = torch.Generator().manual_seed(5)
    agg = aggregators.get("centered_clipping", tau=1.0, beta=0.9)
    u1 = torch.randn(5, 3, generator=gen, dtype=torch.float64) * 2
    u2 = torch.randn(5, 3, generator=gen, dtype=torch.float64) * 2 + 1
    out1 = agg(u1, _ctx(5, r=1))
    exp1 = _plain_cc_step([[float(x) for x in r] for r in u1], [0.0] * 3, 1.0)  # from zero
    assert [float(x) for x in out1.update] == pytest.approx(exp1, abs=1e-12)
    norms = (u1).norm(dim=1)
    assert out1.scores["clipped"].tolist() == [float(x > 1.0) for x in norms]
    assert bool(out1.accepted.all())
    again = agg(u1, _ctx(5, r=1))  # same round again: same start point, same result
    torch.testing.assert_close(again.update, out1.update)
    out2 = agg(u2, _ctx(5, r=2))  # round 2 starts at round 1's aggregate
    exp2 = _plain_cc_step([[float(x) for x in r] for r in u2], exp1, 1.0)
    assert [float(x) for x in out2.update] == pytest.approx(exp2, abs=1e-12)
    ema = [0.9 * a + 0.1 * b for a, b in zip(exp1, exp2, strict=True)]
    assert [float(x) for x in agg.momentum] == pytest.approx(ema, abs=1e-12)


def test_centered_clipping_iterations_vs_plain_loop():
    """iters = 3: the plain step applied three times from zero; tau small enough that rows
    are still clipped in the last iteration (its ``clipped`` score)."""
    gen = torch.Generator().manual_seed(8)
    u = torch.randn(6, 4, generator=gen, dtype=torch.float64) * 3
    u[5] += 20.0  # an outlier that stays clipped
    out = aggregators.get("centered_clipping", tau=0.5, iters=3)(u, _ctx(6, r=1))
    rows = [[float(x) for x in r] for r in u]
    v = [0.0] * 4
    for _ in range(3):
        before = v
        v = _plain_cc_step(rows, v, 0.5)
    assert [float(x) for x in out.update] == pytest.approx(v, abs=1e-12)
    last = [math.dist(r, before) > 0.5 for r in rows]  # clipped in the third step
    assert out.scores["clipped"].tolist() == [float(c) for c in last]
    assert last[5]  # the outlier is still clipped after two steps
    one = aggregators.get("centered_clipping", tau=0.5, iters=1)(u, _ctx(6, r=1))
    assert not torch.allclose(one.update, out.update)  # the extra iterations matter here


def test_centered_clipping_state_round_trip():
    gen = torch.Generator().manual_seed(6)
    rounds = [torch.randn(4, 3, generator=gen) * 3 for _ in range(3)]
    a = aggregators.get("centered_clipping", tau=0.5, iters=2)
    for r, u in enumerate(rounds[:2], start=1):
        a(u, _ctx(4, r=r))
    b = aggregators.get("centered_clipping", tau=0.5, iters=2)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(rounds[2], _ctx(4, r=3)).update, a(rounds[2], _ctx(4, r=3)).update)
    fresh = aggregators.get("centered_clipping", tau=0.5, iters=2)
    assert fresh.state_dict() == {"momentum": None, "start": None, "round": None}


# -- malformed rows -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fltrust", "geomed", "centered_clipping"])
def test_nan_row_rejected_and_output_finite(name):
    gen = torch.Generator().manual_seed(7)
    updates = torch.randn(6, 4, generator=gen) + 1.0
    updates[2, 1] = float("nan")
    ctx = _fltrust_ctx(6, torch.ones(4)) if name == "fltrust" else _ctx(6, 1)
    out = aggregators.get(name)(updates, ctx)
    assert not bool(out.accepted[2])
    assert bool(torch.isfinite(out.update).all())
    assert out.update.shape == (4,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,d", [(1, 40), (5, 37), (23, 64), (23, 100_003)])
def test_geomed_distances_row_by_row_equal_the_whole_block(monkeypatch, dtype, n, d):
    """The row-at-a-time distances give exactly the bits of one ``[n, chunk]`` difference per
    chunk (the plain formula), across several column chunks."""
    from diversefl.aggregators import geomed

    monkeypatch.setattr(geomed, "_CHUNK", 32 if d < 1000 else 40_000)
    monkeypatch.setattr(geomed, "_ROWWISE_FROM", 1)
    g = torch.Generator().manual_seed(n + d)
    points = (torch.randn(n, d, generator=g) * torch.logspace(-3, 1, d)).to(dtype)
    z = points.double().mean(0) + 1e-3
    want = torch.zeros(n, dtype=torch.float64)
    for start in range(0, d, geomed._CHUNK):
        block = points[:, start : start + geomed._CHUNK].double()
        want += (block - z[None, start : start + geomed._CHUNK]).square().sum(1)
    assert torch.equal(geomed._distances(points, z), want.sqrt())


@pytest.mark.parametrize("loss", ["mean", "sum"])
def test_fltrust_root_gradient_is_on_the_clients_scale(loss):
    """The server's root gradient (FLTrust's g0) is what an honest client would send: the
    mean-loss gradient, times the clients' batch size when each client sends the gradient of
    its summed loss. Reference: a plain autograd pass on the model."""
    import torch.nn.functional as F
    from conftest import tiny_config
    from torch.func import functional_call

    from diversefl.config import make_config
    from diversefl.engine.simulator import Simulation

    cfg = tiny_config(
        clients={"n": 6, "batch": 20, "sample": 8, "loss": loss}, aggregator={"name": "fltrust"}
    )
    sim = Simulation(make_config(cfg))
    theta = sim.theta + 0.01 * torch.randn(sim.fm.dim, generator=torch.Generator().manual_seed(1))
    idx = torch.tensor([3, 50, 700, 1200, 1400])
    params = {k: v.detach().requires_grad_(True) for k, v in sim.fm.unflatten(theta).items()}
    logits = functional_call(sim.fm.module, (params, sim.fm.buffers), (sim.x_train[idx],))
    grads = torch.autograd.grad(F.cross_entropy(logits, sim.y_train[idx]), list(params.values()))
    want = torch.cat([g.reshape(-1) for g in grads]) * (20.0 if loss == "sum" else 1.0)
    assert bool((sim.batch_k == 20).all())
    torch.testing.assert_close(sim.server_gradient(theta, idx), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("offset", "scale"), [(2.0, 1.0), (2.0, 1e4), (1e7, 1e-3)])
def test_geomed_gram_distances_match_coordinate_distances(offset, scale):
    """The O(n^2) Gram-form distances to ``z = w @ points`` equal the coordinate formula, also
    where they cancel: rows far from the origin and close together (offset 1e7, spread 1e-3:
    the Gram form alone is off by far more than 1e-9) and ``z`` on top of a row."""
    from diversefl.aggregators.geomed import gram_distances
    from diversefl.aggregators.gram import float64_gram

    g = torch.Generator().manual_seed(3)
    points = torch.randn(7, 300, generator=g, dtype=torch.float64) * scale + offset
    gram = float64_gram(points)
    for weights in (
        torch.full((7,), 1 / 7, dtype=torch.float64),
        torch.rand(7, generator=g, dtype=torch.float64).softmax(0),
        torch.eye(7, dtype=torch.float64)[4],  # z is row 4 itself
    ):
        z = weights @ points.double()
        want = (points.double() - z).norm(dim=1)
        got = gram_distances(points, gram, weights)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12 * scale)
    assert float(got[4]) == 0.0


def test_geomed_of_a_majority_of_identical_rows_is_that_row():
    """Four identical rows and three others: the median is the repeated row, up to the
    smoothing (eps caps the repeated row's weight), as the plain numpy loop finds it."""
    g = torch.Generator().manual_seed(5)
    row = torch.randn(50, generator=g, dtype=torch.float64) * 100
    points = torch.cat([row.expand(4, 50), torch.randn(3, 50, generator=g, dtype=torch.float64)])
    out = aggregators.get("geomed")(points, _ctx(7, 2))
    torch.testing.assert_close(out.update, row, rtol=1e-5, atol=0)
    np.testing.assert_allclose(
        out.update.numpy(), _numpy_weiszfeld(points.numpy(), 100, 1e-6, 1e-7), atol=1e-9
    )


@pytest.mark.parametrize("big", [1e9, 1e10])
def test_geomed_with_huge_rows_that_cancel_matches_the_plain_loop(big):
    """Five huge rows summing to zero next to 18 small ones: the weighted mean is small, but
    the Gram form's rounding scales with the huge rows, so the small rows' distances must be
    recomputed from coordinates (a threshold scaled by ``|z_i|^2 + |z|^2`` missed them and
    was off by up to 1.3 here)."""
    g = torch.Generator().manual_seed(11)
    honest = torch.randn(18, 5000, generator=g, dtype=torch.float64) * 0.1
    u = torch.randn(4, 5000, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    points = torch.cat([honest, torch.cat([u, -u.sum(0, keepdim=True)]) * big])
    out = aggregators.get("geomed")(points, _ctx(23, 5))
    ref = _numpy_weiszfeld(points.numpy(), 100, 1e-6, 1e-7)
    np.testing.assert_allclose(out.update.numpy(), ref, rtol=0, atol=1e-7)
