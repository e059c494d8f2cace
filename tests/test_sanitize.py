"""The aggregators' row check (`sanitize`): the fast norm-first mask equals a plain per-entry
loop on rows at, just above and well below the bound, and on NaN / inf rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diversefl.aggregators import AggregatorError
from diversefl.aggregators.base import MAX_ABS, rows_within_bound, sanitize


def _reference(updates: torch.Tensor) -> list[bool]:
    """Row i is good iff every entry is finite and |entry| <= MAX_ABS (a plain loop)."""
    out = []
    for row in updates.tolist():
        out.append(all(math.isfinite(v) and abs(v) <= MAX_ABS for v in row))
    return out


def test_mask_matches_per_entry_loop_on_edge_rows() -> None:
    d = 50
    rows = [
        torch.randn(d),  # ordinary
        torch.full((d,), 0.4 * MAX_ABS),  # norm far above MAX_ABS / 2, every entry inside
        torch.full((d,), MAX_ABS),  # exactly at the bound: allowed
        torch.zeros(d).index_fill(0, torch.tensor([7]), MAX_ABS * 1.01),  # one entry over
        torch.zeros(d).index_fill(0, torch.tensor([3]), -MAX_ABS * 1.01),  # negative, over
        torch.zeros(d).index_fill(0, torch.tensor([1]), float("nan")),
        torch.zeros(d).index_fill(0, torch.tensor([2]), float("inf")),
        torch.zeros(d).index_fill(0, torch.tensor([4]), float("-inf")),
        torch.full((d,), 1e30),  # squares overflow float32: norm is inf, entries finite
        torch.zeros(d),
    ]
    updates = torch.stack(rows)
    expected = _reference(updates)
    assert expected == [True, True, True, False, False, False, False, False, False, True]
    assert rows_within_bound(updates).tolist() == expected
    clean, valid = sanitize(updates)
    assert valid.tolist() == expected
    assert torch.equal(clean[~valid], torch.zeros_like(clean[~valid]))
    assert torch.equal(clean[valid], updates[valid])


def test_mask_matches_loop_on_random_rows() -> None:
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        updates = torch.randn(9, 40, generator=gen) * 10 ** torch.randint(
            0, 17, (9, 1), generator=gen
        )
        hits = torch.rand(9, 40, generator=gen) < 0.02
        updates[hits] = float("nan")
        assert rows_within_bound(updates).tolist() == _reference(updates)


def test_list_of_rows_of_any_kind() -> None:
    """numpy rows are rows; a row that is neither a tensor nor an array, of another length
    or complex is marked invalid (zeroed) instead of crashing the round."""
    good = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    rows = [good, torch.tensor([4.0, 5.0, 6.0]), "garbage", torch.ones(2),
            torch.ones(3, dtype=torch.complex64), None]  # fmt: skip
    updates, valid = sanitize(rows, 6)
    assert valid.tolist() == [True, True, False, False, False, False]
    assert updates[:2].tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert updates[2:].abs().sum() == 0
    only_garbage, none_valid = sanitize(["a", None], 2)
    assert only_garbage.shape == (2, 0) and not none_valid.any()
    with pytest.raises(AggregatorError, match="updates must be real, got torch.complex64"):
        sanitize(torch.ones(2, 3, dtype=torch.complex64))


def test_list_row_length_comes_from_d_not_from_the_majority() -> None:
    """Five attackers sending 2-entry rows cannot redefine d against three honest 4-entry rows:
    with ``d`` the honest rows are the valid ones wherever they stand; without it the first
    float row sets d (an ``int`` row does not)."""
    honest = [torch.full((4,), float(k)) for k in range(3)]
    wrong = [torch.full((2,), 9.0) for _ in range(5)]
    rows = [wrong[0], *honest, *wrong[1:]]
    updates, valid = sanitize(rows, 8, d=4)
    assert valid.tolist() == [False, True, True, True, False, False, False, False]
    assert updates.shape == (8, 4) and updates[1:4].tolist() == [[0.0] * 4, [1.0] * 4, [2.0] * 4]
    _, first_sets_it = sanitize([torch.ones(4, dtype=torch.long), *honest, *wrong], 9)
    assert first_sets_it.tolist() == [False, True, True, True] + [False] * 5
    junk, none_fit = sanitize([torch.ones(3), "x"], 2, d=5)  # no row fits: zeros [n, d]
    assert junk.shape == (2, 5) and not none_fit.any()
    objects = np.array(["a", "b"])  # a numpy array that is no number: a rejected row
    assert sanitize([objects, torch.ones(2)], 2)[1].tolist() == [False, True]


def test_rules_take_d_from_the_model_layout() -> None:
    """Through the public API: the round context's layer sizes give d, so the attackers'
    majority of wrong-length rows is rejected and the honest rows are averaged."""
    from diversefl import aggregators

    honest = [torch.full((4,), float(k)) for k in range(3)]
    rows = [torch.full((2,), 9.0), *honest, *[torch.full((2,), 9.0)] * 4]
    ctx = aggregators.RoundContext(
        round=1, n=8, f=0, generator=torch.Generator(), layer_sizes=(3, 1)
    )
    out = aggregators.get("mean")(rows, ctx)
    assert out.accepted.tolist() == [False, True, True, True, False, False, False, False]
    assert out.update.tolist() == [1.0] * 4
