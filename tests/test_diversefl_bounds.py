"""Bounds on accepted updates under DiverseFL (cone, orthogonal, agreement) against hand-computed
2-D and 3-D vectors, the plain rule unchanged bit for bit, and the adaptive attack adapted to
each defense: its message passes the defense's test and does the most harm (distance of the
defended aggregate from the honest mean) among a few candidate messages, judged by the rule."""

from __future__ import annotations

import math

import pytest
import torch

from diversefl.aggregators.base import AggregatorError
from diversefl.aggregators.diversefl import DiverseFL
from diversefl.aggregators.diversefl_bounds import (
    agreement_mean,
    agreement_weights,
    bounded_mean,
    cone_bound,
    orthogonal_bound,
    project_to_cone,
)
from diversefl.aggregators.diversefl_rule import diversefl_test
from diversefl.attacks import REGISTRY as ATTACKS
from diversefl.round import RoundContext

R2 = math.sqrt(2.0)


def _ctx(guiding: torch.Tensor, byz: torch.Tensor | None = None, halves=None, r: int = 1):
    n = guiding.shape[0]
    return RoundContext(
        round=r,
        n=n,
        f=0 if byz is None else int(byz.sum()),
        generator=torch.Generator().manual_seed(0),
        byzantine=byz,
        guiding_fn=lambda: guiding,
        guiding_halves_fn=None if halves is None else (lambda: halves),
    )


# -- the bounds by hand ---------------------------------------------------------------------


def test_cone_projection_by_hand_in_2d():
    """Guide [1, 0], cone of 45 degrees (cos = 1/sqrt 2): inside stays, 90 degrees lands on
    the edge at [1, 1], 135 degrees and beyond (the polar cone) go to 0."""
    g = torch.tensor([[1.0, 0.0]] * 5, dtype=torch.float64)
    z = torch.tensor(
        [[2.0, 0.5], [1.0, 1.0], [0.0, 2.0], [-1.0, 1.0], [-1.0, 0.5]], dtype=torch.float64
    )
    got = project_to_cone(g, z, 1 / R2)
    expected = torch.tensor(
        [[2.0, 0.5], [1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_cone_projection_is_the_nearest_point_of_the_cone():
    """Against a brute-force reference: the nearest of 200,001 points of the 2-D cone."""
    gen = torch.Generator().manual_seed(2)
    c = 0.6
    half = math.acos(c)
    angles = torch.linspace(-half, half, 2001, dtype=torch.float64)
    radii = torch.linspace(0, 6, 101, dtype=torch.float64)
    pts = (radii[:, None, None] * torch.stack([angles.cos(), angles.sin()], -1)[None]).view(-1, 2)
    for _ in range(20):
        z = torch.randn(1, 2, generator=gen, dtype=torch.float64) * 2
        got = project_to_cone(torch.tensor([[1.0, 0.0]], dtype=torch.float64), z, c)[0]
        best = pts[(pts - z).norm(dim=1).argmin()]
        assert float((got - z).norm()) <= float((best - z).norm()) + 1e-9
        assert float((got - best).norm()) < 0.07  # the grid's resolution


def test_cone_bound_by_hand_in_3d():
    """Guide [0, 0, 2], cos 0.6 (sin 0.8); z = [3, 0, 0] is 90 degrees off: a = 0, p = z,
    b = 3, reach = 0 * 0.6 + 3 * 0.8 = 2.4, projection 2.4 * [0.8, 0, 0.6] = [1.92, 0, 1.44],
    norm 2.4, clipped to the guide's norm 2: [1.6, 0, 1.2]."""
    g = torch.tensor([[0.0, 0.0, 2.0]], dtype=torch.float64)
    z = torch.tensor([[3.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(project_to_cone(g, z, 0.6), torch.tensor([[1.92, 0.0, 1.44]],
                               dtype=torch.float64))  # fmt: skip
    torch.testing.assert_close(cone_bound(g, z, 0.6), torch.tensor([[1.6, 0.0, 1.2]],
                               dtype=torch.float64))  # fmt: skip
    per_client = cone_bound(g.expand(2, 3), z.expand(2, 3), torch.tensor([0.6, 0.0]))
    torch.testing.assert_close(per_client[1], torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64))


def test_orthogonal_bound_by_hand():
    """Guide [2, 0, 0]: [1, 3, -1] keeps its along-guide 1 -> [1, 0, 0]; [5, 1, 1] keeps 5,
    capped at |g| = 2 -> [2, 0, 0]; a zero guide gives 0."""
    g = torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    z = torch.tensor([[1.0, 3.0, -1.0], [5.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    expected = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(orthogonal_bound(g, z), expected)


def test_agreement_mean_by_hand():
    """Guides [1, 0]: z1 = [1, 0] (cos 1, weight 1), z2 = [1, 1] (cos 1/sqrt 2, clipped to
    [1, 1] / sqrt 2), z3 = [-1, 0] (weight 0), z4 rejected. Mean = (1 * [1, 0] + 0.7071 *
    [0.7071, 0.7071]) / 1.7071 = [1.5, 0.5] / (1 + 1/sqrt 2)."""
    g = torch.tensor([[1.0, 0.0]] * 4, dtype=torch.float64)
    z = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    accepted = torch.tensor([True, True, True, False])
    w = agreement_weights(g, z, accepted)
    torch.testing.assert_close(w, torch.tensor([1.0, 1 / R2, 0.0, 0.0], dtype=torch.float64))
    expected = torch.tensor([1.5, 0.5], dtype=torch.float64) / (1 + 1 / R2)
    torch.testing.assert_close(agreement_mean(g, z, accepted), expected)
    none = agreement_mean(g, z, torch.tensor([False, False, True, False]))
    assert torch.equal(none, torch.zeros(2, dtype=torch.float64))


def test_the_rule_applies_a_bound_to_accepted_updates_only():
    """Guides [1, 0]; client 2 is rejected (ratio 5), so only clients 0 and 1 enter the mean:
    cone at cos 0.8 (sin 0.6) around [1, 0] turns [0.5, 1.0] (a = 0.5, b = 1, reach = 0.4 +
    0.6 = 1.0) into [0.8, 0.6]; [0.8, 0.1] is inside it and shorter than the guide: mean
    [0.8, 0.35]. Orthogonal keeps 0.8 and 0.5 along [1, 0]: mean [0.65, 0]."""
    g = torch.tensor([[1.0, 0.0]] * 3)
    z = torch.tensor([[0.8, 0.1], [0.5, 1.0], [5.0, 0.0]])
    out = DiverseFL(bound="cone", cone_cos=0.8)(z, _ctx(g))
    assert out.accepted.tolist() == [True, True, False]
    torch.testing.assert_close(out.update, torch.tensor([0.8, 0.35]))
    ortho = DiverseFL(bound="orthogonal")(z, _ctx(g))
    torch.testing.assert_close(ortho.update, torch.tensor([0.65, 0.0]))


def test_cone_auto_is_the_predicted_honest_cosine_behind_the_auto_threshold():
    """Halves [1, 0] and [0.6, 0.8] (c_half = 0.6) predict an honest cosine sqrt(1.2 / 1.6) =
    0.866 (sin 0.5); the threshold is 0.75 of it, 0.6495. [1, 0.8] (cos 0.781) passes and is
    projected onto the cone's edge: a = 1, b = 0.8, reach = 0.866 + 0.4, then clipped to the
    guide's norm: [0.866, 0.5]. [0.9, 0.1] is inside the cone and shorter than the guide:
    kept. [0.5, 1] (cos 0.447) is rejected. Mean [0.8830, 0.3]."""
    g = torch.tensor([[1.0, 0.0]] * 3, dtype=torch.float64)
    halves = torch.stack([g, torch.tensor([[0.6, 0.8]] * 3, dtype=torch.float64)])
    z = torch.tensor([[1.0, 0.8], [0.9, 0.1], [0.5, 1.0]], dtype=torch.float64)
    rule = DiverseFL(min_cosine="auto", bound="cone", cone_cos="auto")
    out = rule(z, _ctx(g, halves=halves))
    cone = math.sqrt(1.2 / 1.6)
    torch.testing.assert_close(out.scores["threshold"], torch.full((3,), 0.75 * cone).double())
    assert out.accepted.tolist() == [True, True, False]
    torch.testing.assert_close(out.update, torch.tensor([(cone + 0.9) / 2, 0.3]).double())
    # the same as a cone of that cosine given by hand
    by_hand = DiverseFL(min_cosine="auto", bound="cone", cone_cos=cone)(z, _ctx(g, halves=halves))
    torch.testing.assert_close(out.update, by_hand.update)


@pytest.mark.parametrize("seed", range(4))
def test_the_plain_rule_is_unchanged_bit_for_bit(seed: int):
    """The paper's rule: the plain mean of the rows that pass C1 > 0 and the ratio band, with
    the scores c1, c2 and cos only (a plain loop over the clients as the reference)."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(9, 50, generator=gen)
    z = g * torch.rand(9, 1, generator=gen) * 3 + torch.randn(9, 50, generator=gen)
    out = DiverseFL()(z, _ctx(g))
    pairs = zip(g, z, strict=True)
    keep = [bool((gi @ zi) > 0 and 0.5 < zi.norm() / gi.norm() < 2) for gi, zi in pairs]
    assert out.accepted.tolist() == keep
    mask = torch.tensor(keep)
    assert torch.equal(out.update, (z * mask[:, None].float()).sum(0) / mask.sum())
    assert set(out.scores) == {"c1", "c2", "cos"}
    test = diversefl_test(g, z, 0.5, 2.0)
    assert torch.equal(out.accepted, test.accepted)


def _guide_stand_in(guiding: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Each row replaced by its guide's direction at the row's own length (a plain loop)."""
    out = torch.zeros_like(rows)
    for j in range(rows.shape[0]):
        out[j] = rows[j].norm() * guiding[j] / guiding[j].norm()
    return out


@pytest.mark.parametrize("seed", range(6))
def test_the_cone_bounds_what_accepted_attackers_move_the_aggregate(seed: int):
    """docs/label-flip.md#attacker-bound: with the cone of cosine p and the clip to the guide,
    the aggregate is within (f_acc / n_acc) max_j |g_j| sqrt(2 (1 - p)) of the aggregate with
    every accepted Byzantine row replaced by its guide's direction at that row's length, where
    f_acc of the n_acc accepted rows are Byzantine, whatever those rows are (messages turned the
    same way, up to 30 degrees outside the cone, at random lengths); a per-row reference."""
    gen = torch.Generator().manual_seed(seed)
    n, d, p = 12, 40, 0.6
    g = torch.randn(n, d, generator=gen, dtype=torch.float64)
    honest = g + 0.3 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    z = honest.clone()
    byz = torch.zeros(n, dtype=torch.bool)
    byz[:4] = True
    turn = torch.randn(d, generator=gen, dtype=torch.float64)  # one harm direction for all
    for j in range(4):  # inside the test's acceptance region, up to 30 degrees off the cone
        u = g[j] / g[j].norm()
        v = turn - (turn @ u) * u
        v = v / v.norm()
        angle = math.acos(p) + float(torch.rand(1, generator=gen)) * math.pi / 6  # < 90 deg
        length = g[j].norm() * (0.6 + 1.3 * float(torch.rand(1, generator=gen)))
        z[j] = length * (math.cos(angle) * u + math.sin(angle) * v)
    rule = DiverseFL(min_cosine=0.0, bound="cone", cone_cos=p)
    out = rule(z, _ctx(g, byz))
    acc = out.accepted
    assert bool(acc[:4].all())  # positive cosine, ratio in (0.5, 2): every attacker passes
    bounded = cone_bound(g, z, p)
    stand_in = torch.where(byz[:, None], _guide_stand_in(g, bounded), bounded)
    reference = stand_in[acc].mean(dim=0)
    f_acc, n_acc = int((acc & byz).sum()), int(acc.sum())
    limit = f_acc / n_acc * float(g[byz].norm(dim=1).max()) * math.sqrt(2 * (1 - p))
    gap = float((out.update - reference).norm())
    assert gap <= limit + 1e-12
    assert gap > 0.2 * limit  # the attackers do move it: the bound is not vacuous here


def test_the_cone_bound_is_reached_by_attackers_aligned_on_one_direction():
    """Equality: two attackers sharing one guide direction send 80 degrees off it at 1.5 times
    its norm, turned the same way; the cone of cosine p = 0.8 and the clip put them on the cone's
    edge at the guide's norm, so the aggregate moves by exactly (f / n) |g| sqrt(2 (1 - p))
    from the guide stand-in (2 of 4 clients, |g| = 2: 0.5 * 2 * sqrt(0.4))."""
    p, angle = 0.8, math.radians(80)
    g = torch.tensor([[2.0, 0.0, 0.0]] * 4, dtype=torch.float64)
    sent = 3.0 * torch.tensor([math.cos(angle), math.sin(angle), 0.0], dtype=torch.float64)
    z = torch.stack([sent, sent, g[2], g[3]])
    byz = torch.tensor([True, True, False, False])
    out = DiverseFL(bound="cone", cone_cos=p)(z, _ctx(g, byz))
    assert out.accepted.all()
    reference = g.mean(dim=0)  # the stand-in: each attacker's guide at its bounded length |g|
    gap = float((out.update - reference).norm())
    assert gap == pytest.approx(0.5 * 2.0 * math.sqrt(2 * (1 - p)), abs=1e-12)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"bound": "box"}, "bound must be one of"),
        ({"bound": "cone", "cone_cos": 1.0}, r"cone_cos must be in \[0, 1\)"),
        ({"bound": "cone", "cone_cos": "wide"}, "cone_cos must be a number in"),
        ({"bound": "cone", "cone_cos": "auto"}, "needs min_cosine = 'auto' and bound = 'cone'"),
        ({"min_cosine": "auto", "cone_cos": "auto"}, "bound = 'none'"),
    ],
)
def test_bad_bound_settings_are_one_clear_error(settings, message):
    with pytest.raises(AggregatorError, match=message):
        DiverseFL(**settings)


# -- the adaptive attack per defense ----------------------------------------------------------
#
# Honest rows h1 = [1, 0.4, 0], h2 = [1, 0, 0] (mean mu = [1, 0.2, 0]; each its own guide, so
# every defense leaves them as they are), one Byzantine client with guide g = [1, 0, 0]. The
# target -mu lies in span{u, v} with u = [1, 0, 0], v = [0, -1, 0], so a message at cosine c
# with g is |z| (c, -sqrt(1 - c^2), 0).

HONEST = torch.tensor([[1.0, 0.4, 0.0], [1.0, 0.0, 0.0]])
GUIDE = torch.tensor([[1.0, 0.0, 0.0]])
BYZ = torch.tensor([False, False, True])
GUIDES = torch.cat([HONEST, GUIDE])


def _at(c: float, norm: float) -> torch.Tensor:
    return torch.tensor([[norm * c, -norm * math.sqrt(1 - c * c), 0.0]])


def _sent(settings: dict, halves=None) -> torch.Tensor:
    ctx = _ctx(GUIDES, BYZ, halves)
    return ATTACKS["adaptive"](**settings)(HONEST, torch.zeros(1, 3), ctx)


def _harm(rule: DiverseFL, message: torch.Tensor, halves=None) -> tuple[bool, float]:
    """Whether the rule accepts the message, and the distance of its aggregate from mu."""
    out = rule(torch.cat([HONEST, message]), _ctx(GUIDES, halves=halves))
    return bool(out.accepted[2]), float((out.update - HONEST.mean(0)).norm())


def _assert_worst(rule: DiverseFL, sent: torch.Tensor, candidates, halves=None) -> None:
    ok, harm = _harm(rule, sent, halves)
    assert ok, "the attack's message fails the defense's test"
    for c, norm in candidates:
        cand_ok, cand_harm = _harm(rule, _at(c, norm), halves)
        assert cand_ok  # every candidate passes too: the comparison is among passing messages
        assert harm >= cand_harm - 1e-6, (c, norm, harm, cand_harm)


def test_against_plain_the_largest_step_at_the_threshold_cosine():
    sent = _sent({"cos_min": 0.6})
    torch.testing.assert_close(sent, _at(0.6, 1.95))  # [1.17, -1.56, 0]
    rule = DiverseFL(min_cosine=0.5)
    _assert_worst(rule, sent, [(0.6, 1.0), (0.6, 1.5), (0.8, 1.95), (0.95, 1.95)])


def test_against_clip_norm_of_the_guide_at_the_threshold_cosine():
    sent = _sent({"cos_min": 0.6, "against": "clip"})
    torch.testing.assert_close(sent, _at(0.6, 1.0))  # [0.6, -0.8, 0]
    rule = DiverseFL(min_cosine=0.5, clip_to_guide=True)
    _assert_worst(rule, sent, [(0.6, 0.6), (0.6, 1.95), (0.7, 1.0), (0.9, 1.5)])


def test_against_cone_on_the_cones_edge_with_the_allowed_norm():
    sent = _sent({"cos_min": 0.6, "against": "cone", "cone_cos": 0.8})
    torch.testing.assert_close(sent, _at(0.8, 1.0))  # [0.8, -0.6, 0]
    rule = DiverseFL(min_cosine=0.5, bound="cone", cone_cos=0.8)
    _assert_worst(rule, sent, [(0.6, 1.0), (0.6, 1.95), (0.8, 0.7), (0.9, 1.0)])


def test_against_orthogonal_the_worse_end_of_the_along_guide_range():
    """Only min(z . u, 1) u survives. All the way along the guide (z = g) the aggregate is
    [1, 0.1333, 0], 0.067 from mu; the least along-guide message, cosine 0.6 at ratio 0.55,
    leaves 0.33 u: [0.7767, 0.1333, 0], 0.233 from mu. The attack sends the latter."""
    sent = _sent({"cos_min": 0.6, "against": "orthogonal"})
    torch.testing.assert_close(sent, _at(0.6, 0.55))  # [0.33, -0.44, 0]
    rule = DiverseFL(min_cosine=0.5, bound="orthogonal")
    assert _harm(rule, sent)[1] == pytest.approx(math.hypot(1 - 0.7767, 0.0667), abs=1e-3)
    _assert_worst(rule, sent, [(1.0 - 1e-9, 1.0), (0.6, 1.0), (0.8, 1.95), (0.6, 0.8)])


def test_against_orthogonal_takes_the_other_end_when_that_one_is_worse():
    """With honest rows that point away from the guide's axis (h = [0.2, 1, 0]), adding the
    guide itself moves the mean most: the attack sends g."""
    honest = torch.tensor([[0.2, 1.0, 0.0], [0.2, 1.2, 0.0]])
    guides = torch.cat([honest, GUIDE])
    ctx = _ctx(guides, BYZ)
    sent = ATTACKS["adaptive"](cos_min=0.6, against="orthogonal")(honest, torch.zeros(1, 3), ctx)
    torch.testing.assert_close(sent, GUIDE)


def test_against_agreement_the_cosine_that_trades_weight_for_direction_best():
    sent = _sent({"cos_min": 0.6, "against": "agreement"})
    assert float(sent.norm()) == pytest.approx(1.0)  # the allowed norm
    rule = DiverseFL(min_cosine=0.5, bound="agreement")
    grid = [(0.6 + 0.05 * k, 1.0) for k in range(8)] + [(0.6, 1.95), (0.99, 1.0)]
    _assert_worst(rule, sent, grid)


def test_against_auto_the_servers_own_threshold_plus_a_small_margin():
    """The Byzantine client's halves [1, 0, 0] and [1, 1, 0] give c_half = 1/sqrt 2 and the
    server's threshold 0.65 * sqrt(2c / (1 + c)) = 0.5916; the attacker sends cosine 0.6116 at
    ratio 1.95 (margin 0.65 on both sides). The honest clients' halves agree fully (threshold
    0.65)."""
    halves = torch.stack([GUIDES, GUIDES])
    halves[1, 2] = torch.tensor([1.0, 1.0, 0.0])
    c = 1 / R2
    threshold = 0.65 * math.sqrt(2 * c / (1 + c))
    sent = _sent({"against": "auto", "auto_margin": 0.65}, halves)
    torch.testing.assert_close(sent, _at(threshold + 0.02, 1.95))
    rule = DiverseFL(min_cosine="auto", auto_margin=0.65)
    candidates = [(threshold + 0.02, 1.0), (threshold + 0.1, 1.95), (0.9, 1.95)]
    _assert_worst(rule, sent, candidates, halves)
    rule = DiverseFL(min_cosine="auto", auto_margin=0.65)
    assert not _harm(rule, _at(threshold - 0.02, 1.95), halves)[0]  # just below: rejected


def _attacked_rounds(attack, rule, byz, d, seed, noise):
    """Five rounds of random guides, half-sample guides (noise[0]) and honest rows (noise[1])
    with the attack's rows in place of the Byzantine ones: (rows, the rule's output, the
    server's context) per round."""
    gen = torch.Generator().manual_seed(seed)
    n, f = byz.shape[0], int(byz.sum())
    for r in range(1, 6):
        guides = torch.randn(n, d, generator=gen)
        halves = guides[None] + noise[0] * torch.randn(2, n, d, generator=gen)
        honest = guides[~byz] + noise[1] * torch.randn(n - f, d, generator=gen)
        rows = torch.zeros(n, d)
        rows[~byz] = honest
        rows[byz] = attack(honest, torch.zeros(f, d), _ctx(guides, byz, halves, r))
        server = _ctx(guides, halves=halves, r=r)
        yield rows, rule(rows, server), _ctx(guides, halves=halves, r=r)


def test_against_auto_follows_the_moving_average_over_rounds():
    """Over rounds with changing halves the attacker's mirror stays the server's threshold:
    every message is accepted at exactly auto_above over the server's logged threshold."""
    byz = torch.tensor([False, True, False, False, True, False])
    attack, rule = ATTACKS["adaptive"](against="auto"), DiverseFL(min_cosine="auto")
    for _, out, _ in _attacked_rounds(attack, rule, byz, 10, seed=7, noise=(0.7, 0.3)):
        assert bool(out.accepted[byz].all())
        gap = out.scores["cos"][byz] - out.scores["threshold"][byz]
        torch.testing.assert_close(gap, torch.full((2,), 0.02), atol=1e-5, rtol=0)


def test_against_cone_auto_the_servers_predicted_honest_cosine():
    """The Byzantine client's halves [1, 0, 0] and [1, 1, 0] (c_half = 1/sqrt 2) put the
    server's cone at sqrt(2c / (1 + c)) = 0.9102, above the threshold 0.65 of that plus
    0.02: the attacker sends the cone's edge at ratio 1, which the rule leaves as it is, and
    no other passing message moves the aggregate farther."""
    halves = torch.stack([GUIDES, GUIDES])
    halves[1, 2] = torch.tensor([1.0, 1.0, 0.0])
    c = 1 / R2
    cone = math.sqrt(2 * c / (1 + c))
    settings = {"cos_min": "auto", "against": "cone", "cone_cos": "auto", "auto_margin": 0.65}
    sent = _sent(settings, halves)
    torch.testing.assert_close(sent, _at(cone, 1.0))
    rule = DiverseFL(min_cosine="auto", auto_margin=0.65, bound="cone", cone_cos="auto")
    out = rule(torch.cat([HONEST, sent]), _ctx(GUIDES, halves=halves))
    torch.testing.assert_close(out.update, torch.cat([HONEST, sent]).mean(0))  # untouched
    candidates = [(0.65 * cone + 0.02, 1.0), (0.65 * cone + 0.02, 1.95), (0.95, 1.0), (0.8, 1.5)]
    _assert_worst(rule, sent, candidates, halves)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"against": "box"}, "against must be one of"),
        ({"against": "cone", "cone_cos": "auto"}, "'auto' with cos_min = 'auto'"),
        ({"cos_min": "automatic"}, "cos_min must be a number"),
        ({"against": "clip", "eps2": 0.9, "eps1": 0.1}, "need eps1 < 1 < eps2"),
        ({"auto_above": 0.2}, r"auto_above must be in \(0, 0.05\)"),
        ({"cone_cos": 1.0}, r"cone_cos must be in \[0, 1\)"),
    ],
)
def test_bad_attack_settings_are_one_clear_error(settings, message):
    with pytest.raises(ValueError, match=message):
        ATTACKS["adaptive"](**settings)


def test_the_attack_mirrors_the_rules_auto_defaults():
    rule, attack = DiverseFL(), ATTACKS["adaptive"]()
    for key in ("auto_margin", "auto_decay", "auto_fallback"):
        assert getattr(attack, key) == getattr(rule, key)


# -- auto_mad: the round's spread raises the "auto" thresholds ---------------------------------


def test_spread_threshold_by_hand():
    """Six clients predicted at 1.0 (threshold 0.75, margin 0.75) with cosines 0.99 ... 0.95 and
    0.5: median ratio 0.965, MAD 0.015 (x 1.4826 = 0.02224), so at k = 4 every threshold rises
    to 0.965 - 0.08896 = 0.87604; the 0.5 client fails it, the others pass. A client without a
    prediction (threshold 0) keeps its threshold; five calibrated clients are the least that
    give a spread."""
    from diversefl.aggregators.diversefl_auto import spread_threshold

    cos = torch.tensor([0.99, 0.98, 0.97, 0.96, 0.95, 0.5], dtype=torch.float64)
    base = torch.full((6,), 0.75, dtype=torch.float64)
    got = spread_threshold(cos, base, 0.75, 4.0)
    lo = 0.965 - 4 * 1.4826 * 0.015
    torch.testing.assert_close(got, torch.full((6,), lo, dtype=torch.float64))
    assert (cos > got).tolist() == [True] * 5 + [False]
    # a wide spread never lowers a threshold
    wide = torch.tensor([0.99, 0.5, 0.9, 0.3, 0.8, 0.6], dtype=torch.float64)
    assert torch.equal(spread_threshold(wide, base, 0.75, 4.0), base)
    # client 0 has no prediction: excluded from the spread and left at 0
    with_zero = base.clone()
    with_zero[0] = 0.0
    out = spread_threshold(torch.cat([cos, cos[:1]]), torch.cat([with_zero, base[:1]]), 0.75, 4.0)
    assert float(out[0]) == 0.0 and bool((out[1:] > 0.75).all())
    few = spread_threshold(cos[:4], base[:4], 0.75, 4.0)
    assert torch.equal(few, base[:4])


def test_the_rule_with_auto_mad_tests_against_the_raised_thresholds():
    """The rule's logged thresholds are spread_threshold of its "auto" ones and the round's
    cosines, and it accepts exactly the rows above them; the cone stays at the prediction."""
    from diversefl.aggregators.diversefl_auto import spread_threshold

    gen = torch.Generator().manual_seed(3)
    n, d = 9, 40
    guides = torch.randn(n, d, generator=gen, dtype=torch.float64)
    halves = guides[None] + 0.3 * torch.randn(2, n, d, generator=gen, dtype=torch.float64)
    scale = torch.tensor([0.1] * (n - 1) + [0.5], dtype=torch.float64)[:, None]
    z = guides + scale * torch.randn(n, d, generator=gen, dtype=torch.float64)
    plain = DiverseFL(min_cosine="auto")(z, _ctx(guides, halves=halves))
    out = DiverseFL(min_cosine="auto", auto_mad=2.0)(z, _ctx(guides, halves=halves))
    want = spread_threshold(plain.scores["cos"], plain.scores["threshold"], 0.75, 2.0)
    torch.testing.assert_close(out.scores["threshold"], want)
    assert bool((want > plain.scores["threshold"]).any())  # the spread binds here
    band = plain.scores["c2"].gt(0.5) & plain.scores["c2"].lt(2.0)
    assert out.accepted.tolist() == ((out.scores["cos"] > want) & band).tolist()
    assert not bool(out.accepted[-1]) and bool(plain.accepted[-1])  # caught by the spread only
    coned = DiverseFL(min_cosine="auto", auto_mad=2.0, bound="cone", cone_cos="auto")
    cone = (plain.scores["threshold"] / 0.75).clamp(max=0.99)
    got = coned(z, _ctx(guides, halves=halves)).update
    torch.testing.assert_close(got, cone_bound(guides, z, cone)[out.accepted].mean(0))


def test_against_auto_mad_every_message_passes_the_raised_threshold():
    """Over rounds, the attack that mirrors auto_mad sends messages the rule accepts, each at
    most auto_above (plus rounding) over the raised threshold it faces, and the rule's raised
    thresholds are above the plain "auto" ones in some round."""
    byz = torch.zeros(12, dtype=torch.bool)
    byz[[2, 7, 9]] = True
    attack = ATTACKS["adaptive"](against="auto", auto_mad=3.0)
    rule, plain_rule = DiverseFL(min_cosine="auto", auto_mad=3.0), DiverseFL(min_cosine="auto")
    raised_any = False
    for rows, out, ctx in _attacked_rounds(attack, rule, byz, 60, seed=11, noise=(0.5, 0.15)):
        assert bool(out.accepted[byz].all())
        gap = out.scores["cos"][byz] - out.scores["threshold"][byz]
        assert bool((gap > 0).all()) and bool((gap < 0.02 + 1e-4).all()), gap
        plain = plain_rule(rows, ctx)
        raised_any |= bool((out.scores["threshold"] > plain.scores["threshold"] + 1e-6).any())
    assert raised_any


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DiverseFL(min_cosine=0.5, auto_mad=4.0), "auto_mad must be >= 0 and needs"),
        (lambda: DiverseFL(min_cosine="auto", auto_mad=-1.0), "auto_mad must be >= 0"),
        (lambda: ATTACKS["adaptive"](cos_min=0.6, auto_mad=4.0), "auto_mad must be >= 0 and"),
    ],
)
def test_bad_auto_mad_is_one_clear_error(make, message):
    with pytest.raises((AggregatorError, ValueError), match=message):
        make()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bound", ["cone", "orthogonal", "agreement"])
def test_bounded_mean_equals_the_mean_of_the_bounded_rows(bound: str, dtype: torch.dtype):
    """The coefficient form (weighted sums) against the row-wise reference (agreement: a plain
    loop): random rows at every angle to their guides, a zero guide, a zero update, an update
    along and one against its guide, per-client cones; rejected rows (any value) do not count."""
    from diversefl.aggregators.diversefl_bounds import bounded_rows

    gen = torch.Generator().manual_seed(11)
    n, d = 12, 300
    g = torch.randn(n, d, generator=gen, dtype=torch.float64)
    z = torch.randn(n, d, generator=gen, dtype=torch.float64) * 2.0
    z[:4] = g[:4] * torch.tensor([0.5, 1.5, 3.0, 0.9])[:, None] + 0.3 * z[:4]  # near the guide
    g[5] = 0.0  # no guide: its row counts as zero
    z[6] = 0.0  # a zero update
    z[7] = 2.0 * g[7]  # exactly along (clipped to |g|)
    z[8] = -g[8]  # exactly against
    g, z = g.to(dtype), z.to(dtype)
    accepted = torch.ones(n, dtype=torch.bool)
    accepted[9] = False
    cone = torch.linspace(0.0, 0.95, n, dtype=dtype)
    got = bounded_mean(bound, g, z, accepted, cone)
    if bound == "agreement":  # a plain loop: weights max(cos, 0) of accepted rows, rows clipped
        w = agreement_weights(g, z, accepted)
        rows = [
            w[j] * z[j] * min(1.0, float(g[j].norm() / z[j].norm())) for j in range(n) if w[j] > 0
        ]
        want = sum(rows) / w.sum()
    else:
        want = bounded_rows(bound, g, z, cone)[accepted].mean(0)
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(got, want, **tol)
    none = torch.zeros(n, dtype=torch.bool)
    assert torch.equal(bounded_mean(bound, g, z, none, cone), torch.zeros(d, dtype=dtype))
