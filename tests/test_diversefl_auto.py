"""DiverseFL's self-calibrating threshold (``min_cosine = "auto"``): the half split of each
client's sample, the half-sample guides against a plain loop, the threshold against a hand
computation, its per-client moving average and state, the refusals, and the runs (simulator and
CLI) that use it."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import tomli_w
import torch
import torch.nn.functional as F
from conftest import tiny_config

from diversefl.aggregators.base import AggregatorError
from diversefl.aggregators.diversefl import DiverseFL
from diversefl.aggregators.diversefl_auto import (
    AUTO_CAP,
    AutoThreshold,
    ThresholdEMA,
    auto_threshold,
    predicted_honest_cosine,
    predicted_honest_ratio,
)
from diversefl.attacks import REGISTRY as ATTACKS
from diversefl.cli import main
from diversefl.config import make_config
from diversefl.engine.half_guides import half_sample_guides, sample_guides, split_halves
from diversefl.engine.params import FlatModel
from diversefl.engine.simulator import Simulation
from diversefl.round import RoundContext


def _ctx(r: int, guiding: torch.Tensor, halves: torch.Tensor | None, ids=None) -> RoundContext:
    n = guiding.shape[0]
    return RoundContext(
        round=r,
        n=n,
        f=0,
        generator=torch.Generator().manual_seed(0),
        client_ids=ids,
        guiding_fn=lambda: guiding,
        guiding_halves_fn=None if halves is None else (lambda: halves),
    )


def _hand_threshold(c: float, margin: float) -> float:
    """The documented formula, written out: margin * sqrt(2c / (1 + c)), c clipped at 0."""
    c = max(c, 0.0)
    return min(margin * math.sqrt(2 * c / (1 + c)), AUTO_CAP)


# -- the half split --------------------------------------------------------------------------


def test_split_halves_is_disjoint_covers_the_sample_and_keeps_real_rows_first():
    lengths = [0, 1, 2, 5, 6]
    n, S = len(lengths), 6
    ids = torch.arange(n * S).view(n, S) + 1  # every example a distinct nonzero id
    w = (torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]).float()
    x = ids[..., None].float().expand(n, S, 3).clone()  # examples carry their id
    xh, yh, wh = split_halves(x, ids * w.long(), w)
    assert xh.shape == (2 * n, 3, 3) and yh.shape == wh.shape == (2 * n, 3)
    for j, length in enumerate(lengths):
        real = set(ids[j, :length].tolist())
        a = set(yh[j][wh[j] > 0].tolist())
        b = set(yh[n + j][wh[n + j] > 0].tolist())
        assert a.isdisjoint(b) and a | b == real
        assert (len(a), len(b)) == ((length + 1) // 2, length // 2)
        assert set(xh[j, :, 0][wh[j] > 0].long().tolist()) == a  # examples follow their labels
        for row in (j, n + j):  # a prefix mask: real rows first
            k = int(wh[row].sum())
            assert bool((wh[row, :k] == 1).all()) and bool((wh[row, k:] == 0).all())


def test_split_halves_refuses_mismatched_axes():
    with pytest.raises(ValueError, match=r"must share their \[n, S\] axes"):
        split_halves(torch.zeros(2, 4, 3), torch.zeros(2, 5), torch.zeros(2, 4))


# -- the half-sample guides against a plain loop -------------------------------------------------


def _plain_grad(fm: FlatModel, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """The mean cross-entropy gradient of one batch, by autograd on a copy of theta."""
    t = theta.clone().requires_grad_(True)
    logits = torch.func.functional_call(fm.module, fm.unflatten(t), (x,))
    (g,) = torch.autograd.grad(F.cross_entropy(logits, y), t)
    return g


def _toy(n: int = 3, S: int = 7, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    fm = FlatModel(torch.nn.Linear(4, 3))
    theta = fm.flatten()
    x = torch.randn(n, S, 4, generator=gen)
    y = torch.randint(0, 3, (n, S), generator=gen)
    lengths = torch.tensor([S, S - 2, 3])[:n]
    w = (torch.arange(S)[None, :] < lengths[:, None]).float()
    return fm, theta, x, y, w, lengths


def test_half_sample_guides_match_a_plain_per_client_loop():
    fm, theta, x, y, w, lengths = _toy()
    got = half_sample_guides(fm, theta, x, y, w, torch.ones(3), None, None, None, "auto")
    assert got.shape == (2, 3, fm.dim)
    for j, length in enumerate(lengths.tolist()):
        for h in (0, 1):
            rows = list(range(h, length, 2))  # alternate positions of the sample order
            ref = _plain_grad(fm, theta, x[j, rows], y[j, rows])
            torch.testing.assert_close(got[h, j], ref, rtol=1e-5, atol=1e-6)


def test_half_sample_guides_take_the_guides_local_steps():
    """With local training each half takes the same local steps as the full guide: step s at
    the model after the previous steps, every step on the whole half (a plain two-step loop)."""
    fm, theta, x, y, w, lengths = _toy()
    steps, lr = torch.tensor([2, 1, 2]), 0.3
    got = half_sample_guides(fm, theta, x, y, w, torch.ones(3), steps, lr, None, "auto")
    for j, length in enumerate(lengths.tolist()):
        for h in (0, 1):
            rows = list(range(h, length, 2))
            model = theta.clone()
            for _ in range(int(steps[j])):
                model = model - lr * _plain_grad(fm, model, x[j, rows], y[j, rows])
            ref = (theta - model) / lr
            torch.testing.assert_close(got[h, j], ref, rtol=1e-4, atol=1e-5)
    full = sample_guides(fm, theta, x, y, w, torch.ones(3), None, None, None, "auto")
    ref = _plain_grad(fm, theta, x[0], y[0])
    torch.testing.assert_close(full[0], ref, rtol=1e-5, atol=1e-6)


def test_simulators_halves_make_up_its_guide():
    """The halves are disjoint and cover the sample: for a mean loss the full guide is the
    example-weighted mean of the two half guides (ceil(L/2) and floor(L/2) examples)."""
    cfg = tiny_config(aggregator={"name": "diversefl", "min_cosine": "auto"})
    cfg["clients"] = {**cfg["clients"], "sample": 7}
    sim = Simulation(make_config(cfg))
    halves, full = sim.guiding_halves(sim.theta, 1), sim.guiding(sim.theta, 1)
    length = sim.sample_w.sum(1)
    a, b = torch.ceil(length / 2), torch.floor(length / 2)
    mixed = (a[:, None] * halves[0] + b[:, None] * halves[1]) / length[:, None]
    torch.testing.assert_close(mixed, full, rtol=1e-4, atol=1e-6)


# -- the threshold, by hand ---------------------------------------------------------------------


def test_auto_threshold_against_a_hand_computation_on_tiny_guides():
    # halves [1, 0] and [1, 1]: c_half = 1 / sqrt(2); [2, 0] and [0, 3]: 0; [1, 0], [-1, 0]: -1;
    # [1, 0] and [1, 0]: 1 (no noise: the predicted honest cosine is 1, capped)
    halves = torch.tensor(
        [[[1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [1.0, 0.0]],
         [[1.0, 1.0], [0.0, 3.0], [-1.0, 0.0], [1.0, 0.0]]]
    )  # fmt: skip
    c = 1 / math.sqrt(2)
    assert predicted_honest_cosine(torch.tensor([c]))[0].item() == pytest.approx(
        math.sqrt(math.sqrt(2) / (1 + 1 / math.sqrt(2)))
    )
    rule = AutoThreshold(margin=0.65, decay=0.9, fallback=0.0)
    got = rule.thresholds(1, torch.arange(4), halves)
    expected = [_hand_threshold(c, 0.65), 0.0, 0.0, 0.65]
    assert got.tolist() == pytest.approx(expected, abs=1e-12)
    assert expected[0] == pytest.approx(0.591617, abs=1e-6)  # 0.65 * 0.910180
    cap = auto_threshold(torch.tensor([1.0], dtype=torch.float64), margin=1.0)
    assert cap.item() == AUTO_CAP


def test_the_moving_average_per_client_id_and_a_repeated_round():
    ema = ThresholdEMA(decay=0.9)
    ids = torch.tensor([3, 1])
    yes = torch.tensor([True, True])
    ema.begin_round(1)
    assert ema.update(ids, torch.tensor([0.5, 0.2]), yes).tolist() == pytest.approx([0.5, 0.2])
    ema.begin_round(2)
    out = ema.update(ids, torch.tensor([0.7, 0.4]), torch.tensor([True, False]))
    assert out.tolist() == pytest.approx([0.9 * 0.5 + 0.1 * 0.7, 0.2])  # client 1: not usable
    ema.begin_round(2)  # the same round again replaces it, it is not counted twice
    again = ema.update(ids, torch.tensor([0.7, 0.4]), torch.tensor([True, False]))
    assert again.tolist() == out.tolist()
    assert math.isnan(ema.current(torch.tensor([0])).item())  # never seen


def test_a_client_without_two_sample_rows_uses_the_fallback_and_is_named():
    halves = torch.tensor([[[1.0, 0.0], [1.0, 0.5]], [[0.0, 0.0], [1.0, 1.0]]])  # client 0: empty
    rule = AutoThreshold(margin=0.65, decay=0.9, fallback=0.3)
    with pytest.warns(UserWarning, match=r"cannot calibrate clients \[7\].*auto_fallback = 0.3"):
        got = rule.thresholds(1, torch.tensor([7, 2]), halves)
    assert got[0].item() == 0.3 and got[1].item() > 0.3


def test_the_whole_simulation_falls_back_when_every_sample_has_one_row():
    cfg = tiny_config(aggregator={"name": "diversefl", "min_cosine": "auto", "auto_fallback": 0.2})
    cfg["clients"] = {**cfg["clients"], "sample": 1}
    sim = Simulation(make_config(cfg))
    with pytest.warns(UserWarning, match="fewer than 2 sample rows"):
        rec = sim.step(1)
    assert rec.scores["threshold"].tolist() == pytest.approx([0.2] * 6)


# -- the rule ---------------------------------------------------------------------------------


def test_the_rule_accepts_by_each_clients_own_threshold():
    """Two clients with the same guide [1, 0] but different half-sample evidence: client 0's
    halves agree (c_half = 0.8: threshold 0.65 * sqrt(1.6 / 1.8) = 0.6128), client 1's do not
    (c_half = 0: the sign test). An update at cosine 0.5 passes for client 1 only."""
    guide = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    halves = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.8, 0.6], [0.0, 1.0]]])
    at_half = torch.tensor([0.5, math.sqrt(0.75)])  # cosine 0.5 with [1, 0], norm 1
    updates = torch.stack([at_half, at_half])
    rule = DiverseFL(min_cosine="auto", auto_margin=0.65)
    out = rule(updates, _ctx(1, guide, halves))
    assert out.accepted.tolist() == [False, True]
    expected = [_hand_threshold(0.8, 0.65), 0.0]
    assert out.scores["threshold"].tolist() == pytest.approx(expected, abs=1e-6)
    assert expected[0] == pytest.approx(0.612826, abs=1e-6)
    torch.testing.assert_close(out.update, updates[1])


def test_auto_state_round_trip_gives_the_same_next_round():
    gen = torch.Generator().manual_seed(4)
    rounds = [(torch.randn(5, 6, generator=gen), torch.randn(2, 5, 6, generator=gen))
              for _ in range(4)]  # fmt: skip
    updates = torch.randn(5, 6, generator=gen)
    straight = DiverseFL(min_cosine="auto", auto_decay=0.5, quarantine=0.2, quarantine_after=1)
    for r, (g, h) in enumerate(rounds, start=1):
        last = straight(updates, _ctx(r, g, h + g[None]))
    resumed = DiverseFL(min_cosine="auto", auto_decay=0.5, quarantine=0.2, quarantine_after=1)
    first = DiverseFL(min_cosine="auto", auto_decay=0.5, quarantine=0.2, quarantine_after=1)
    for r, (g, h) in enumerate(rounds[:3], start=1):
        first(updates, _ctx(r, g, h + g[None]))
    resumed.load_state_dict(first.state_dict())
    g, h = rounds[3]
    out = resumed(updates, _ctx(4, g, h + g[None]))
    assert torch.equal(out.scores["threshold"], last.scores["threshold"])
    assert torch.equal(out.accepted, last.accepted) and torch.equal(out.update, last.update)
    assert set(first.state_dict()) == {"tested", "failed", "round", "auto"}


def test_a_resumed_simulation_with_auto_and_the_attack_that_mirrors_it_is_identical():
    """The rule's averages and the attacker's mirror of them both travel with the state."""
    cfg = tiny_config(
        aggregator={"name": "diversefl", "min_cosine": "auto", "bound": "cone"},
        attack={"name": "adaptive", "f": 2, "byzantine": [1, 4], "cos_min": "auto",
                "against": "cone"},
    )  # fmt: skip
    straight = Simulation(make_config(cfg))
    for r in range(1, 5):
        rec = straight.step(r)
        assert bool(rec.accepted[rec.byzantine].all())  # the mirror is the server's threshold
    first = Simulation(make_config(cfg))
    for r in range(1, 3):
        first.step(r)
    state = first.state_dict()
    assert "auto" in state["aggregator"] and "auto" in state["attack"]
    resumed = Simulation(make_config(cfg))
    resumed.load_state_dict(state)
    for r in range(3, 5):
        rec_resumed = resumed.step(r)
    assert torch.equal(resumed.theta, straight.theta)
    assert torch.equal(rec_resumed.scores["threshold"], rec.scores["threshold"])


def test_a_state_without_thresholds_is_refused_by_an_auto_rule():
    saved = DiverseFL(quarantine=0.3).state_dict()
    with pytest.raises(AggregatorError, match="holds no thresholds"):
        DiverseFL(min_cosine="auto").load_state_dict(saved)


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"min_cosine": "automatic"}, "min_cosine must be a number in"),
        ({"min_cosine": "auto", "per_layer": True}, "per_layer needs a fixed min_cosine"),
        ({"min_cosine": "auto", "auto_margin": 0.0}, r"auto_margin must be in \(0, 1\]"),
        ({"min_cosine": "auto", "auto_margin": 1.5}, r"auto_margin must be in \(0, 1\]"),
        ({"min_cosine": "auto", "auto_decay": 1.0}, r"auto_decay must be in \[0, 1\)"),
        ({"min_cosine": "auto", "auto_fallback": 0.99}, r"auto_fallback must be in \[0, 0.95\]"),
        ({"min_cosine": 0.5, "auto_batch_noise": True}, "auto_batch_noise = true refines"),
        ({"min_cosine": "auto", "auto_ratio": True}, "auto_ratio = true predicts the honest"),
        (
            {"min_cosine": "auto", "auto_batch_noise": True, "auto_clip": True},
            "auto_clip = true clips to the predicted honest norm; it needs",
        ),
        (
            {"min_cosine": "auto", "clip_to_guide": True, "auto_clip": True},
            "auto_clip = true clips to the predicted honest norm; it needs",
        ),
    ],
)
def test_bad_auto_settings_are_one_clear_error(settings, message):
    with pytest.raises(AggregatorError, match=message):
        DiverseFL(**settings)


def test_auto_without_half_sample_guides_names_what_is_missing():
    guide = torch.tensor([[1.0, 0.0]])
    with pytest.raises(AggregatorError, match=r"min_cosine = 'auto' needs .*ctx.guiding_halves"):
        DiverseFL(min_cosine="auto")(guide, _ctx(1, guide, None))
    with pytest.raises(AggregatorError, match=r"do not match updates \(1, 2\) \(expected"):
        DiverseFL(min_cosine="auto")(guide, _ctx(1, guide, torch.zeros(2, 1, 3)))


def test_a_config_with_a_wrong_min_cosine_string_fails_before_a_round():
    cfg = tiny_config(aggregator={"name": "diversefl", "min_cosine": "autom"})
    with pytest.raises(ValueError, match="aggregator.min_cosine"):
        Simulation(make_config(cfg))


def test_the_attack_against_auto_needs_the_half_sample_guides():
    guide = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ctx = RoundContext(
        round=1, n=2, f=1, generator=torch.Generator(), guiding_fn=lambda: guide,
        byzantine=torch.tensor([True, False]),
    )  # fmt: skip
    with pytest.raises(ValueError, match="needs the half-sample guiding gradients"):
        ATTACKS["adaptive"](against="auto")(guide[1:], guide[:1], ctx)


# -- end to end -----------------------------------------------------------------------------


@pytest.mark.parametrize("bound", ["none", "cone", "orthogonal", "agreement"])
def test_diversefl_run_with_auto_and_each_bound(tmp_path: Path, bound: str):
    """`diversefl run` on the tiny config: the thresholds are logged per client and every
    sign-flipping update is rejected, whatever bound shapes the accepted ones."""
    cfg = tiny_config(
        rounds=6,
        aggregator={"name": "diversefl", "min_cosine": "auto", "bound": bound},
        attack={"name": "sign_flip", "f": 2},
    )
    path = tmp_path / "auto.toml"
    path.write_text(tomli_w.dumps(cfg))
    out = tmp_path / bound
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    with (out / "decisions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 * 6
    assert all(0.0 <= float(r["threshold"]) <= AUTO_CAP for r in rows)
    assert all(r["accepted"] == "0" for r in rows if r["byzantine"] == "1")


AUTO_SETTINGS = {
    "auto": {},
    "auto_batch_noise": {"auto_batch_noise": True},
    "cone_auto": {"auto_batch_noise": True, "bound": "cone", "cone_cos": "auto"},
    "cone_mad": {"auto_batch_noise": True, "bound": "cone", "cone_cos": "auto", "auto_mad": 2.0},
    "cone_mad_ratio": {
        "auto_batch_noise": True,
        "bound": "cone",
        "cone_cos": "auto",
        "auto_mad": 2.0,
        "auto_ratio": True,
    },  # fmt: skip
    "cone_mad_ratio_clip": {
        "auto_batch_noise": True,
        "bound": "cone",
        "cone_cos": "auto",
        "auto_mad": 2.0,
        "auto_ratio": True,
        "auto_clip": True,
    },  # fmt: skip
}


@pytest.mark.parametrize("settings", list(AUTO_SETTINGS.values()), ids=list(AUTO_SETTINGS))
def test_the_flower_server_calibrates_as_the_simulator_does(tmp_path: Path, settings: dict):
    """Over Flower the server computes the half-sample guides on the uploaded samples (the
    nodes upload them in their seeded order), and the sample-over-batch ratios from the
    uploads and the batch sizes the nodes report: the per-client thresholds and decisions of a
    loopback federation are the simulator's (with the cone of the predicted honest cosine too,
    whose projected updates steer every later round's model)."""
    pytest.importorskip("flwr")
    from test_flower import _loopback_grid

    import diversefl
    from diversefl.flower.strategy import DiverseFLStrategy

    raw = tiny_config(
        model={"name": "mlp"},
        aggregator={"name": "diversefl", "min_cosine": "auto", **settings},
        attack={"name": "sign_flip", "f": 2},
        rounds=4,
        eval={"every": 2},
    )
    cfg = make_config(raw)
    grid = _loopback_grid([{"partition-id": j, "num-partitions": 6} for j in range(6)])
    DiverseFLStrategy(cfg, out=tmp_path / "flower").start(grid)
    diversefl.run(cfg, out=tmp_path / "ref")
    rows = []
    for where in ("flower", "ref"):
        with (tmp_path / where / "decisions.csv").open() as fh:
            rows.append(list(csv.DictReader(fh)))
    assert len(rows[0]) == len(rows[1]) == 4 * 6
    for x, y in zip(*rows, strict=True):
        assert (x["round"], x["client"], x["accepted"]) == (y["round"], y["client"], y["accepted"])
        assert float(x["threshold"]) == pytest.approx(float(y["threshold"]), abs=1e-4)


# -- the batch-noise term (auto_batch_noise) -------------------------------------------------


def _hand_batch(c: float, q: float, margin: float) -> float:
    """2c / sqrt((1 + c)(2c + q (1 - c))), written out with rho = 2c / (1 - c):
    rho / sqrt((rho + 1)(rho + q)), times the margin and capped."""
    if c <= 0:
        return 0.0
    rho = 2 * c / (1 - c)
    return min(margin * rho / math.sqrt((rho + 1) * (rho + q)), AUTO_CAP)


def test_batch_noise_term_against_a_hand_computation():
    c = torch.tensor([0.8, 1 / 3, 0.0, -0.5], dtype=torch.float64)
    q = torch.tensor([0.3, 0.3, 0.3, 0.3], dtype=torch.float64)
    got = predicted_honest_cosine(c, q)
    # c = 1/3: rho = 1, so 1 / sqrt(2 * 1.3); c = 0.8: rho = 8, 8 / sqrt(9 * 8.3)
    assert got[1].item() == pytest.approx(1 / math.sqrt(2.6), abs=1e-12)
    assert got[0].item() == pytest.approx(8 / math.sqrt(9 * 8.3), abs=1e-12)
    assert got[2:].tolist() == [0.0, 0.0]
    # q = 0 is the batch-free prediction; a larger q lowers it; c = 1 (no noise) stays 1
    zero = predicted_honest_cosine(c[:2], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(zero, predicted_honest_cosine(c[:2]))
    assert bool((got[:2] < zero).all())
    one = predicted_honest_cosine(torch.tensor([1.0]), torch.tensor([5.0]))
    assert one.item() == pytest.approx(1.0)
    rule = AutoThreshold(margin=0.75, decay=0.9, fallback=0.0)
    halves = torch.tensor([[[1.0, 0.0]], [[0.8, 0.6]]])  # c_half = 0.8
    t = rule.thresholds(1, torch.arange(1), halves, torch.tensor([0.3]))
    assert t.item() == pytest.approx(_hand_batch(0.8, 0.3, 0.75), abs=1e-7)  # float32 halves


def _sampled_noise_model(seed: int, d: int = 4000, s: int = 40, m: int = 120, trials: int = 30):
    """The noise model drawn: a true gradient g, per-example noise, ``trials`` times a sample of
    ``s`` rows (its two halves and its mean, the full guide) and a batch of ``m`` rows. Returns
    the average cosine of the halves, of batch and full guide, and the average ratio of their
    norms ``|batch| / |guide|``."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(d, generator=gen, dtype=torch.float64) * 0.05
    c_halves, cos_batch, ratios = [], [], []
    for _ in range(trials):
        ex_s = g + torch.randn(s, d, generator=gen, dtype=torch.float64)
        ex_m = g + torch.randn(m, d, generator=gen, dtype=torch.float64)
        a, b = ex_s[::2].mean(0), ex_s[1::2].mean(0)
        full, z = ex_s.mean(0), ex_m.mean(0)
        c_halves.append(float(F.cosine_similarity(a, b, dim=0)))
        cos_batch.append(float(F.cosine_similarity(full, z, dim=0)))
        ratios.append(float(z.norm() / full.norm()))
    return sum(c_halves) / trials, sum(cos_batch) / trials, sum(ratios) / trials


def test_batch_noise_prediction_matches_sampled_gradients():
    """An independent check of the noise model: draw a true gradient g and per-example noise,
    form two half-sample guides, the full guide and a batch mean, and compare the average
    cosine of batch and full guide with the prediction from the halves' cosine."""
    c_half, observed, _ = _sampled_noise_model(seed=0)
    c = torch.tensor([c_half], dtype=torch.float64)
    with_term = predicted_honest_cosine(c, torch.tensor([40 / 120], dtype=torch.float64)).item()
    without = predicted_honest_cosine(c).item()
    assert with_term == pytest.approx(observed, abs=0.03)
    assert without > observed + 0.05  # the batch-free prediction overshoots here


def test_the_rule_and_the_simulator_pass_each_clients_sample_over_batch(tmp_path: Path):
    guide = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    halves = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.8, 0.6], [0.8, 0.6]]])
    at = torch.tensor([0.69, math.sqrt(1 - 0.69**2)])  # cosine 0.69 with the guide
    ctx = _ctx(1, guide, halves)
    ctx = RoundContext(**{**ctx.__dict__, "sample_over_batch": torch.tensor([0.0, 1.0])})
    out = DiverseFL(min_cosine="auto", auto_batch_noise=True)(torch.stack([at, at]), ctx)
    expected = [_hand_batch(0.8, 0.0, 0.75), _hand_batch(0.8, 1.0, 0.75)]
    assert out.scores["threshold"].tolist() == pytest.approx(expected, abs=1e-6)
    assert out.accepted.tolist() == [False, True]  # 0.69 < 0.707 (q = 0) but > 0.667 (q = 1)
    with pytest.raises(AggregatorError, match="needs each client's sample size over its batch"):
        DiverseFL(min_cosine="auto", auto_batch_noise=True)(guide, _ctx(1, guide, halves))
    cfg = make_config(tiny_config(aggregator={"name": "diversefl", "min_cosine": "auto",
                                              "auto_batch_noise": True}))  # fmt: skip
    sim = Simulation(cfg)
    q = sim.context(1, sim.byzantine_mask(1)).sample_over_batch
    assert q is not None
    want = sim.sample_k.double() / sim.batch_k.double()
    torch.testing.assert_close(q, want)
    sim.step(1)  # a whole round with the term on


def test_the_attack_mirrors_the_batch_noise_threshold():
    gen = torch.Generator().manual_seed(3)
    n, d = 5, 16
    guide = torch.randn(n, d, generator=gen)
    halves = torch.stack([guide + torch.randn(n, d, generator=gen) for _ in range(2)])
    byz = torch.tensor([False, True, False, True, False])
    q = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=torch.float64)
    ctx = RoundContext(round=1, n=n, f=2, generator=torch.Generator().manual_seed(0),
                       byzantine=byz, guiding_fn=lambda: guide,
                       guiding_halves_fn=lambda: halves, sample_over_batch=q)  # fmt: skip
    server = DiverseFL(min_cosine="auto", auto_batch_noise=True)._threshold(guide, ctx)
    attack = ATTACKS["adaptive"](cos_min="auto", against="auto", auto_batch_noise=True)
    mirrored = attack._server_threshold(ctx, guide)
    torch.testing.assert_close(mirrored, server[byz].to(mirrored.dtype))
    plain = ATTACKS["adaptive"](cos_min="auto", against="auto")._server_threshold(ctx, guide)
    assert bool((plain > mirrored).all())  # without the term it would aim too high


# -- the predicted honest norm ratio (auto_ratio) ----------------------------------------------


@pytest.mark.parametrize("q", [0.1, 0.3, 1.0, 3.0])
def test_predicted_ratio_inverts_the_noise_model(q: float):
    """Written in the signal-to-noise ratio rho, an honest update's cosine with its guide is
    rho / sqrt((rho + 1)(rho + q)) and its norm ratio sqrt((rho + q) / (rho + 1)): the ratio
    predicted from the cosine alone must be the latter, from no noise (1) to noise only
    (sqrt(q))."""
    rho = torch.tensor([0.0, 0.1, 1.0, 5.0, 50.0, 1e6], dtype=torch.float64)
    p = rho / torch.sqrt((rho + 1) * (rho + q))
    want = torch.sqrt((rho + q) / (rho + 1))
    torch.testing.assert_close(predicted_honest_ratio(p, torch.full_like(p, q)), want)
    assert predicted_honest_ratio(torch.tensor([0.0]), torch.tensor([q])).item() == (
        pytest.approx(math.sqrt(q))
    )
    assert predicted_honest_ratio(torch.tensor([1.0]), torch.tensor([q])).item() == (
        pytest.approx(1.0)
    )


def test_ratio_prediction_matches_sampled_gradients():
    """As for the cosine: sample per-example gradients around a true one, and compare the
    average |batch mean| / |sample mean| with the ratio predicted from the halves' cosine."""
    c_half, _, observed = _sampled_noise_model(seed=1)
    q = torch.tensor([40 / 120], dtype=torch.float64)
    p = predicted_honest_cosine(torch.tensor([c_half], dtype=torch.float64), q)
    predicted = predicted_honest_ratio(p, q).item()
    assert predicted == pytest.approx(observed, abs=0.03)
    assert observed < 0.5 + 0.2 and predicted < 1.0 - 0.2  # well below the noise-free 1


def test_the_rule_with_auto_ratio_by_hand():
    """Three clients with guide [1, 0] and the update [0.4, 0] (cosine 1, ratio 0.4), q = 0.3.
    Client 0's halves agree (c_half = 1: predicted cosine 1, ratio 1, lower edge 0.5): rejected.
    Client 1's halves are orthogonal (c_half = 0: noise only, ratio sqrt(0.3) = 0.5477, lower
    edge 0.2739): accepted. Client 2's halves are zero (never calibrated): the paper's 0.5,
    rejected. Without auto_ratio all three fail the band."""
    guide = torch.tensor([[1.0, 0.0]] * 3)
    halves = torch.tensor(
        [[[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]]
    )
    updates = torch.tensor([[0.4, 0.0]] * 3)
    ctx = _ctx(1, guide, halves)
    ctx = RoundContext(**{**ctx.__dict__, "sample_over_batch": torch.full((3,), 0.3)})
    with pytest.warns(UserWarning, match=r"cannot calibrate clients \[2\]"):
        out = DiverseFL(min_cosine="auto", auto_batch_noise=True, auto_ratio=True)(updates, ctx)
    assert out.scores["ratio_lo"].tolist() == pytest.approx([0.5, 0.5 * math.sqrt(0.3), 0.5])
    assert out.accepted.tolist() == [False, True, False]
    torch.testing.assert_close(out.update, updates[1])
    with pytest.warns(UserWarning):
        plain = DiverseFL(min_cosine="auto", auto_batch_noise=True)(updates, ctx)
    assert plain.accepted.tolist() == [False, False, False]
    assert "ratio_lo" not in plain.scores


@pytest.mark.parametrize(
    "settings", [{"clip_to_guide": True}, {"bound": "cone", "cone_cos": "auto"}], ids=str
)
def test_auto_clip_clips_to_the_predicted_honest_norm_by_hand(settings: dict):
    """Two clients with guide [1, 0] and the update [1.5, 0], q = 0.3. Client 0's halves agree
    (predicted ratio 1: clipped to [1, 0]); client 1's are orthogonal (noise only: ratio
    sqrt(0.3), clipped to [0.5477, 0]). Both pass (cosine 1), so the mean is [0.7739, 0];
    clipped to the guides' own norm it would be [1, 0]."""
    guide = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    halves = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])
    updates = torch.tensor([[1.5, 0.0], [1.5, 0.0]])
    ctx = _ctx(1, guide, halves)
    ctx = RoundContext(**{**ctx.__dict__, "sample_over_batch": torch.full((2,), 0.3)})
    common = {"min_cosine": "auto", "auto_batch_noise": True, **settings}
    out = DiverseFL(**common, auto_clip=True)(updates, ctx)
    r = math.sqrt(0.3)
    assert out.accepted.tolist() == [True, True]
    assert out.scores["clip_ratio"].tolist() == pytest.approx([1.0, r])
    torch.testing.assert_close(out.update, torch.tensor([(1.0 + r) / 2, 0.0]))
    plain = DiverseFL(**common)(updates, ctx)
    torch.testing.assert_close(plain.update, torch.tensor([1.0, 0.0]))
