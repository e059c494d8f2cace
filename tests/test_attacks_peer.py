"""The peer-parity attacks (issue #33): Inf, Mimic, Fang et al.'s Krum and trimmed-mean attacks
and the optimised ALIE / IPM, against hand computations and plain-loop references, and each
end to end through ``diversefl run``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch

from diversefl import aggregators, attacks
from diversefl.aggregators import RoundContext
from diversefl.attacks.alie import alie_z_max
from diversefl.attacks.fang import krum_lambda_bound
from diversefl.attacks.rule_search import build_rule
from diversefl.cli import main

NEW = ["inf", "mimic", "fang_krum", "fang_trmean", "alie_opt", "ipm_opt"]


def _ctx(n: int, f: int, seed: int = 0, **kw) -> RoundContext:
    return RoundContext(round=1, n=n, f=f, generator=torch.Generator().manual_seed(seed), **kw)


def _full_ctx(n: int, f: int, guiding: torch.Tensor, byz: torch.Tensor) -> RoundContext:
    root = guiding.mean(0) + 1e-3
    return _ctx(
        n,
        f,
        guiding_fn=lambda: guiding,
        byzantine=byz,
        server_grad_fn=lambda idx: root,
        shared_samples=torch.arange(n),
    )


# -- Inf ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", sorted(aggregators.REGISTRY))
def test_inf_rows_leave_every_rule_finite_and_are_rejected(rule):
    n, f, d = 11, 2, 6
    gen = torch.Generator().manual_seed(3)
    honest = torch.randn(n - f, d, generator=gen)
    sent = attacks.get("inf")(honest, torch.randn(f, d, generator=gen), _ctx(n, f))
    assert sent.shape == (f, d) and bool(torch.isposinf(sent).all())
    updates = torch.cat([honest, sent])
    byz = torch.zeros(n, dtype=torch.bool)
    byz[n - f :] = True
    guiding = torch.cat([honest, honest[:f]]) + 0.1
    out = aggregators.get(rule)(updates, _full_ctx(n, f, guiding, byz))
    assert bool(torch.isfinite(out.update).all()), rule
    assert not bool(out.accepted[byz].any()), rule


# -- Mimic --------------------------------------------------------------------------------


def test_mimic_principal_copies_the_row_with_largest_top_component():
    # honest rows spread mostly along x; the centred row with the largest |x| is row 3.
    honest = torch.tensor(
        [[1.0, 0.0, 0.2], [-1.0, 0.1, 0.0], [0.5, -0.1, 0.1], [-3.0, 0.0, -0.1], [2.0, 0.2, 0.0]]
    )
    byz = torch.zeros(2, 3)
    sent = attacks.get("mimic")(honest, byz, _ctx(7, 2))
    # reference: numpy SVD of the centred rows, projections on the first right singular vector
    h = honest.double().numpy()
    c = h - h.mean(0)
    v = np.linalg.svd(c)[2][0]
    want = int(np.argmax(np.abs(c @ v)))
    assert want == 3
    for row in sent:
        assert torch.equal(row, honest[want])


def test_mimic_farthest_copies_the_row_farthest_from_the_mean_plain_loop():
    gen = torch.Generator().manual_seed(4)
    honest = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    sent = attacks.get("mimic", target="farthest")(honest, torch.zeros(3, 5), _ctx(9, 3))
    rows = honest.tolist()
    mean = [sum(r[j] for r in rows) / len(rows) for j in range(5)]
    dists = [math.dist(r, mean) for r in rows]
    want = dists.index(max(dists))
    assert sent.shape == (3, 5)
    assert all(torch.equal(row, honest[want].float()) for row in sent)


def test_mimic_rejects_an_unknown_target():
    with pytest.raises(ValueError, match="attack.target.*'nope'"):
        attacks.get("mimic", target="nope")


# -- Fang et al. --------------------------------------------------------------------------


def test_fang_krum_lambda_bound_hand_computation():
    # 3 honest rows in d = 4, n = 7, f = 2: n - f - 2 = 3 neighbours, capped at the 2 others.
    honest = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 4.0]])
    # distances: |h0-h1| = 2, |h0-h2| = 4, |h1-h2| = sqrt(20); row sums: 6, 2+sqrt(20), 4+sqrt(20)
    # mean = (2/3, 0, 0, 4/3); farthest row from it: h2, sqrt(4/9 + 64/9) = sqrt(68) / 3
    want = 6.0 / ((7 - 4 - 1) * 2.0) + (math.sqrt(68.0) / 3.0) / 2.0
    assert krum_lambda_bound(honest, 7, 2) == pytest.approx(want, rel=1e-12)


def test_fang_krum_makes_krum_select_a_byzantine_row():
    n, f, d = 11, 3, 20
    gen = torch.Generator().manual_seed(5)
    honest = 1.0 + 0.5 * torch.randn(n - f, d, generator=gen)
    sent = attacks.get("fang_krum")(honest, torch.zeros(f, d), _ctx(n, f))
    mean = honest.mean(0)
    # the message is mean - lambda * sign(mean) with lambda = bound / 2^k for some k >= 0
    lam = float((mean - sent[0]).abs().mean())
    torch.testing.assert_close(sent[0], mean - lam * torch.sign(mean))
    k = math.log2(krum_lambda_bound(honest, n, f) / lam)
    assert k == pytest.approx(round(k), abs=1e-6) and round(k) >= 0 and lam > 0
    out = aggregators.get("krum")(torch.cat([honest, sent]), _ctx(n, f))
    assert int(out.accepted.nonzero()) >= n - f  # Krum steps with a Byzantine update
    assert float(out.update @ mean) < float(mean @ mean)  # pulled against the honest mean


def test_fang_trmean_plain_loop_reference_and_beyond_extremes():
    n, f, d = 9, 3, 8
    gen = torch.Generator().manual_seed(6)
    honest = torch.randn(n - f, d, generator=gen, dtype=torch.float64)
    honest[:, 0] += 5.0  # all positive: values in [min / b, min]
    honest[:, 1] -= 5.0  # all negative: values in [max, max / b]
    b = 1.5
    byz = torch.zeros(f, d, dtype=torch.float64)
    sent = attacks.get("fang_trmean", b=b)(honest, byz, _ctx(n, f, seed=9))
    u = torch.rand((f, d), generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    rows = honest.tolist()
    for j in range(d):
        col = [r[j] for r in rows]
        lo, hi, mean = min(col), max(col), sum(col) / len(col)
        if mean >= 0:
            a, z = (lo, lo / b) if lo > 0 else (lo, lo * b)
        else:
            a, z = (hi, hi * b) if hi > 0 else (hi, hi / b)
        for i in range(f):
            assert float(sent[i, j]) == pytest.approx(a + float(u[i, j]) * (z - a), abs=1e-12)
            assert float(sent[i, j]) <= lo if mean >= 0 else float(sent[i, j]) >= hi
    agg = aggregators.get("trimmed_mean")(torch.cat([honest, sent]), _ctx(n, f))
    clean = aggregators.get("trimmed_mean")(honest, _ctx(n - f, 0))
    mean = honest.mean(0)
    assert bool((torch.sign(agg.update - clean.update) != torch.sign(mean)).all())


def test_fang_settings_are_validated():
    with pytest.raises(ValueError, match="b must be finite and > 1"):
        attacks.get("fang_trmean", b=1.0)
    with pytest.raises(ValueError, match="threshold must be > 0"):
        attacks.get("fang_krum", threshold=0.0)


# -- optimised ALIE / IPM -----------------------------------------------------------------


def _gap(rule: str, honest: torch.Tensor, sent: torch.Tensor, n: int, f: int) -> float:
    out = aggregators.get(rule)(torch.cat([honest, sent]), _ctx(n, f))
    return float((out.update.double() - honest.double().mean(0)).norm())


def test_alie_opt_against_mean_takes_the_largest_shift_by_hand():
    # mean rule: the output is mu - (f / n) z sigma, farther from mu as z grows: z = z_max
    n, f, d = 7, 2, 4
    gen = torch.Generator().manual_seed(7)
    honest = torch.randn(n - f, d, generator=gen, dtype=torch.float64)
    byz = torch.zeros(f, d, dtype=torch.float64)
    sent = attacks.get("alie_opt", rule="mean", z_max=3.0)(honest, byz, _ctx(n, f))
    sigma = honest.std(0, correction=0)
    torch.testing.assert_close(sent[0], honest.mean(0) - 3.0 * sigma)
    fixed = attacks.get("alie")(honest, byz, _ctx(n, f))
    assert _gap("mean", honest, sent, n, f) > _gap("mean", honest, fixed, n, f)


def test_alie_opt_against_krum_beats_fixed_alie_and_matches_a_plain_search():
    n, f, d = 11, 3, 10
    gen = torch.Generator().manual_seed(8)
    honest = torch.randn(n - f, d, generator=gen, dtype=torch.float64)
    byz = torch.zeros(f, d, dtype=torch.float64)
    sent = attacks.get("alie_opt", rule="krum")(honest, byz, _ctx(n, f))
    mu, sigma = honest.mean(0), honest.std(0, correction=0)
    candidates = sorted({*(5.0 * i / 20 for i in range(21)), alie_z_max(n, f)})
    gaps = [_gap("krum", honest, (mu - z * sigma).expand(f, -1), n, f) for z in candidates]
    best = candidates[gaps.index(max(gaps))]
    torch.testing.assert_close(sent[0], mu - best * sigma)
    fixed = attacks.get("alie")(honest, byz, _ctx(n, f))
    assert _gap("krum", honest, sent, n, f) > _gap("krum", honest, fixed, n, f)


def test_ipm_opt_against_mean_takes_the_largest_scale_by_hand():
    # mean rule: output = ((n - f) - f eps) mean / n, gap = f (1 + eps) |mean| / n: eps = max
    n, f, d = 6, 2, 3
    honest = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0], [2.0, 1.0, -1.0], [2.0, 1.0, 0.0]])
    sent = attacks.get("ipm_opt", rule="mean")(honest, torch.zeros(f, d), _ctx(n, f))
    mean = torch.tensor([2.0, 1.0, 0.0])
    torch.testing.assert_close(sent, (-100.0 * mean).expand(f, -1))
    fixed = attacks.get("ipm")(honest, torch.zeros(f, d), _ctx(n, f))
    assert _gap("mean", honest, sent, n, f) == pytest.approx(f * 101 * math.sqrt(5) / n)
    assert _gap("mean", honest, fixed, n, f) == pytest.approx(f * 1.1 * math.sqrt(5) / n)


def test_opt_attacks_place_messages_at_the_byzantine_positions_for_the_rule():
    # oracle averages the rows ctx.byzantine marks honest: any factor gives the honest mean
    # only when the messages sit at the true Byzantine positions (ties: the smallest factor)
    n, f, d = 5, 2, 3
    gen = torch.Generator().manual_seed(9)
    honest = torch.randn(n - f, d, generator=gen, dtype=torch.float64)
    byz_mask = torch.tensor([True, False, False, True, False])
    ctx = _ctx(n, f, byzantine=byz_mask)
    sent = attacks.get("ipm_opt", rule="oracle")(honest, torch.zeros(f, d), ctx)
    torch.testing.assert_close(sent[0], -0.01 * honest.mean(0).float())


@pytest.mark.parametrize("rule", ["median", "trimmed_mean_guerraoui", "nnm+krum", "diversefl"])
def test_opt_attack_matches_a_plain_search_with_messages_between_the_honest_rows(rule):
    # the search lays the honest rows out once and rewrites the message rows per candidate;
    # the reference builds every candidate's n rows afresh and runs the rule on them
    n, f, d = 9, 3, 6
    gen = torch.Generator().manual_seed(11)
    honest = torch.randn(n - f, d, generator=gen)
    guiding = torch.randn(n, d, generator=gen)
    byz = torch.tensor([False, True, False, False, True, False, False, False, True])
    ctx = _full_ctx(n, f, guiding, byz)
    sent = attacks.get("alie_opt", rule=rule)(honest, torch.zeros(f, d), ctx)
    mu, sigma = honest.mean(0), honest.std(0, correction=0)
    candidates = sorted({*(5.0 * i / 20 for i in range(21)), alie_z_max(n, f)})
    gaps = []
    for z in candidates:
        rows = torch.empty(n, d)
        rows[~byz] = honest
        rows[byz] = (mu - z * sigma).expand(f, -1)
        out = build_rule(rule)(rows, _full_ctx(n, f, guiding, byz)).update.double()
        gaps.append(float((out - honest.double().mean(0)).norm()))
    best = candidates[gaps.index(max(gaps))]
    assert sent.shape == (f, d)
    torch.testing.assert_close(sent[0], mu - best * sigma)


def test_opt_attack_settings_are_validated():
    with pytest.raises(ValueError, match="unknown rule 'nope'"):
        attacks.get("alie_opt", rule="nope")
    with pytest.raises(ValueError, match="range must be > 0"):
        attacks.get("ipm_opt", epsilon_min=0.0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        attacks.get("alie_opt", steps=0)
    with pytest.raises(ValueError, match=r"low <= high, got \[2.0, 1.0\]"):
        attacks.get("alie_opt", z_min=2.0, z_max=1.0)


# -- end to end ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW)
def test_new_attack_runs_end_to_end_through_the_cli(name: str, tmp_path: Path):
    from conftest import tiny_config

    attack = {"name": name, "f": 1}
    if name in ("alie_opt", "ipm_opt"):
        attack["rule"] = "median"
    cfg = tiny_config(rounds=5, attack=attack, aggregator={"name": "median"})
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(tomli_w.dumps(cfg))
    out = tmp_path / "run"
    assert main(["run", str(cfg_path), "--out", str(out), "--quiet"]) == 0
    lines = (out / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    acc = [float(line.split(",")[header.index("test_accuracy")]) for line in lines[1:]]
    assert acc and all(math.isfinite(a) for a in acc)
