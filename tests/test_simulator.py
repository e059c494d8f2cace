"""The round loop: batches, shared samples, the server step, seeds, schedules."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_config

import diversefl
from diversefl.config import ConfigError, make_config
from diversefl.engine.gradients import loop_grads
from diversefl.engine.schedules import make_schedule
from diversefl.engine.seeding import generator
from diversefl.engine.simulator import Simulation, draw_without_replacement


def test_batches_come_from_own_shard_without_replacement():
    sim = Simulation(make_config(tiny_config(clients={"n": 7, "batch": 0.3})))
    idx, w = sim.draw_batches(1)
    for j in range(sim.n):
        shard = set(sim.shards[j, : sim.shard_len[j]].tolist())
        k = int(w[j].sum())
        assert k == max(1, round(0.3 * int(sim.shard_len[j])))
        chosen = idx[j, :k].tolist()
        assert set(chosen) <= shard
        assert len(set(chosen)) == k
    idx2, _ = sim.draw_batches(2)
    assert not torch.equal(idx, idx2)


def test_draw_rows_are_independent_of_other_rows():
    """Row j's draw depends on row j alone: another client's shard size or batch size leaves
    rows 0 and 1 unchanged (so a client's batches do not move when another's data changes)."""
    lengths = torch.tensor([5, 9, 3])
    k = torch.tensor([2, 4, 3])
    pos, w = draw_without_replacement(lengths, k, torch.Generator().manual_seed(3), 9)
    assert w.sum(1).tolist() == [2, 4, 3]
    for j in range(3):
        assert (pos[j, : k[j]] < lengths[j]).all()
        assert len(set(pos[j, : k[j]].tolist())) == k[j]
    other, _ = draw_without_replacement(
        torch.tensor([5, 9, 7]), torch.tensor([2, 4, 6]), torch.Generator().manual_seed(3), 9
    )
    for j in (0, 1):
        assert pos[j, : k[j]].tolist() == other[j, : k[j]].tolist()
    assert other[2, :6].tolist() != pos[2, :3].tolist()


def test_shared_sample_size_and_origin():
    sim = Simulation(make_config(tiny_config(clients={"n": 5, "sample": 0.1})))
    for j in range(sim.n):
        s = int(sim.sample_w[j].sum())
        assert s == max(1, round(0.1 * int(sim.shard_len[j])))
        shard = set(sim.shards[j, : sim.shard_len[j]].tolist())
        assert set(sim.sample_idx[j, :s].tolist()) <= shard


def test_server_step_matches_hand_computation():
    cfg = make_config(
        tiny_config(
            model={"name": "mlp"},
            optim={"lr": 0.3, "schedule": "constant", "weight_decay": 0.01},
        )
    )
    sim = Simulation(cfg)
    theta0 = sim.theta.clone()
    idx, w = sim.draw_batches(1)
    grads = loop_grads(sim.fm, theta0, sim.x_train[idx], sim.y_train[idx], w)
    expected = theta0 - 0.3 * (grads.mean(0) + 0.01 * theta0)
    sim.step(1)
    torch.testing.assert_close(sim.theta, expected, atol=1e-5, rtol=1e-4)


def test_oracle_averages_only_honest_clients():
    cfg = make_config(
        tiny_config(
            attack={"name": "sign_flip", "f": 2, "byzantine": [1, 4]},
            aggregator={"name": "oracle"},
            optim={"lr": 0.2, "schedule": "constant", "weight_decay": 0.0},
        )
    )
    sim = Simulation(cfg)
    theta0 = sim.theta.clone()
    idx, w = sim.draw_batches(1)
    grads = loop_grads(sim.fm, theta0, sim.x_train[idx], sim.y_train[idx], w)
    honest = [0, 2, 3, 5]
    rec = sim.step(1)
    torch.testing.assert_close(
        sim.theta, theta0 - 0.2 * grads[honest].mean(0), atol=1e-5, rtol=1e-4
    )
    assert rec.byzantine.tolist() == [False, True, False, False, True, False]
    assert rec.accepted.tolist() == [True, False, True, True, False, True]


@pytest.mark.slow
def test_same_seed_same_numbers_and_seed_matters():
    cfg = tiny_config(
        attack={"name": "gaussian", "f": 1, "sigma": 1.0}, aggregator={"name": "diversefl"}
    )
    a = diversefl.run(cfg, out=False)
    b = diversefl.run(cfg, out=False)
    c = diversefl.run({**cfg, "seed": 1}, out=False)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(a.metrics) == strip(b.metrics)
    assert torch.equal(a.theta, b.theta)
    assert not torch.equal(a.theta, c.theta)


def test_seeded_byzantine_ids_recorded_and_per_round_varies():
    r = diversefl.run(tiny_config(rounds=5, attack={"name": "sign_flip", "f": 2}), out=False)
    ids = r.summary["byzantine_ids"]
    assert len(ids) == 2 and all(0 <= i < 6 for i in ids)
    sim = Simulation(
        make_config(tiny_config(attack={"name": "sign_flip", "f": 2, "byzantine": "per_round"}))
    )
    masks = {tuple(sim.byzantine_mask(r).tolist()) for r in range(1, 20)}
    assert len(masks) > 1 and all(sum(m) == 2 for m in masks)


def test_no_attack_means_no_byzantine_even_with_f():
    r = diversefl.run(tiny_config(rounds=5, attack={"name": "none", "f": 3}), out=False)
    assert r.summary["f"] == 0 and r.summary["byzantine_ids"] == []


def test_without_an_attack_the_defense_still_assumes_attack_f():
    """Nobody is Byzantine, but the round context tells the defense f = attack.f, as a
    server that cannot know nobody attacks would be configured: Xie et al.'s trimmed mean
    keeps the n - f updates nearest the coordinate median instead of averaging them all."""
    cfg = make_config(
        tiny_config(
            attack={"name": "none", "f": 2},
            aggregator={"name": "trimmed_mean_xie"},
            optim={"lr": 0.2, "schedule": "constant", "weight_decay": 0.0},
        )
    )
    sim = Simulation(cfg)
    ctx = sim.context(1, sim.byzantine_mask(1))
    assert ctx.f == 2 and not bool(ctx.byzantine.any())
    theta0 = sim.theta.clone()
    idx, w = sim.draw_batches(1)
    grads = loop_grads(sim.fm, theta0, sim.x_train[idx], sim.y_train[idx], w)
    # plain reference, coordinate by coordinate: the mean of the n - f = 4 values nearest
    # the median (mean of the two middle values; ties toward the smaller value)
    cols = []
    for col in grads.double().T.tolist():
        mid = sorted(col)
        med = (mid[2] + mid[3]) / 2
        cols.append(sum(sorted(col, key=lambda v: (abs(v - med), v))[:4]) / 4)
    expected_agg = torch.tensor(cols, dtype=grads.dtype)
    sim.step(1)
    torch.testing.assert_close(sim.theta, theta0 - 0.2 * expected_agg, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(sim.theta, theta0 - 0.2 * grads.mean(0), atol=1e-5)
    # f = 0 says "nobody attacks" explicitly: then it is the plain mean
    sim0 = Simulation(make_config({**tiny_config(attack={"name": "none", "f": 0},
                                                 aggregator={"name": "trimmed_mean_xie"},
                                                 optim={"lr": 0.2, "schedule": "constant",
                                                        "weight_decay": 0.0})}))  # fmt: skip
    sim0.step(1)
    torch.testing.assert_close(sim0.theta, theta0 - 0.2 * grads.mean(0), atol=1e-5, rtol=1e-4)


def test_assumed_f_that_the_defense_cannot_take_is_a_clear_error_without_attack():
    with pytest.raises(
        ConfigError, match=r"Without an attack the defense still assumes attack\.f = 5"
    ):
        make_config(tiny_config(attack={"name": "none"}, aggregator={"name": "bulyan"}))
    make_config(tiny_config(attack={"name": "none", "f": 0}, aggregator={"name": "bulyan"}))


def test_aggregator_assumed_f_overrides_what_the_defense_is_told_not_the_attack():
    """``aggregator.assumed_f`` sets RoundContext.f for the defense (a misjudged f); the
    attack still sees the real count (ALIE's z_max depends on it)."""
    from diversefl.attacks.alie import alie_z_max

    base = tiny_config(attack={"name": "alie", "f": 2}, aggregator={"name": "trimmed_mean_xie"})
    sim = Simulation(make_config(base))
    assert sim.context(1, sim.byzantine_mask(1)).f == 2  # default: the real count
    told = tiny_config(
        attack={"name": "alie", "f": 2},
        aggregator={"name": "trimmed_mean_xie", "assumed_f": 1},
    )
    sim1 = Simulation(make_config(told))
    assert sim1.context(1, sim1.byzantine_mask(1)).f == 1
    seen: list[int] = []
    real_call = type(sim1.attack).__call__

    def spy(self, honest, byzantine, ctx):
        seen.append(ctx.f)
        return real_call(self, honest, byzantine, ctx)

    type(sim1.attack).__call__ = spy
    try:
        sim1.step(1)
    finally:
        type(sim1.attack).__call__ = real_call
    assert seen == [2] and alie_z_max(6, 2) != alie_z_max(6, 1)
    # without an attack it replaces attack.f; an f the rule cannot take names the key
    none = tiny_config(attack={"name": "none", "f": 5}, aggregator={"name": "krum", "assumed_f": 1})
    sim2 = Simulation(make_config(none))
    assert sim2.context(1, sim2.byzantine_mask(1)).f == 1
    with pytest.raises(ConfigError, match=r"aggregator\.assumed_f = 2: bulyan: needs n >= 4f \+ 3"):
        make_config(tiny_config(aggregator={"name": "bulyan", "assumed_f": 2}))


def test_label_flip_poisons_only_byzantine_batches():
    cfg = make_config(tiny_config(attack={"name": "label_flip", "f": 1, "byzantine": [2]}))
    sim = Simulation(cfg)
    byz = sim.byzantine_mask(1)
    ctx = sim.context(1, byz)
    seen = {}
    original = sim.attack.poison

    def spy(x, y, c):
        out = original(x, y, c)
        seen["in"], seen["out"] = y.clone(), out[1].clone()
        return out

    sim.attack.poison = spy
    sim.client_updates(1, byz, ctx)
    assert seen["in"].shape[0] == 1
    assert torch.equal(seen["out"], 9 - seen["in"])


@pytest.mark.parametrize(
    "kind,kwargs,expected",
    [
        ("inv_sqrt", {"lr": 0.001}, {1: 0.001, 4: 0.0005, 100: 0.0001}),
        (
            "step",
            {"lr": 0.06, "milestones": [500, 950], "gamma": 0.5},
            {1: 0.06, 500: 0.06, 501: 0.03, 950: 0.03, 951: 0.015},
        ),
        (
            "warmup_step",
            {
                "lr": 0.1,
                "warmup_rounds": 1000,
                "warmup_start_lr": 0.05,
                "milestones": [2000],
                "gamma": 0.4,
            },
            {1: 0.05, 1000: 0.1, 1500: 0.1, 2001: 0.04},
        ),
        ("constant", {"lr": 0.3}, {1: 0.3, 999: 0.3}),
    ],
)
def test_schedules(kind, kwargs, expected):
    sched = make_schedule(kind, **kwargs)
    for r, lr in expected.items():
        assert math.isclose(sched(r), lr, rel_tol=1e-9), (r, sched(r), lr)


def test_byzantine_seed_fixes_the_placement_across_run_seeds():
    def ids(seed: int, **atk) -> list[int]:
        cfg = tiny_config(seed=seed, attack={"name": "sign_flip", "f": 2, **atk})
        return Simulation(make_config(cfg)).byzantine_ids()

    assert ids(0, byzantine_seed=7) == ids(1, byzantine_seed=7) == ids(2, byzantine_seed=7)
    # the default draws from the run seed, exactly as before the option existed
    assert ids(3) == ids(0, byzantine_seed=3)
    draws = {tuple(ids(0, byzantine_seed=s)) for s in range(8)}
    assert len(draws) > 1


def test_listed_ids_plus_seeded_extra():
    cfg = tiny_config(
        attack={"name": "sign_flip", "byzantine": [1, 2], "also_seeded": 2, "byzantine_seed": 5}
    )
    got = Simulation(make_config(cfg)).byzantine_ids()
    assert len(got) == 4 and {1, 2} <= set(got)
    # the two extra ids are the first two of the seeded permutation that are not listed
    perm = torch.randperm(6, generator=generator(5, "byzantine")).tolist()
    assert set(got) - {1, 2} == set([i for i in perm if i not in (1, 2)][:2])
    with pytest.raises(ConfigError, match="also_seeded"):
        make_config(tiny_config(attack={"name": "sign_flip", "f": 2, "also_seeded": 1}))


def test_engine_grads_dense_and_vmap_agree_and_dense_refuses_other_models():
    """engine.grads picks the gradient path: the hand-written dense backward and torch.func's
    vmap give the same per-round gradients (to float rounding) on the same draws."""
    for model in ("softmax", "mlp"):
        sims = {
            g: Simulation(
                make_config(
                    tiny_config(model={"name": model}, engine={"grads": g}, attack={"name": "none"})
                )
            )
            for g in ("dense", "vmap")
        }
        byz = sims["dense"].byzantine_mask(1)
        ctx = sims["dense"].context(1, byz)
        a = sims["dense"].client_gradients(1, byz, ctx)
        b = sims["vmap"].client_gradients(1, byz, ctx)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(
            sims["dense"].guiding(sims["dense"].theta),
            sims["vmap"].guiding(sims["vmap"].theta),
            atol=1e-6,
            rtol=1e-5,
        )
    with pytest.raises(ConfigError, match="grads"):
        make_config(tiny_config(engine={"grads": "fast"}))


def test_whole_shard_batches_match_a_plain_loop_over_each_shard():
    # batch = 1.0: every client's batch is its whole shard, gathered once and reused.
    cfg = make_config(
        tiny_config(
            clients={"n": 7, "batch": 1.0},
            optim={"lr": 0.3, "schedule": "constant", "weight_decay": 0.01},
        )
    )
    sim = Simulation(cfg)
    assert sim._whole_shards is not None
    assert len(set(sim.shard_len.tolist())) > 1  # unequal shards: padding is masked out
    theta0 = sim.theta.clone()
    expected = []
    for j in range(sim.n):  # one client at a time, straight from the training set
        rows = sim.shards[j, : sim.shard_len[j]]
        x, y = sim.x_train[rows][None], sim.y_train[rows][None]
        expected.append(loop_grads(sim.fm, theta0, x, y, torch.ones(1, len(rows)))[0])
    mean = torch.stack(expected).mean(0)
    sim.step(1)
    torch.testing.assert_close(
        sim.theta, theta0 - 0.3 * (mean + 0.01 * theta0), atol=1e-5, rtol=1e-4
    )


def test_whole_shard_cache_equals_the_drawn_path_and_survives_data_attacks():
    cfg = make_config(
        tiny_config(
            clients={"n": 6, "batch": 1.0},
            attack={"name": "label_flip", "f": 2, "byzantine": [0, 3]},
        )
    )
    sim = Simulation(cfg)
    x0, y0 = (t.clone() for t in sim._whole_shards[:2])
    byz = sim.byzantine_mask(1)
    ctx = sim.context(1, byz)
    cached = sim.client_gradients(1, byz, ctx)
    cached_again = sim.client_gradients(2, byz, sim.context(2, byz))
    # The poisoned copies never reach the cache.
    assert torch.equal(sim._whole_shards[0], x0) and torch.equal(sim._whole_shards[1], y0)
    torch.testing.assert_close(cached, cached_again)
    sim._whole_shards = None  # the general path: a random order of each whole shard
    drawn = sim.client_gradients(1, byz, ctx)
    torch.testing.assert_close(cached, drawn, atol=1e-6, rtol=1e-5)
    # The flip did happen: the Byzantine rows differ from the same clients' clean gradients.
    sim.attack = diversefl.attacks.get("none")
    clean = sim.client_gradients(1, byz, ctx)
    torch.testing.assert_close(clean[~byz], cached[~byz], atol=1e-6, rtol=1e-5)
    assert (clean[byz] - cached[byz]).abs().max() > 1e-3
