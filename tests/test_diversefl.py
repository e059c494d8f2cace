"""DiverseFL's per-client test on constructed examples, against a plain-Python reference."""

from __future__ import annotations

import math

import pytest
import torch

from diversefl import aggregators
from diversefl.aggregators import RoundContext
from diversefl.aggregators.base import AggregatorError
from diversefl.aggregators.diversefl import diversefl_accept, diversefl_scores


def _ctx(n: int, guiding: torch.Tensor, f: int = 0) -> RoundContext:
    return RoundContext(
        round=1, n=n, f=f, generator=torch.Generator().manual_seed(0), guiding_fn=lambda: guiding
    )


def _reference(guiding: list[list[float]], updates: list[list[float]], eps1: float, eps2: float):
    accepted, c1s, c2s = [], [], []
    for g, z in zip(guiding, updates, strict=True):
        dot = sum(a * b for a, b in zip(g, z, strict=True))
        c1 = (dot > 0) - (dot < 0)
        c2 = math.sqrt(sum(b * b for b in z)) / math.sqrt(sum(a * a for a in g))
        c1s.append(c1)
        c2s.append(c2)
        accepted.append(c1 > 0 and eps1 < c2 < eps2)
    kept = [z for z, a in zip(updates, accepted, strict=True) if a]
    mean = [sum(col) / len(kept) for col in zip(*kept, strict=True)] if kept else None
    return accepted, c1s, c2s, mean


def test_hand_example():
    guiding = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [3.0, 4.0]])
    updates = torch.tensor(
        [
            [1.5, 0.2],  # same direction, ratio ~1.51: accepted
            [0.0, -2.0],  # opposite direction (C1 < 0): rejected
            [4.0, 4.0],  # ratio 4 > eps2: rejected
            [1.0, 1.0],  # dot 7 > 0 but ratio 0.28 < eps1: rejected
        ]
    )
    out = aggregators.get("diversefl")(updates, _ctx(4, guiding))
    assert out.accepted.tolist() == [True, False, False, False]
    torch.testing.assert_close(out.update, torch.tensor([1.5, 0.2]))
    assert out.scores["c1"].tolist() == [1.0, -1.0, 1.0, 1.0]
    torch.testing.assert_close(out.scores["c2"][3], torch.tensor(math.sqrt(2) / 5))


def test_matches_reference_on_random_inputs():
    gen = torch.Generator().manual_seed(4)
    for n, d in [(5, 3), (23, 50), (9, 200)]:
        guiding = torch.randn(n, d, generator=gen)
        updates = guiding * torch.rand(n, 1, generator=gen) * 3 + torch.randn(n, d, generator=gen)
        acc, c1, c2, mean = _reference(guiding.tolist(), updates.tolist(), 0.5, 2.0)
        out = aggregators.get("diversefl")(updates, _ctx(n, guiding))
        assert out.accepted.tolist() == acc
        assert out.scores["c1"].tolist() == c1
        torch.testing.assert_close(out.scores["c2"], torch.tensor(c2), rtol=1e-5, atol=1e-6)
        if mean is not None:
            torch.testing.assert_close(out.update, torch.tensor(mean), rtol=1e-5, atol=1e-6)


def test_rejects_the_papers_attacks_and_accepts_honest():
    gen = torch.Generator().manual_seed(0)
    n, d, f = 10, 500, 4
    true = torch.randn(n, d, generator=gen)
    guiding = true + 0.3 * torch.randn(n, d, generator=gen)  # a noisy estimate, as on a sample
    updates = true.clone()
    ctx = _ctx(n, guiding, f)
    from diversefl import attacks

    updates[0] = attacks.get("sign_flip")(true[f:], true[:1], ctx)
    updates[1] = attacks.get("gaussian", sigma=1e4)(true[f:], true[1:2], ctx)
    updates[2] = attacks.get("same_value", sigma=1e4)(true[f:], true[2:3], ctx)
    updates[3] = float("nan")
    out = aggregators.get("diversefl")(updates, ctx)
    assert out.accepted.tolist() == [False] * f + [True] * (n - f)
    torch.testing.assert_close(out.update, true[f:].mean(0))
    assert torch.isfinite(out.update).all()


def test_all_rejected_gives_zero_update_and_permutation_invariance():
    guiding = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    out = aggregators.get("diversefl")(-guiding, _ctx(6, guiding))
    assert not out.accepted.any() and torch.count_nonzero(out.update) == 0
    updates = guiding * torch.tensor([1.0, -1.0, 1.2, 5.0, 0.9, 1.1])[:, None]
    base = aggregators.get("diversefl")(updates, _ctx(6, guiding))
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    permuted = aggregators.get("diversefl")(updates[perm], _ctx(6, guiding[perm]))
    torch.testing.assert_close(permuted.update, base.update)
    assert permuted.accepted.tolist() == base.accepted[perm].tolist()


def test_min_cosine_zero_is_the_sign_test_and_positive_tightens_it():
    gen = torch.Generator().manual_seed(3)
    guiding = torch.randn(40, 6, generator=gen)
    updates = guiding + 1.2 * torch.randn(40, 6, generator=gen)
    plain = aggregators.get("diversefl")(updates, _ctx(40, guiding))
    zero = aggregators.get("diversefl", min_cosine=0.0)(updates, _ctx(40, guiding))
    assert torch.equal(plain.accepted, zero.accepted)
    tight = aggregators.get("diversefl", min_cosine=0.6)(updates, _ctx(40, guiding))
    for j in range(40):  # reference: cosine by hand, the same ratio band
        g, z = guiding[j].tolist(), updates[j].tolist()
        dot = sum(a * b for a, b in zip(g, z, strict=True))
        ng, nz = math.sqrt(sum(a * a for a in g)), math.sqrt(sum(b * b for b in z))
        want = dot / (ng * nz) > 0.6 and 0.5 < nz / ng < 2.0
        assert bool(tight.accepted[j]) == want
        assert abs(float(tight.scores["cos"][j]) - dot / (ng * nz)) < 1e-5
    assert 0 < int(tight.accepted.sum()) < int(plain.accepted.sum())


def _quarantine_reference(passed_by_round: list[list[bool]], rate: float, after: int):
    """Plain loop: accept in a round iff passed and (tested < after or failures/tested <= rate)."""
    tested = [0] * len(passed_by_round[0])
    failed = [0] * len(passed_by_round[0])
    out = []
    for passed in passed_by_round:
        row = []
        for j, ok in enumerate(passed):
            tested[j] += 1
            failed[j] += not ok
            row.append(ok and (tested[j] < after or failed[j] / tested[j] <= rate))
        out.append(row)
    return out


def test_quarantine_matches_a_plain_loop_and_survives_a_checkpoint():
    gen = torch.Generator().manual_seed(0)
    n, d, rounds = 5, 4, 30
    # client 0 always honest; client 1 fails 60% of rounds; client 2 fails only early on
    fail_p = [0.0, 0.6, 0.0, 0.3, 0.1]
    rule = aggregators.get("diversefl", quarantine=0.25, quarantine_after=4)
    passed_by_round, got = [], []
    for r in range(1, rounds + 1):
        guiding = torch.randn(n, d, generator=gen)
        flips = torch.rand(n, generator=gen) < torch.tensor(fail_p)
        if r <= 3:
            flips[2] = True
        updates = torch.where(flips[:, None], -guiding, guiding * 1.1)
        passed_by_round.append((~flips).tolist())
        ctx = RoundContext(round=r, n=n, f=0, generator=gen, guiding_fn=lambda g=guiding: g)
        res = rule(updates, ctx)
        if r == 12:  # a second call in the same round must not count the round twice
            res = rule(updates, ctx)
        if r == 15:  # checkpoint and restore into a fresh rule
            state = rule.state_dict()
            rule = aggregators.get("diversefl", quarantine=0.25, quarantine_after=4)
            rule.load_state_dict(state)
        got.append(res.accepted.tolist())
    want = _quarantine_reference(passed_by_round, 0.25, 4)
    assert got == want
    assert not any(row[1] for row in got[10:])  # the frequent failer is shut out
    assert got[-1][2]  # the early failer regained trust


def test_the_test_is_strict_at_its_boundaries():
    """Eq. 10 and Algorithm 1: C1 > 0 and eps1 < C2 < eps2, all strict: an update orthogonal
    to its guide, or at exactly eps1 or eps2 times its norm, is rejected (exact in float)."""
    guiding = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    updates = torch.tensor([[1.0, 0.0], [4.0, 0.0], [1.0001, 0.0], [3.9999, 0.0], [1.0, 0.0]])
    out = aggregators.get("diversefl", eps1=0.5, eps2=2.0)(updates, _ctx(5, guiding))
    assert out.scores["c2"][:2].tolist() == [0.5, 2.0]
    assert out.scores["c1"][4].item() == 0.0
    assert out.accepted.tolist() == [False, False, True, True, False]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_helpers_the_adaptive_attack_uses_agree_with_the_rule(seed: int):
    """``diversefl_scores`` / ``diversefl_accept`` (the adaptive attack's self-check and the
    Flower test's oracle) give the aggregator's C1, C2 and decisions, boundary rows included."""
    gen = torch.Generator().manual_seed(seed)
    guiding = torch.randn(12, 6, generator=gen)
    scale = torch.tensor([0.3, 0.5, 0.7, 1.0, 1.5, 1.99, 2.0, 2.5, -1.0, 1.2, 0.9, 1.1])
    updates = guiding * scale[:, None] + 0.2 * torch.randn(12, 6, generator=gen)
    updates[6] = 2.0 * guiding[6]  # exactly eps2: rejected by both
    updates[0] = 0.5 * guiding[0]  # exactly eps1
    for eps1, eps2 in ((0.5, 2.0), (0.8, 1.3)):
        out = aggregators.get("diversefl", eps1=eps1, eps2=eps2)(updates, _ctx(12, guiding))
        c1, c2 = diversefl_scores(guiding, updates)
        assert c1.tolist() == out.scores["c1"].tolist()
        torch.testing.assert_close(c2, out.scores["c2"])
        assert diversefl_accept(c1, c2, eps1, eps2).tolist() == out.accepted.tolist()
        assert 0 < int(out.accepted.sum()) < 12


def test_quarantine_counts_a_malformed_update_as_a_failed_test():
    """A client that sends NaN (or infinity) in the rounds it would fail is rejected those
    rounds and charged the failure: same standing as a client that failed the test openly,
    checked against the plain loop, also when a round's rows are all malformed."""
    gen = torch.Generator().manual_seed(1)
    n, d, rounds = 4, 5, 16
    rule = aggregators.get("diversefl", quarantine=0.25, quarantine_after=3)
    passed_by_round, got = [], []
    for r in range(1, rounds + 1):
        guiding = torch.randn(n, d, generator=gen)
        updates = guiding * 1.1
        bad = [r % 2 == 0, False, r == 5, False]  # client 0 dodges every other round
        if r == 9:
            bad = [True] * n
        for j, b in enumerate(bad):
            if b:
                updates[j] = float("nan") if j != 2 else float("inf")
        passed_by_round.append([not b for b in bad])
        ctx = RoundContext(round=r, n=n, f=0, generator=gen, guiding_fn=lambda g=guiding: g)
        got.append(rule(updates, ctx).accepted.tolist())
    assert got == _quarantine_reference(passed_by_round, 0.25, 3)
    assert not any(row[0] for row in got[3:])  # fails half its tests: shut out
    assert got[-1][2]  # one bad round in 16: trusted again


def test_per_layer_survives_a_malformed_row():
    """A NaN row is dropped before the rule runs; the per-layer test still has the layer sizes
    (the context of the remaining clients keeps them)."""
    gen = torch.Generator().manual_seed(2)
    guiding = torch.randn(4, 4, generator=gen)
    updates = guiding * 1.2
    updates[1] = float("nan")
    rule = aggregators.get("diversefl", per_layer=True)
    out = rule(updates, _layer_ctx(4, guiding, (3, 1)))
    assert out.accepted.tolist() == [True, False, True, True]
    torch.testing.assert_close(out.update, updates[[0, 2, 3]].mean(0))


def _layer_ctx(n: int, guiding: torch.Tensor, sizes: tuple[int, ...] | None) -> RoundContext:
    return RoundContext(
        round=1,
        n=n,
        f=0,
        generator=torch.Generator().manual_seed(0),
        guiding_fn=lambda: guiding,
        layer_sizes=sizes,
    )


def test_per_layer_rejects_a_flipped_layer_the_whole_vector_hides():
    # layers of sizes 3 and 1: client 0's big first layer agrees, its last layer is flipped
    guiding = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 2.0]])
    updates = torch.tensor([[1.2, 1.0, 0.9, -0.5], [0.9, 0.1, 0.0, 1.8]])
    whole = aggregators.get("diversefl")(updates, _layer_ctx(2, guiding, (3, 1)))
    assert whole.accepted.tolist() == [True, True]  # dot 2.6 > 0 and ratio ~0.99
    layered = aggregators.get("diversefl", per_layer=True)(updates, _layer_ctx(2, guiding, (3, 1)))
    assert layered.accepted.tolist() == [False, True]
    assert layered.scores["layers_ok"].tolist() == [0.0, 1.0]
    torch.testing.assert_close(layered.update, updates[1])


def test_per_layer_matches_a_plain_loop_over_layers():
    gen = torch.Generator().manual_seed(5)
    sizes = (4, 2, 3)
    guiding = torch.randn(50, 9, generator=gen)
    guiding[7, 4:6] = 0.0  # a layer with a zero guiding block carries no direction: skipped
    updates = guiding + 1.0 * torch.randn(50, 9, generator=gen)
    for min_cos in (0.0, 0.3):
        got = aggregators.get("diversefl", per_layer=True, min_cosine=min_cos)(
            updates, _layer_ctx(50, guiding, sizes)
        )
        for j in range(50):
            g, z = guiding[j].tolist(), updates[j].tolist()
            ng, nz = math.sqrt(sum(a * a for a in g)), math.sqrt(sum(b * b for b in z))
            dot = sum(a * b for a, b in zip(g, z, strict=True))
            want = (dot / (ng * nz) > min_cos if min_cos else dot > 0) and 0.5 < nz / ng < 2.0
            start = 0
            for k in sizes:
                gb, zb = g[start : start + k], z[start : start + k]
                start += k
                gn = math.sqrt(sum(a * a for a in gb))
                if gn == 0:
                    continue
                zn = math.sqrt(sum(b * b for b in zb))
                d = sum(a * b for a, b in zip(gb, zb, strict=True))
                want = want and (d / (gn * zn) > min_cos if min_cos else d > 0)
            assert bool(got.accepted[j]) == want, (min_cos, j)
        assert 0 < int(got.accepted.sum()) < 50


def test_per_layer_needs_layer_sizes():
    guiding = torch.ones(2, 3)
    with pytest.raises(AggregatorError, match="layer sizes"):
        aggregators.get("diversefl", per_layer=True)(guiding, _layer_ctx(2, guiding, None))
    with pytest.raises(AggregatorError, match="sum to 2"):
        aggregators.get("diversefl", per_layer=True)(guiding, _layer_ctx(2, guiding, (1, 1)))


def test_direction_quarantine_ignores_norm_failures():
    """quarantine_on="direction": a client that only fails the norm band keeps its standing (it
    is still rejected in those rounds); one that keeps flipping direction is shut out."""
    gen = torch.Generator().manual_seed(1)
    n, d, rounds = 3, 5, 25
    kinds = {"any": [], "direction": []}
    rules = {
        k: aggregators.get("diversefl", quarantine=0.3, quarantine_after=3, quarantine_on=k)
        for k in kinds
    }
    dir_ok_by_round, pass_by_round = [], []
    for r in range(1, rounds + 1):
        guiding = torch.randn(n, d, generator=gen)
        big = r % 2 == 0  # client 1: norm 3x the guiding in every other round
        flip = r % 3 != 0  # client 2: opposite direction in 2 of 3 rounds
        updates = torch.stack(
            [guiding[0], guiding[1] * (3.0 if big else 1.0), -guiding[2] if flip else guiding[2]]
        )
        dir_ok_by_round.append([True, True, not flip])
        pass_by_round.append([True, not big, not flip])
        ctx = RoundContext(round=r, n=n, f=0, generator=gen, guiding_fn=lambda g=guiding: g)
        for k, rule in rules.items():
            kinds[k].append(rule(updates, ctx).accepted.tolist())
    # reference: accept iff the round's full test passes and the client's standing, counted
    # on direction results only, is intact (where direction fails, the test fails anyway)
    standing = _quarantine_reference(dir_ok_by_round, 0.3, 3)
    want = [
        [p and s for p, s in zip(pr, sr, strict=True)]
        for pr, sr in zip(pass_by_round, standing, strict=True)
    ]
    assert kinds["direction"] == want
    assert kinds["any"] == _quarantine_reference(pass_by_round, 0.3, 3)
    assert any(row[1] for row in kinds["direction"][10:])  # client 1 keeps its standing
    assert not any(row[1] for row in kinds["any"][10:])  # "any" shuts it out
    assert not any(row[2] for row in kinds["direction"][10:])  # the flipper is shut out


def test_quarantine_on_is_validated():
    with pytest.raises(ValueError, match="'norm'"):
        aggregators.get("diversefl", quarantine=0.3, quarantine_on="norm")


def test_clip_to_guide_scales_accepted_updates_to_the_guide_norm():
    guiding = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    updates = torch.tensor(
        [[1.8, 0.6], [0.0, 1.5], [-3.0, -4.0]]
    )  # ratios ~1.90, 0.75; 3rd rejected
    got = aggregators.get("diversefl", clip_to_guide=True)(updates, _ctx(3, guiding))
    assert got.accepted.tolist() == [True, True, False]
    n0 = math.sqrt(1.8**2 + 0.6**2)
    first = [1.8 / n0, 0.6 / n0]  # scaled down to |g_0| = 1
    second = [0.0, 1.5]  # already below |g_1| = 2: unchanged
    want = [(a + b) / 2 for a, b in zip(first, second, strict=True)]
    torch.testing.assert_close(got.update, torch.tensor(want))
    plain = aggregators.get("diversefl")(updates, _ctx(3, guiding))
    assert plain.accepted.tolist() == got.accepted.tolist()  # clipping never changes who passes
