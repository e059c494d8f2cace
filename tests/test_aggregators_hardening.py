"""DiverseFL's parts on their own, each against a hand-computed example: the paper's rule
(`diversefl_test`), the stateless hardenings (`cosine_pass` / `direction_pass`,
`layer_direction_pass`, `clip_to_guide`), the quarantine's ledger and trust rule; and the
class as exactly their composition."""

from __future__ import annotations

import math

import pytest
import torch

from diversefl import aggregators
from diversefl.aggregators import AggregatorError, RoundContext
from diversefl.aggregators.diversefl_rule import (
    clip_to_guide,
    cosine_pass,
    direction_pass,
    diversefl_test,
    layer_direction_pass,
)
from diversefl.aggregators.mean import mean_of
from diversefl.aggregators.quarantine import FailureLedger, quarantine_trusted

S2 = math.sqrt(2.0)


def test_plain_rule_by_hand() -> None:
    guiding = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [3.0, 4.0]])
    updates = torch.tensor([[1.5, 0.2], [0.0, -2.0], [4.0, 4.0], [1.0, 1.0]])
    t = diversefl_test(guiding, updates, 0.5, 2.0)
    z0 = math.sqrt(1.5**2 + 0.2**2)
    assert t.c1.tolist() == [1.0, -1.0, 1.0, 1.0]  # dots 1.5, -4, 8, 7
    torch.testing.assert_close(t.c2, torch.tensor([z0, 1.0, 4.0, S2 / 5]))
    torch.testing.assert_close(t.cos, torch.tensor([1.5 / z0, -1.0, 1.0, 7 / (5 * S2)]))
    assert t.in_band.tolist() == [True, True, False, False]
    assert t.accepted.tolist() == [True, False, False, False]
    torch.testing.assert_close(t.g_norm, torch.tensor([1.0, 2.0, S2, 5.0]))
    assert list(t.scores()) == ["c1", "c2", "cos"]


def test_cosine_threshold_alone() -> None:
    assert cosine_pass(torch.tensor([0.9, 0.5, 0.51, -1.0]), 0.5).tolist() == [
        True,
        False,  # strict: exactly min_cosine fails
        True,
        False,
    ]
    # min_cosine = 0 is the paper's sign test C1 > 0, > 0 the cosine test
    guiding = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    updates = torch.tensor([[1.0, 0.1], [1.0, 3.0], [-1.0, 0.0]])  # cos ~0.995, ~0.316, -1
    t = diversefl_test(guiding, updates, 0.5, 2.0)
    assert direction_pass(t, 0.0).tolist() == [True, True, False]
    assert direction_pass(t, 0.5).tolist() == [True, False, False]


def test_per_layer_direction_alone() -> None:
    sizes = (3, 1)
    guiding = torch.tensor(
        [[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 1.0]]
    )
    updates = torch.tensor(
        [[1.2, 1.0, 0.9, -0.5], [0.9, 0.1, 0.0, 1.8], [5.0, -5.0, 3.0, 1.0], [1.0, 1.0, 0.0, 1.0]]
    )
    # row 0: last block flipped (dot -0.5); row 2: first guide block zero, skipped; row 3:
    # first block at cos 1/sqrt(2) ~0.707 (passes the sign test, fails 0.9)
    assert layer_direction_pass(guiding, updates, sizes, 0.0).tolist() == [
        False,
        True,
        True,
        True,
    ]
    assert layer_direction_pass(guiding, updates, sizes, 0.9).tolist() == [
        False,
        True,  # blocks at cos 0.9/sqrt(0.82) ~0.994 and 1
        True,
        False,
    ]
    with pytest.raises(AggregatorError, match="layer sizes sum to 3, updates have 4"):
        layer_direction_pass(guiding, updates, (2, 1), 0.0)


def test_clip_to_guide_alone() -> None:
    updates = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    g_norm = torch.tensor([1.0, 2.0, 1.0, float("nan")])
    z_norm = updates.norm(dim=1)  # 5, 1, 0, sqrt(2)
    got = clip_to_guide(updates, g_norm, z_norm)
    # scaled to |g| = 1; already below |g| = 2; zero stays zero; a NaN factor zeroes the row
    assert got.tolist() == [[0.6000000238418579, 0.800000011920929], [0.0, 1.0], [0, 0], [0, 0]]


def test_quarantine_trust_rule_alone() -> None:
    rate = torch.tensor([0.0, 0.5, 0.5, 0.3], dtype=torch.float64)
    seen = torch.tensor([5.0, 2.0, 4.0, 4.0], dtype=torch.float64)
    # fewer than `after` tests: trusted whatever the rate; at the threshold: still trusted
    assert quarantine_trusted(rate, seen, 0.3, 3).tolist() == [True, True, False, True]


def test_failure_ledger_counts_by_hand_and_round_trips() -> None:
    ledger = FailureLedger()
    ledger.begin_round(1)
    rate, seen = ledger.record(torch.tensor([0, 2]), torch.tensor([True, False]))
    assert (rate.tolist(), seen.tolist()) == ([0.0, 1.0], [1.0, 1.0])
    assert ledger.tested.tolist() == [1.0, 0.0, 1.0] and ledger.failed.tolist() == [0, 0, 1.0]
    ledger.begin_round(2)
    rate, _ = ledger.record(torch.tensor([0, 1, 2]), torch.tensor([False, True, True]))
    assert rate.tolist() == [0.5, 0.0, 0.5]
    ledger.begin_round(2)  # the same round again: replaces its results, counts it once
    rate, seen = ledger.record(torch.tensor([0, 1, 2]), torch.tensor([True, True, True]))
    assert (rate.tolist(), seen.tolist()) == ([0.0, 0.0, 0.5], [2.0, 1.0, 2.0])
    ledger.charge(torch.tensor([1]))  # a malformed update: one more failed test
    assert ledger.tested.tolist() == [2.0, 2.0, 2.0] and ledger.failed.tolist() == [0, 1.0, 1.0]
    fresh = FailureLedger()
    fresh.load_state_dict(ledger.state_dict())
    assert fresh.state_dict()["round"] == 2
    for ledger_ in (ledger, fresh):
        ledger_.begin_round(3)
        rate, _ = ledger_.record(torch.tensor([3]), torch.tensor([False]))
        assert rate.tolist() == [1.0] and ledger_.tested.tolist() == [2.0, 2.0, 2.0, 1.0]


def test_failure_ledger_refuses_negative_ids() -> None:
    ledger = FailureLedger()
    ledger.begin_round(1)
    with pytest.raises(AggregatorError, match="client ids must be >= 0, got -1"):
        ledger.record(torch.tensor([0, -1, 2]), torch.tensor([True, True, True]))
    with pytest.raises(AggregatorError, match="got -7"):
        ledger.charge(torch.tensor([-7]))
    assert ledger.tested.numel() == 0  # nothing was counted


def test_the_class_is_the_composition_of_its_parts() -> None:
    """Every hardening on: DiverseFL's round equals the pure parts composed by hand (cosine
    direction and per-layer test, ratio band, quarantine trust, clipping, mean), bit for bit,
    over rounds in which the quarantine state builds up."""
    gen = torch.Generator().manual_seed(11)
    n, d, sizes = 12, 7, (4, 3)
    rule = aggregators.get(
        "diversefl", min_cosine=0.2, per_layer=True, clip_to_guide=True, quarantine=0.3,
        quarantine_after=2, quarantine_on="direction",
    )  # fmt: skip
    ledger = FailureLedger()
    for r in range(1, 9):
        guiding = torch.randn(n, d, generator=gen)
        updates = guiding * (2.5 * torch.rand(n, 1, generator=gen)) + torch.randn(
            n, d, generator=gen
        )
        ctx = RoundContext(
            round=r, n=n, f=0, generator=gen, guiding_fn=lambda g=guiding: g, layer_sizes=sizes
        )
        got = rule(updates, ctx)
        t = diversefl_test(guiding, updates, 0.5, 2.0)
        direction = direction_pass(t, 0.2) & layer_direction_pass(guiding, updates, sizes, 0.2)
        ledger.begin_round(r)
        rate, seen = ledger.record(torch.arange(n), direction)
        accepted = direction & t.in_band & quarantine_trusted(rate, seen, 0.3, 2)
        want = mean_of(clip_to_guide(updates, t.g_norm, t.z_norm), accepted)
        assert torch.equal(got.accepted, accepted)
        assert torch.equal(got.update, want)
        assert torch.equal(got.scores["fail_rate"], rate.float())
        assert torch.equal(got.scores["cos"], t.cos)
    assert 0 < int(got.accepted.sum()) < n
