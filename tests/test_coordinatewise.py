"""Coordinate-wise rules: median, noisy median and the three trimmed means, each checked
against a plain-Python reference (loops over coordinates, ``sorted``/``statistics``)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from diversefl import aggregators
from diversefl.aggregators import AggregatorError, RoundContext
from diversefl.aggregators.median import Median, coordinate_median
from diversefl.aggregators.noisy_median import NoisyMedian
from diversefl.aggregators.trimmed_mean import (
    TrimmedMean,
    TrimmedMeanGuerraoui,
    TrimmedMeanXie,
    closest_to_median_mean,
    trimmed_count,
)

SHAPES = [(1, 3), (2, 4), (3, 5), (4, 7), (5, 2), (6, 9), (7, 3), (10, 6), (23, 11)]


def ctx(n: int, f: int = 0) -> RoundContext:
    return RoundContext(round=1, n=n, f=f, generator=torch.Generator().manual_seed(0))


# --- plain-Python references ---------------------------------------------------------------


def columns(updates: torch.Tensor) -> list[list[float]]:
    rows = updates.tolist()
    return [[row[u] for row in rows] for u in range(len(rows[0]))]


def ref_median(updates: torch.Tensor) -> list[float]:
    return [statistics.median(col) for col in columns(updates)]


def ref_yin(updates: torch.Tensor, beta: float) -> list[float]:
    n = updates.shape[0]
    b = math.floor(beta * n + 1e-9)
    return [statistics.fmean(sorted(col)[b : n - b]) for col in columns(updates)]


def ref_closest(updates: torch.Tensor, keep: int) -> list[float]:
    out = []
    for col in columns(updates):
        m = statistics.median(col)
        # closest to the median first; equal distances: smaller value first
        out.append(statistics.fmean(sorted(col, key=lambda v: (abs(v - m), v))[:keep]))
    return out


def close(result: torch.Tensor, expected: list[float], atol: float = 1e-9) -> bool:
    return torch.allclose(result, torch.tensor(expected, dtype=result.dtype), atol=atol)


def rules(n: int, f: int) -> list[aggregators.Aggregator]:
    """Every rule that can run with n clients of which f are Byzantine."""
    out = [Median(), NoisyMedian(sigma=0.5), TrimmedMean(beta=0.2)]
    if n - f >= 1:
        out.append(TrimmedMeanXie())
    if n - 2 * f >= 1:
        out.append(TrimmedMeanGuerraoui())
    return out


def reference(agg: aggregators.Aggregator, updates: torch.Tensor, f: int) -> list[float]:
    n = updates.shape[0]
    if isinstance(agg, Median | NoisyMedian):
        return ref_median(updates)
    if isinstance(agg, TrimmedMean):
        return ref_yin(updates, agg.beta)
    if isinstance(agg, TrimmedMeanXie):
        return ref_closest(updates, n - f)
    if isinstance(agg, TrimmedMeanGuerraoui):
        return ref_closest(updates, n - 2 * f)
    raise AssertionError(agg)


# --- agreement with the references -----------------------------------------------------------


@pytest.mark.parametrize(("n", "d"), SHAPES)
@pytest.mark.parametrize("f", [0, 1, 2, 5])
def test_rules_match_python_reference(n: int, d: int, f: int) -> None:
    gen = torch.Generator().manual_seed(1000 * n + 10 * d + f)
    updates = torch.randn(n, d, generator=gen, dtype=torch.float64) * 3
    for agg in rules(n, f):
        result = agg(updates, ctx(n, f))
        assert result.update.shape == (d,)
        assert result.accepted.dtype == torch.bool and bool(result.accepted.all())
        assert close(result.update, reference(agg, updates, f)), agg


@pytest.mark.parametrize("beta", [0.0, 0.05, 0.1, 0.2, 0.3, 0.45, 0.49])
@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_yin_trimmed_mean_betas(beta: float, n: int, d: int) -> None:
    updates = torch.randn(n, d, generator=torch.Generator().manual_seed(n * d), dtype=torch.float64)
    result = TrimmedMean(beta=beta)(updates, ctx(n))
    assert close(result.update, ref_yin(updates, beta))


@pytest.mark.parametrize(("n", "keep"), [(1, 1), (2, 1), (4, 1), (4, 3), (9, 5), (10, 4)])
def test_closest_to_median_mean_matches_reference(n: int, keep: int) -> None:
    updates = torch.randn(n, 8, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    assert close(closest_to_median_mean(updates, keep), ref_closest(updates, keep))


def test_float32_inputs() -> None:
    updates = torch.randn(11, 50, generator=torch.Generator().manual_seed(3))
    for agg in rules(11, 3):
        out = agg(updates, ctx(11, 3)).update
        assert out.dtype == torch.float32
        assert close(out, reference(agg, updates.double(), 3), atol=1e-5)


def test_values_with_many_ties_match_reference() -> None:
    # small integers: lots of equal values and equal distances to the median
    updates = torch.randint(-3, 4, (8, 40), generator=torch.Generator().manual_seed(5)).double()
    for f in (0, 1, 2, 3):
        for agg in rules(8, f):
            assert close(agg(updates, ctx(8, f)).update, reference(agg, updates, f)), (agg, f)


# --- hand-computed examples ------------------------------------------------------------------

# 5 clients, 2 coordinates; client 4 is an outlier in both.
#   coordinate 0: 1, 2, 3, 4, 100   -> sorted 1, 2, 3, 4, 100        median 3
#   coordinate 1: 10, 20, 30, 45, -50 -> sorted -50, 10, 20, 30, 45  median 20
HAND = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 45.0], [100.0, -50.0]])


def test_hand_median() -> None:
    assert Median()(HAND, ctx(5)).update.tolist() == [3.0, 20.0]


def test_hand_median_even_count_is_mean_of_two_middle_values() -> None:
    # coordinate 0: 1, 2, 4, 10 -> (2 + 4) / 2 = 3 ; coordinate 1: 0, 0, 1, 5 -> (0 + 1) / 2
    updates = torch.tensor([[1.0, 0.0], [2.0, 0.0], [4.0, 1.0], [10.0, 5.0]])
    assert Median()(updates, ctx(4)).update.tolist() == [3.0, 0.5]
    assert torch.median(updates, dim=0).values.tolist() == [2.0, 0.0]  # the lower one


def test_hand_yin() -> None:
    # beta = 0.2, n = 5 -> drop 1 from each end
    #   coordinate 0: keep 2, 3, 4 -> 3 ; coordinate 1: keep 10, 20, 30 -> 20
    assert TrimmedMean(beta=0.2)(HAND, ctx(5)).update.tolist() == [3.0, 20.0]
    # beta = 0.4, n = 5 -> drop 2 from each end: only the median is left
    assert TrimmedMean(beta=0.4)(HAND, ctx(5)).update.tolist() == [3.0, 20.0]


def test_hand_xie() -> None:
    # f = 1 -> keep 4 closest to the median
    #   coordinate 0: distances to 3 are 2, 1, 0, 1, 97 -> keep 1, 2, 3, 4 -> 2.5
    #   coordinate 1: distances to 20 are 10, 0, 10, 25, 70 -> keep 10, 20, 30, 45 -> 26.25
    assert TrimmedMeanXie()(HAND, ctx(5, 1)).update.tolist() == [2.5, 26.25]


def test_hand_guerraoui() -> None:
    # f = 1 -> keep 3 closest to the median
    #   coordinate 0: keep 2, 3, 4 -> 3 ; coordinate 1: keep 10, 20, 30 -> 20
    assert TrimmedMeanGuerraoui()(HAND, ctx(5, 1)).update.tolist() == [3.0, 20.0]
    # f = 2 -> keep 1: the median itself
    assert TrimmedMeanGuerraoui()(HAND, ctx(5, 2)).update.tolist() == [3.0, 20.0]


def test_hand_tie_goes_to_smaller_value_whatever_the_order() -> None:
    # 1, 2, 3, 4: median 2.5, distances 1.5, 0.5, 0.5, 1.5; keep 3 -> 1 and 4 tie, 1 wins
    col = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    for perm in ([0, 1, 2, 3], [3, 2, 1, 0], [3, 0, 2, 1]):
        assert TrimmedMeanXie()(col[perm], ctx(4, 1)).update.tolist() == [2.0]
    # even count, keep 1: the two middle values tie, the smaller is taken
    assert closest_to_median_mean(torch.tensor([[5.0], [7.0]]), 1).tolist() == [5.0]


# --- invariances and special cases -----------------------------------------------------------


@pytest.mark.parametrize(("n", "d", "f"), [(6, 5, 1), (7, 4, 2), (10, 3, 3), (23, 20, 5)])
def test_permuting_clients_permutes_accepted_only(n: int, d: int, f: int) -> None:
    gen = torch.Generator().manual_seed(n + d + f)
    updates = torch.randn(n, d, generator=gen)
    updates[2, 1] = float("nan")  # one rejected row so that `accepted` is not constant
    perm = torch.randperm(n, generator=gen)
    for agg in rules(n, f):
        base = agg(updates, ctx(n, f))
        moved = agg(updates[perm], ctx(n, f))
        assert torch.allclose(base.update, moved.update, atol=1e-6), agg
        assert torch.equal(moved.accepted, base.accepted[perm]), agg
        assert not bool(base.accepted[2])


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_xie_with_no_byzantine_is_the_mean(n: int) -> None:
    updates = torch.randn(n, 6, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    assert torch.allclose(TrimmedMeanXie()(updates, ctx(n, 0)).update, updates.mean(0))
    assert torch.allclose(TrimmedMeanGuerraoui()(updates, ctx(n, 0)).update, updates.mean(0))


@pytest.mark.parametrize(("beta", "n"), [(0.0, 5), (0.1, 9), (0.2, 4), (0.49, 2), (0.3, 3)])
def test_yin_with_beta_n_below_one_is_the_mean(beta: float, n: int) -> None:
    assert beta * n < 1
    updates = torch.randn(n, 6, generator=torch.Generator().manual_seed(n)) + 5
    out = TrimmedMean(beta=beta)(updates, ctx(n)).update
    assert torch.allclose(out, updates.mean(0))
    assert bool((out != 0).all())


def test_trimmed_count_is_robust_to_float_error() -> None:
    assert 0.29 * 100 < 29  # floor would give 28
    assert trimmed_count(0.29, 100) == 29
    assert trimmed_count(0.1, 23) == 2
    assert trimmed_count(0.0, 10) == 0


@pytest.mark.parametrize("f", [0, 2, 3])
def test_non_finite_rows_are_rejected(f: int) -> None:
    n, d = 9, 7
    updates = torch.randn(n, d, generator=torch.Generator().manual_seed(f))
    updates[1, 3] = float("nan")
    updates[4, 0] = float("inf")
    updates[6, 6] = -float("inf")
    bad = torch.zeros(n, dtype=torch.bool)
    bad[[1, 4, 6]] = True
    rest = updates[~bad].double()
    f_rest = max(0, f - 3)  # dropped rows count against f
    for agg in rules(n, f):
        result = agg(updates, ctx(n, f))
        assert torch.equal(result.accepted, ~bad), agg
        assert bool(torch.isfinite(result.update).all()), agg
        assert close(result.update, reference(agg, rest, f_rest), atol=1e-5), agg


def test_huge_rows_are_rejected() -> None:
    updates = torch.ones(5, 3)
    updates[0] = 1e30
    for agg in rules(5, 1):
        result = agg(updates, ctx(5, 1))
        assert result.accepted.tolist() == [False, True, True, True, True]
        assert result.update.tolist() == [1.0, 1.0, 1.0]


# --- noisy median ----------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [100.0, 0.1, 0.01])
def test_noisy_median_prepare_adds_gaussian_noise(sigma: float) -> None:
    agg = NoisyMedian(sigma=sigma)
    grads = torch.full((200, 1000), 3.0)
    noisy = agg.prepare(grads, ctx(200))
    assert noisy.shape == grads.shape and noisy.dtype == grads.dtype
    noise = noisy - grads
    assert abs(noise.std().item() / sigma - 1) < 0.01
    assert abs(noise.mean().item()) < 0.01 * sigma
    assert bool((grads == 3.0).all())  # the input is left alone


def test_noisy_median_prepare_is_reproducible() -> None:
    agg = NoisyMedian(sigma=0.5)
    grads = torch.randn(6, 50, generator=torch.Generator().manual_seed(9))
    a = agg.prepare(grads, ctx(6))
    b = agg.prepare(grads, ctx(6))
    assert torch.equal(a, b)
    other = RoundContext(round=1, n=6, f=0, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(a, agg.prepare(grads, other))
    # consecutive rounds on one generator draw fresh noise
    c = ctx(6)
    assert not torch.equal(agg.prepare(grads, c), agg.prepare(grads, c))


def test_noisy_median_sigma_zero_and_default() -> None:
    grads = torch.randn(4, 5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(NoisyMedian(sigma=0.0).prepare(grads, ctx(4)), grads)
    assert NoisyMedian().sigma == 100.0


def test_noisy_median_aggregate_is_the_median() -> None:
    updates = torch.randn(8, 12, generator=torch.Generator().manual_seed(4))
    out = NoisyMedian(sigma=5.0)(updates, ctx(8, 2))
    assert torch.equal(out.update, coordinate_median(updates))
    assert bool(out.accepted.all())


# --- configuration errors --------------------------------------------------------------------


def test_check_rejects_impossible_federations() -> None:
    TrimmedMeanXie().check(4, 3)
    with pytest.raises(AggregatorError, match="n - f >= 1"):
        TrimmedMeanXie().check(3, 3)
    TrimmedMeanGuerraoui().check(5, 2)
    with pytest.raises(AggregatorError, match="n - 2f >= 1"):
        TrimmedMeanGuerraoui().check(4, 2)
    with pytest.raises(AggregatorError, match="n - 2f >= 1"):
        TrimmedMeanGuerraoui().check(23, 12)
    for agg in (Median(), NoisyMedian(), TrimmedMean()):
        agg.check(1, 0)
        with pytest.raises(AggregatorError):
            agg.check(0, 0)


@pytest.mark.parametrize("beta", [0.5, 0.7, -0.1, float("nan")])
def test_bad_beta_is_rejected(beta: float) -> None:
    with pytest.raises(ValueError, match="beta"):
        TrimmedMean(beta=beta)
    with pytest.raises(ValueError, match="beta"):
        aggregators.get("trimmed_mean", beta=beta)


def test_bad_sigma_and_keep_are_rejected() -> None:
    with pytest.raises(ValueError, match="sigma"):
        NoisyMedian(sigma=-1.0)
    with pytest.raises(ValueError, match="keep"):
        closest_to_median_mean(torch.zeros(3, 2), 0)
    with pytest.raises(ValueError, match="keep"):
        closest_to_median_mean(torch.zeros(3, 2), 4)


def test_registry() -> None:
    agg = aggregators.get("trimmed_mean", beta=0.2)
    assert isinstance(agg, TrimmedMean) and agg.beta == 0.2
    with pytest.raises(ValueError, match="foo"):
        aggregators.get("trimmed_mean", foo=1)
    expected = {
        "median": Median,
        "noisy_median": NoisyMedian,
        "trimmed_mean": TrimmedMean,
        "trimmed_mean_xie": TrimmedMeanXie,
        "trimmed_mean_guerraoui": TrimmedMeanGuerraoui,
    }
    for name, cls in expected.items():
        assert aggregators.REGISTRY[name] is cls
        assert cls.name == name
        assert isinstance(aggregators.get(name), cls)
    assert aggregators.get("noisy_median", sigma=0.01).sigma == 0.01


def ref_window_start(column: list[float], keep: int) -> int:
    """Drop, one value at a time, whichever end of the sorted column is strictly farther from
    the median (the larger end on a tie): the plain greedy the vectorised count must match."""
    values = sorted(column)
    n = len(values)
    mid = n // 2
    m = values[mid] if n % 2 else (values[mid - 1] + values[mid]) / 2
    lo, hi = 0, n - 1
    for _ in range(n - keep):
        if m - values[lo] > values[hi] - m:
            lo += 1
        else:
            hi -= 1
    return lo


@pytest.mark.parametrize(("n", "keep"), [(2, 1), (5, 3), (8, 3), (13, 3), (23, 18), (23, 13)])
def test_closest_window_start_matches_the_greedy(n: int, keep: int) -> None:
    from diversefl.aggregators.order_stats import sort_clients
    from diversefl.aggregators.trimmed_mean import closest_window_start

    g = torch.Generator().manual_seed(n * 31 + keep)
    x = torch.cat(
        [
            torch.randn(n, 40, generator=g, dtype=torch.float64),
            torch.randint(-2, 3, (n, 40), generator=g).double(),  # many exact ties
        ],
        dim=1,
    )
    start = closest_window_start(sort_clients(x), keep)
    want = [ref_window_start(col, keep) for col in columns(x)]
    assert start.tolist() == want


@pytest.mark.parametrize(("n", "keep"), [(23, 18), (23, 13), (13, 3), (6, 1), (1, 1), (40, 20)])
def test_window_sums_slices_and_gather_agree_bit_for_bit(n: int, keep: int) -> None:
    """The per-start row-slice sums and the gather add the same values in the same order, so
    either path (whichever the size picks) gives the same bits; and the result does not depend
    on the memory layout of the updates."""
    from diversefl.aggregators.order_stats import sort_clients
    from diversefl.aggregators.trimmed_mean import (
        closest_window_start,
        window_sums,
        window_sums_by_gather,
        window_sums_by_slices,
    )

    x = torch.randn(n, 5000, generator=torch.Generator().manual_seed(n))
    ordered = sort_clients(x)
    start = closest_window_start(ordered, keep)
    gathered = window_sums_by_gather(ordered, start, keep)
    assert torch.equal(window_sums_by_slices(ordered, start, keep), gathered)
    assert torch.equal(window_sums(ordered, start, keep), gathered)
    column_major = x.t().contiguous().t()
    assert torch.equal(closest_to_median_mean(column_major, keep), closest_to_median_mean(x, keep))


def test_same_side_rounding_tie_keeps_the_truly_nearer_value() -> None:
    """Sorted 1e-30 below... : median (1e-30 + 0.25) / 2 = 0.125; -1e-30, 1e-30 and 0.25 are all
    0.125 away after rounding, but 1e-30 is truly nearest, and the run keeps it."""
    x = torch.tensor([[0.25], [-1e-30], [1e-30], [3e38]], dtype=torch.float64)
    assert closest_to_median_mean(x, 1).item() == 1e-30


def test_closest_to_median_mean_exact_on_integer_ties() -> None:
    """Small integers (every sum exact): the kept multiset equals the sorted-by-distance
    reference's (smaller value first on a tie), so the means agree bit for bit."""
    g = torch.Generator().manual_seed(7)
    x = torch.randint(-4, 5, (23, 300), generator=g).double()
    for keep in (1, 3, 13, 18, 22):
        sums = []
        for col in columns(x):
            m = statistics.median(col)
            sums.append(sum(sorted(col, key=lambda v, m=m: (abs(v - m), v))[:keep]))
        want = torch.tensor(sums, dtype=torch.float64) / keep
        assert torch.equal(closest_to_median_mean(x, keep), want), keep


def test_even_median_does_not_overflow_and_keeps_the_bits_of_the_plain_formula() -> None:
    """Halves first: no overflow for two values near the dtype's largest, and exactly the bits
    of ``(a + b) / 2`` everywhere else (halving is exact)."""
    big16 = torch.tensor([[6.0e4, -6.0e4], [6.5e4, -6.5e4]], dtype=torch.float16)
    assert coordinate_median(big16).tolist() == [62496.0, -62496.0]
    big32 = torch.tensor([[3.0e38], [3.2e38]])
    assert coordinate_median(big32).item() == pytest.approx(3.1e38, rel=1e-6)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 20_000, generator=g) * torch.logspace(-20, 20, 20_000)
    ordered = x.sort(0).values
    assert torch.equal(coordinate_median(x), (ordered[1] + ordered[2]) / 2)


def test_trimmed_mean_default_trims_the_assumed_f() -> None:
    """Without beta, Yin's trimmed mean drops f values from each end (beta = f / n, the
    least his guarantee allows): five same-value attackers out of 23 are all trimmed in every
    coordinate, where beta = 0.1 (2 per side) keeps three of them."""
    gen = torch.Generator().manual_seed(4)
    honest = torch.randn(18, 6, generator=gen) * 0.1
    updates = torch.cat([honest, torch.full((5, 6), 10.0)])
    out = TrimmedMean()(updates, ctx(23, 5)).update
    expected = []
    for u in range(6):
        column = sorted(float(v) for v in updates[:, u])
        kept = column[5:-5]
        expected.append(sum(kept) / len(kept))
    assert out.tolist() == pytest.approx(expected, abs=1e-6)
    assert max(abs(v) for v in out.tolist()) < 0.2  # no attacker value left
    fixed = TrimmedMean(beta=0.1)(updates, ctx(23, 5)).update
    assert float(fixed.min()) > 1.0  # 3 of the 5 tens kept in every coordinate
    assert TrimmedMean().trim(23, 5) == 5 and TrimmedMean(beta=0.1).trim(23, 5) == 2
    torch.testing.assert_close(TrimmedMean()(updates, ctx(23, 0)).update, updates.mean(0))
    with pytest.raises(AggregatorError, match=r"trims f=2 values from each end of n=4"):
        TrimmedMean().check(4, 2)
    TrimmedMean(beta=0.2).check(4, 2)  # an explicit fraction does not depend on f
