"""The aggregators' fast paths give what the plain forms give: the blocked, transposed sort
(``order_stats.sorted_rows``) against numpy's sort along the clients and a per-column loop,
the blocked masked mean (``mean.mean_of``) against the one-piece formula bit for bit, and the
one-scalar row check of ``Aggregator.__call__`` against the per-row ``sanitize`` path."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
import torch

from diversefl import aggregators
from diversefl.aggregators import RoundContext, base, geomed, gram, mean, order_stats
from diversefl.aggregators.base import MAX_ABS, all_rows_clear
from diversefl.aggregators.mean import mean_of
from diversefl.aggregators.median import coordinate_median
from diversefl.aggregators.order_stats import sort_clients, sorted_rows
from diversefl.aggregators.trimmed_mean import rank_trimmed_mean


def _signed_zeros_and_ties(n: int, d: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """Random rows with a third of the columns made of +0.0 / -0.0 and repeated rows."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=dtype)
    zeros = torch.rand(n, d // 3, generator=gen) < 0.5
    x[:, : d // 3] = torch.where(zeros, 0.0, -0.0).to(dtype)
    x[: n // 3] = x[n - n // 3 :]
    return x


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request, monkeypatch):
    """Run with one torch thread, or with two and the sort's blocks shared out over two
    threads whatever the input's size (small inputs stay on one thread otherwise)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    monkeypatch.setattr(order_stats, "PER_THREAD", 1)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "n,d", [(1, 5), (2, 3), (7, 1), (23, 2 * order_stats.BLOCK + 17), (100, order_stats.BLOCK)]
)
def test_sorted_rows_are_numpy_sorts_rows(threads, n: int, d: int, dtype: torch.dtype) -> None:
    x = _signed_zeros_and_ties(n, d, seed=n * d, dtype=dtype)
    want = np.sort(x.numpy(), axis=0)  # the sort along the strided client axis
    got = sort_clients(x)
    assert got.is_contiguous() and got.dtype == dtype
    # compared by value: the two numpy sorts may order +0 and -0 differently (they are equal)
    assert np.array_equal(got.numpy(), want)
    for lo, hi in [(0, n), (n // 2, n // 2 + 1), (n // 3, n - n // 3), (n, n)]:
        part = sorted_rows(x, lo, hi)
        assert part.shape == (hi - lo, d) and part.is_contiguous()
        assert np.array_equal(part.numpy(), want[lo:hi])


def test_sorted_rows_leave_the_input_alone() -> None:
    """A column that is already contiguous after the transpose (one column, or a column view)
    is copied before it is sorted, never sorted in place."""
    for x in [torch.tensor([[3.0], [1.0], [2.0]]), torch.randn(5, 5).t()[:, 2:3]]:
        before = x.clone()
        sort_clients(x)
        coordinate_median(x)
        assert torch.equal(x, before)


def test_sorted_rows_match_a_per_column_loop_on_views() -> None:
    """A non-contiguous input (a column slice of a wider tensor) sorts like its plain copy."""
    gen = torch.Generator().manual_seed(5)
    wide = torch.randn(9, 3 * order_stats.BLOCK, generator=gen)
    view = wide[:, 5 : 5 + order_stats.BLOCK + 3]
    got = sort_clients(view)
    for col in [0, 1, order_stats.BLOCK - 1, order_stats.BLOCK, order_stats.BLOCK + 2]:
        assert got[:, col].tolist() == sorted(view[:, col].tolist())


def test_sorted_rows_rejects_rows_outside_the_range() -> None:
    with pytest.raises(ValueError, match="rows 2:5"):
        sorted_rows(torch.zeros(4, 3), 2, 5)


@pytest.mark.parametrize("n", [22, 23])
def test_median_and_trimmed_mean_match_a_loop_across_blocks(threads, n: int) -> None:
    d = 2 * order_stats.BLOCK + 9
    x = _signed_zeros_and_ties(n, d, seed=n, dtype=torch.float32)
    median = coordinate_median(x)
    trimmed = rank_trimmed_mean(x, 5)
    for col in [0, d // 3, order_stats.BLOCK, d - 1]:
        values = torch.tensor(sorted(x[:, col].tolist()), dtype=torch.float32)
        mid = n // 2
        want = values[mid] if n % 2 else values[mid - 1] / 2 + values[mid] / 2  # float32
        assert float(median[col]) == float(want)
        kept = values[5 : n - 5]
        assert float(trimmed[col]) == pytest.approx(float(kept.mean()), rel=1e-6, abs=1e-7)


def _one_piece_mean(updates: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The unblocked formula of ``mean_of``: one masked copy, one sum."""
    k = mask.sum()
    return (updates * mask[:, None].to(updates.dtype)).sum(0) / k.to(updates.dtype)


@pytest.mark.parametrize("n,d", [(5, 2 * mean.BLOCK + 1), (23, 3 * mean.BLOCK + 77), (64, 40_000)])
def test_blocked_mean_of_has_the_bits_of_the_one_piece_formula(threads, n: int, d: int) -> None:
    gen = torch.Generator().manual_seed(d)
    x = _signed_zeros_and_ties(n, d, seed=d, dtype=torch.float32) * 10 ** torch.randint(
        -3, 4, (n, 1), generator=gen
    )
    for mask in [
        torch.rand(n, generator=gen) < 0.7,
        torch.ones(n, dtype=torch.bool),
        torch.arange(n) == n - 1,
    ]:
        got, want = mean_of(x, mask), _one_piece_mean(x, mask)
        assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    assert torch.equal(mean_of(x, torch.zeros(n, dtype=torch.bool)), torch.zeros(d))


def test_mean_of_keeps_the_one_piece_formula_off_the_fast_layout() -> None:
    """A transposed (column-major) input takes the one-piece formula (same bits as before)."""
    x = torch.randn(3 * mean.BLOCK, 6).t()
    mask = torch.tensor([True, False, True, True, False, True])
    assert torch.equal(mean_of(x, mask), _one_piece_mean(x, mask))


def test_all_rows_clear_only_for_well_formed_float_rows() -> None:
    x = torch.randn(4, 10)
    assert all_rows_clear(x, 4)
    assert all_rows_clear(x.double(), 4)
    assert not all_rows_clear(x, 5)  # wrong n: sanitize raises the error
    assert not all_rows_clear(x[0], 4)  # 1-D
    assert not all_rows_clear(torch.zeros(4, 0), 4)
    assert not all_rows_clear(torch.zeros(0, 3), 0)  # no rows: nothing to reduce
    assert not all_rows_clear(x.to(torch.int64), 4)
    assert not all_rows_clear([row for row in x], 4)
    for bad in [float("nan"), float("inf"), float("-inf"), 2 * MAX_ABS]:
        y = x.clone()
        y[2, 3] = bad
        assert not all_rows_clear(y, 4)
    # large but valid rows fail the quick test and are kept by sanitize's exact check
    big = torch.full((4, 10), 0.4 * MAX_ABS)
    assert not all_rows_clear(big, 4)
    assert bool(base.sanitize(big, 4)[1].all())


@pytest.mark.parametrize(
    "name", ["mean", "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "geomed"]
)
def test_fast_row_check_gives_the_sanitize_path_result(name: str, monkeypatch) -> None:
    """Every rule returns the same on the fast path as through sanitize, on ordinary rows and
    on rows whose norm defeats the quick test but whose entries are all inside the bound."""
    n, f, d = 23, 5, 300
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(n, d, generator=gen)
    x[4] *= 0.3 * MAX_ABS  # entries up to ~1e15 * 0.3 * 4: some rows may exceed MAX_ABS
    for updates in [torch.randn(n, d, generator=gen), x]:
        ctx = RoundContext(round=1, n=n, f=f, generator=torch.Generator().manual_seed(0))
        fast = aggregators.get(name)(updates, ctx)
        with monkeypatch.context() as patch:
            patch.setattr(base, "all_rows_clear", lambda *_: False)
            ctx = RoundContext(round=1, n=n, f=f, generator=torch.Generator().manual_seed(0))
            slow = aggregators.get(name)(updates, ctx)
        assert torch.equal(fast.update, slow.update)
        assert torch.equal(fast.accepted, slow.accepted)


@pytest.mark.parametrize("d", [1, 7, 8, 9, 15, 22])
def test_gram_and_weighted_sum_keep_the_bits_of_fresh_chunk_copies(
    threads, d: int, monkeypatch
) -> None:
    """The reused float64 buffers give the products of the old per-chunk copies, bit for bit,
    also for a last chunk of one column (chunks of 8 columns here)."""
    monkeypatch.setattr(gram, "CHUNK", 8)
    monkeypatch.setattr(geomed, "_CHUNK", 8)
    gen = torch.Generator().manual_seed(d)
    for n in [1, 5, 23]:
        x = torch.randn(n, d, generator=gen) * 3
        want = torch.zeros(n, n, dtype=torch.float64)
        for start in range(0, d, 8):
            chunk = x[:, start : start + 8].to(torch.float64)
            want += chunk @ chunk.T
        assert torch.equal(gram.float64_gram(x), want)
        weights = torch.rand(n, generator=gen, dtype=torch.float64)
        plain = torch.cat([weights @ x[:, start : start + 8].double() for start in range(0, d, 8)])
        assert torch.equal(geomed._weighted_sum(x, weights), plain)


def _median_in_child(queue) -> None:
    # numpy only besides the sort: torch's own OpenMP threads hang in a forked child once the
    # parent has used them (a torch limitation this test is not about)
    torch.set_num_threads(2)
    rows = np.arange(6 * 3 * order_stats.BLOCK, dtype=np.float32).reshape(6, -1)[::-1]
    queue.put(coordinate_median(torch.from_numpy(rows.copy()))[:3].tolist())


def test_a_forked_child_sorts_with_its_own_threads(monkeypatch) -> None:
    """The sort's thread pool is per process: a child forked after the parent used it does
    not wait forever on the parent's worker threads (which do not exist in the child)."""
    monkeypatch.setattr(order_stats, "PER_THREAD", 1)  # the child inherits it
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        coordinate_median(torch.randn(6, 3 * order_stats.BLOCK))  # the parent's pool exists
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_median_in_child, args=(queue,))
        child.start()
        child.join(timeout=60)
        alive = child.is_alive()
        if alive:
            child.kill()
        assert not alive, "the forked child hung in the sort"
        n_cols = 3 * order_stats.BLOCK
        assert queue.get(timeout=5) == [2.5 * n_cols + c for c in range(3)]
    finally:
        torch.set_num_threads(before)
