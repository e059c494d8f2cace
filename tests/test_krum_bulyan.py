"""Tests for Krum, Multi-Krum and Bulyan against plain-loop references and hand-checked cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diversefl import aggregators
from diversefl.aggregators import AggregatorError, RoundContext
from diversefl.aggregators import bulyan as bulyan_module
from diversefl.aggregators.bulyan import Bulyan
from diversefl.aggregators.krum import Krum, MultiKrum, krum_scores, pairwise_sq_dists


def ctx_for(n: int, f: int) -> RoundContext:
    return RoundContext(round=1, n=n, f=f, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- plain-Python references


def sq_dist(a: list[float], b: list[float]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))


def neighbours(n_remaining: int, f: int) -> int:
    """The documented neighbour count: n - f - 2 clamped to [1, n - 1]."""
    return min(max(n_remaining - f - 2, 1), n_remaining - 1)


def ref_krum_scores(rows: list[list[float]], f: int) -> list[float]:
    """Sum of squared distances to the n - f - 2 nearest other rows, by nested loops."""
    n = len(rows)
    k = neighbours(n, f)
    scores = []
    for i in range(n):
        others = sorted(sq_dist(rows[i], rows[j]) for j in range(n) if j != i)
        scores.append(sum(others[:k]))
    return scores


def ref_bulyan(x: np.ndarray, f: int) -> tuple[list[int], np.ndarray]:
    """Bulyan by loops: Krum recomputed from scratch on each remaining subset, then a
    per-coordinate mean of the beta values closest to the median (ties toward smaller)."""
    n, d = x.shape
    theta, beta = n - 2 * f, n - 4 * f
    remaining = list(range(n))
    picked = []
    while len(picked) < theta:
        rows = [list(map(float, x[i])) for i in remaining]
        scores = ref_krum_scores(rows, f)
        best = min(range(len(remaining)), key=lambda j: (scores[j], j))
        picked.append(remaining.pop(best))
    out = np.zeros(d)
    for u in range(d):
        values = [float(x[i, u]) for i in picked]
        med = float(np.median(values))
        closest = sorted(values, key=lambda v: (abs(v - med), v))[:beta]
        out[u] = sum(closest) / beta
    return picked, out


# ---------------------------------------------------------------- krum_scores


@pytest.mark.parametrize(("n", "f", "d", "seed"), [(5, 1, 3, 0), (9, 3, 7, 1), (23, 5, 11, 2)])
def test_krum_scores_match_loop_reference(n: int, f: int, d: int, seed: int) -> None:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    got = krum_scores(pairwise_sq_dists(x), f)
    want = ref_krum_scores(x.double().tolist(), f)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_distances_exact_for_large_norms() -> None:
    # All rows share a large offset: the float32 Gram trick would cancel to noise here.
    g = torch.Generator().manual_seed(3)
    x = (1e4 + 1e-2 * torch.randn(8, 1000, generator=g)).float()
    dist = pairwise_sq_dists(x)
    rows = x.double().tolist()
    want = [[sq_dist(a, b) for b in rows] for a in rows]
    np.testing.assert_allclose(dist.numpy(), want, rtol=1e-10)
    assert torch.equal(dist, dist.T)
    assert bool((dist.diagonal() == 0).all())
    np.testing.assert_allclose(krum_scores(dist, 2).numpy(), ref_krum_scores(rows, 2), rtol=1e-10)


def test_distances_chunked_across_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    from diversefl.aggregators import gram as gram_module

    x = torch.randn(6, 50, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x[1] = x[0] + 1e-6 * x[2]  # a pair the Gram form could cancel: recomputed exactly
    whole = pairwise_sq_dists(x)
    monkeypatch.setattr(gram_module, "CHUNK", 7)
    np.testing.assert_allclose(pairwise_sq_dists(x).numpy(), whole.numpy(), rtol=1e-12)


# ---------------------------------------------------------------- hand-checked 2-D example

# Client 0 is a far outlier; 1-6 are a loose cloud around (1, 1.5), client 2 in its middle.
POINTS = torch.tensor(
    [[50.0, -40.0], [0.0, 0.0], [1.0, 1.1], [2.1, 0.2], [0.1, 1.9], [1.8, 2.2], [0.6, 3.3]],
    dtype=torch.float64,
)


def test_krum_picks_the_centre_by_eye() -> None:
    # n=7, f=1: 4 nearest neighbours. Client 2's squared distances to clients 1, 3, 4, 5, 6 are
    # 1+1.21, 1.21+0.81, 0.81+0.64, 0.64+1.21, 0.16+4.84 = 2.21, 2.02, 1.45, 1.85, 5.0; the 4
    # smallest sum to 7.53. Every other client's sum is larger (client 4: 10.26, client 5:
    # 11.57), and the outlier's is ~16000. Expected selection: client 2.
    result = Krum()(POINTS, ctx_for(7, 1))
    assert result.accepted.tolist() == [False, False, True, False, False, False, False]
    assert torch.equal(result.update, POINTS[2])
    assert float(result.scores["krum"][2]) == pytest.approx(7.53)
    assert int(result.scores["krum"].argmax()) == 0


def test_multi_krum_by_eye() -> None:
    # Same scores: the 3 lowest are clients 2 (7.53), 4 (10.26) and 5 (11.57).
    result = MultiKrum(m=3)(POINTS, ctx_for(7, 1))
    assert result.accepted.nonzero().flatten().tolist() == [2, 4, 5]
    torch.testing.assert_close(result.update, POINTS[[2, 4, 5]].mean(0))
    # default m = n - f = 6: everyone but the outlier
    default = MultiKrum()(POINTS, ctx_for(7, 1))
    assert default.accepted.tolist() == [False] + [True] * 6


def test_bulyan_by_eye() -> None:
    # n=7, f=1: theta = 5 selected, beta = 3 values kept per coordinate.
    # Recursive Krum picks 2 (4 nbrs), then 4 (3 nbrs), 5 (2 nbrs), then with 1 neighbour the
    # nearest pair 1-3 ties (4.45) -> 1, and the last pick ties 3/6 (11.86) -> 3 (ties go to the
    # lowest index; with one neighbour the closest pair always ties). Selection {1,2,3,4,5}:
    # the outlier 0 and the remote client 6 are out.
    # x of the selection: 0, 1.0, 2.1, 0.1, 1.8 -> median 1.0, 3 closest: 1.0, 1.8, 0.1
    # y of the selection: 0, 1.1, 0.2, 1.9, 2.2 -> median 1.1, 3 closest: 1.1, 1.9, 0.2
    result = Bulyan()(POINTS, ctx_for(7, 1))
    assert result.accepted.tolist() == [False, True, True, True, True, True, False]
    torch.testing.assert_close(result.update, torch.tensor([2.9 / 3, 3.2 / 3], dtype=torch.float64))
    assert result.scores["bulyan_rank"][[2, 4, 5, 1, 3]].tolist() == [0, 1, 2, 3, 4]
    assert bool(result.scores["bulyan_rank"][[0, 6]].isnan().all())


# ---------------------------------------------------------------- Bulyan vs loop reference


@pytest.mark.parametrize(
    ("n", "f", "d", "seed"),
    [(7, 1, 4, 0), (11, 2, 5, 1), (16, 3, 6, 2), (23, 5, 9, 3), (3, 0, 2, 4), (8, 1, 3, 5)],
)
def test_bulyan_matches_loop_reference(n: int, f: int, d: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x[:f] = x[:f] * 5 + 3  # make the first f rows outlying
    picked, want = ref_bulyan(x.double().numpy(), f)
    result = Bulyan()(x, ctx_for(n, f))
    assert result.accepted.nonzero().flatten().tolist() == sorted(picked)
    order = result.scores["bulyan_rank"]
    assert order[picked].tolist() == list(range(len(picked)))
    np.testing.assert_allclose(result.update.double().numpy(), want, rtol=1e-5, atol=1e-6)


def test_bulyan_computes_distances_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = bulyan_module.pairwise_sq_dists

    def counting(updates: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return real(updates)

    monkeypatch.setattr(bulyan_module, "pairwise_sq_dists", counting)
    Bulyan()(torch.randn(23, 4, generator=torch.Generator().manual_seed(0)), ctx_for(23, 5))
    assert len(calls) == 1


# ---------------------------------------------------------------- invariances and robustness


RULES = [
    pytest.param(Krum(), id="krum"),
    pytest.param(MultiKrum(), id="multi_krum"),
    pytest.param(MultiKrum(m=4), id="multi_krum_m4"),
    pytest.param(Bulyan(), id="bulyan"),
]


@pytest.mark.parametrize("agg", RULES)
def test_permutation_invariance(agg: aggregators.Aggregator) -> None:
    # f = 3 keeps at least 2 neighbours in every Bulyan step, so continuous data has no ties.
    n, f = 16, 3
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    x[:f] *= 30.0  # outliers far from everyone, each other included
    perm = torch.randperm(n, generator=g)
    base = agg(x, ctx_for(n, f))
    permuted = agg(x[perm], ctx_for(n, f))
    torch.testing.assert_close(permuted.update, base.update)
    assert torch.equal(permuted.accepted, base.accepted[perm])
    assert not bool(base.accepted[:f].any())


@pytest.mark.parametrize("agg", RULES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), 1e20])
def test_non_finite_row_rejected(agg: aggregators.Aggregator, bad: float) -> None:
    n, f = 11, 2
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(8))
    x[3, 1] = bad
    result = agg(x, ctx_for(n, f))
    assert bool(torch.isfinite(result.update).all())
    assert not bool(result.accepted[3])
    assert result.accepted.shape == (n,)


@pytest.mark.parametrize("agg", RULES)
def test_many_bad_rows_still_aggregate(agg: aggregators.Aggregator) -> None:
    # More malformed rows than f: the rule runs on the 3 valid rows with f = 0.
    n, f = 7, 1
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(9))
    x[[0, 2, 4, 6], 0] = float("nan")
    result = agg(x, ctx_for(n, f))
    assert bool(torch.isfinite(result.update).all())
    assert not bool(result.accepted[[0, 2, 4, 6]].any())
    assert bool(result.accepted.any())


# ---------------------------------------------------------------- check()


@pytest.mark.parametrize("cls", [Krum, MultiKrum])
@pytest.mark.parametrize(("n", "f"), [(4, 1), (2, 0), (6, 2), (3, 1), (22, 10)])
def test_krum_check_rejects_small_n(cls: type, n: int, f: int) -> None:
    with pytest.raises(AggregatorError, match=rf"n={n}, f={f}") as err:
        cls().check(n, f)
    assert "2f + 2" in str(err.value)


@pytest.mark.parametrize("cls", [Krum, MultiKrum])
@pytest.mark.parametrize(("n", "f"), [(3, 0), (5, 1), (7, 2), (23, 5)])
def test_krum_check_accepts(cls: type, n: int, f: int) -> None:
    cls().check(n, f)


@pytest.mark.parametrize("m", [0, -1, 8])
def test_multi_krum_check_m(m: int) -> None:
    with pytest.raises(AggregatorError, match=rf"m={m}, n=7"):
        MultiKrum(m=m).check(7, 1)
    MultiKrum(m=7).check(7, 1)
    MultiKrum(m=1).check(7, 1)


@pytest.mark.parametrize(("n", "f"), [(6, 1), (10, 2), (22, 5), (2, 0), (5, 1)])
def test_bulyan_check_rejects_small_n(n: int, f: int) -> None:
    with pytest.raises(AggregatorError, match=rf"n={n}, f={f}") as err:
        Bulyan().check(n, f)
    assert "4f + 3" in str(err.value)


@pytest.mark.parametrize(("n", "f"), [(23, 5), (7, 1), (11, 2), (3, 0), (30, 5)])
def test_bulyan_check_accepts(n: int, f: int) -> None:
    Bulyan().check(n, f)  # the paper's n=23, f=5 sits exactly on 23 >= 4*5 + 3


def test_registered() -> None:
    assert isinstance(aggregators.get("krum"), Krum)
    assert aggregators.get("multi_krum", m=3) == MultiKrum(m=3)
    assert isinstance(aggregators.get("bulyan"), Bulyan)


def test_pairwise_distances_exact_where_the_gram_form_would_cancel():
    gen = torch.Generator().manual_seed(5)
    d = 3000
    big = torch.full((d,), 1e7, dtype=torch.float32)
    rows = torch.stack(
        [
            big,
            big + torch.where(torch.arange(d) == 7, 1.0, 0.0),  # differs from row 0 by 1 entry
            torch.randn(d, generator=gen),
            torch.randn(d, generator=gen),
        ]
    )
    dist = pairwise_sq_dists(rows)
    ref = torch.zeros(4, 4, dtype=torch.float64)
    for i in range(4):
        for j in range(4):
            ref[i, j] = ((rows[i].double() - rows[j].double()) ** 2).sum()
    assert dist[0, 1] == 1.0  # the Gram form alone gives 0 or garbage here
    torch.testing.assert_close(dist, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    ("name", "n", "f"), [("krum", 6, 2), ("multi_krum", 4, 1), ("bulyan", 10, 2)]
)
def test_rules_called_directly_check_n_and_f(name: str, n: int, f: int) -> None:
    """Called as a function, outside a run's config check, a rule still refuses an f it cannot
    tolerate (Krum: n > 2f + 2; Bulyan: n >= 4f + 3) instead of returning a silent result."""
    ctx = RoundContext(round=1, n=n, f=f, generator=torch.Generator().manual_seed(0))
    with pytest.raises(AggregatorError, match="needs n"):
        aggregators.get(name)(torch.randn(n, 3), ctx)
