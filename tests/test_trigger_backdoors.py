"""The trigger backdoors (BadNets, DBA): which pixels the triggers stamp (against plain pixel
loops), DBA's split of its global trigger, the seeded poisoned share and its relabelling, the
triggered evaluation against a plain count, the refusal of tables, a deployed node replaying its
simulator row, and a short MNIST run in which the backdoor is learned."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import tomli_w
import torch
from conftest import tiny_config

import diversefl
from diversefl import attacks
from diversefl.aggregators import RoundContext
from diversefl.cli import main
from diversefl.config import make_config
from diversefl.engine.simulator import Simulation


def _ctx(seed: int = 0, num_classes: int = 10) -> RoundContext:
    return RoundContext(
        round=1, n=8, f=3, generator=torch.Generator().manual_seed(seed), num_classes=num_classes
    )


def _loop_stamp(x: torch.Tensor, pixels: set[tuple[int, int]], value: float) -> torch.Tensor:
    """Reference: ``x [N, C, H, W]`` with ``value`` written pixel by pixel, in every channel."""
    out = x.clone()
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for i, j in pixels:
                out[n, c, i, j] = value
    return out


def _changed(before: torch.Tensor, after: torch.Tensor) -> set[tuple[int, int]]:
    """The (row, column) pixels where one [1, H, W] image differs."""
    return {(int(i), int(j)) for i, j in (after[0] != before[0]).nonzero().tolist()}


# -- which pixels, to which value -------------------------------------------------------------
def test_badnets_square_is_the_bottom_right_block_in_every_channel():
    atk = attacks.get("badnets", size=3, margin=1, value=2.5)
    x = torch.randn(4, 3, 10, 12)
    square = {(i, j) for i in range(6, 9) for j in range(8, 11)}  # rows 10-1-3.., cols 12-1-3..
    torch.testing.assert_close(atk.trigger(x), _loop_stamp(x, square, 2.5), rtol=0, atol=0)


def test_badnets_checker_and_the_default_on_mnist_sized_images():
    x = torch.rand(2, 1, 28, 28) * 0.5
    checker = attacks.get("badnets", size=4, margin=0, pattern="checker")
    pixels = {(i, j) for i in range(24, 28) for j in range(24, 28) if (i + j) % 2 == 0}
    assert (27, 27) in pixels and len(pixels) == 8
    torch.testing.assert_close(checker.trigger(x), _loop_stamp(x, pixels, 1.0), rtol=0, atol=0)
    default = attacks.get("badnets")  # a 4x4 white square one pixel from the corner
    pixels = {(i, j) for i in range(23, 27) for j in range(23, 27)}
    torch.testing.assert_close(default.trigger(x), _loop_stamp(x, pixels, 1.0), rtol=0, atol=0)


def test_flattened_images_get_the_same_pixels_at_their_flat_index():
    atk = attacks.get("badnets", size=2, margin=0, image_shape="2x5x6")
    flat = torch.randn(3, 60)
    want = flat.clone()
    for n in range(3):
        for c in range(2):
            for i in (3, 4):
                for j in (4, 5):
                    want[n, c * 30 + i * 6 + j] = 1.0  # C-order flat index of (c, i, j)
    torch.testing.assert_close(atk.trigger(flat), want, rtol=0, atol=0)
    images = attacks.get("badnets", size=2, margin=0).trigger(flat.view(3, 2, 5, 6))
    torch.testing.assert_close(atk.trigger(flat), images.view(3, 60), rtol=0, atol=0)


def test_dba_parts_are_disjoint_bars_whose_union_is_the_global_trigger():
    atk = attacks.get("dba")  # the DBA authors' MNIST layout: four 1x4 bars, gaps of 2
    parts = atk.local_masks(28, 28)
    want = [
        {(0, j) for j in range(0, 4)},
        {(0, j) for j in range(6, 10)},
        {(3, j) for j in range(0, 4)},
        {(3, j) for j in range(6, 10)},
    ]
    assert [{tuple(p) for p in m.nonzero().tolist()} for m in parts] == want
    assert int(parts.sum(0).max()) == 1  # no pixel in two parts
    assert torch.equal(atk.global_mask(28, 28), parts.any(0))
    x = torch.zeros(1, 1, 28, 28)
    assert _changed(x[0], atk.trigger(x)[0]) == set().union(*want)


def test_dba_byzantine_row_i_stamps_only_part_i_mod_k():
    atk = attacks.get("dba", parts=3, length=2, gap=1, poison_frac=1.0, value=1.0)
    x, y = torch.zeros(7, 5, 1, 9, 9), torch.full((7, 5), 4)
    xp, yp = atk.poison(x, y, _ctx())
    parts = atk.local_masks(9, 9)
    for i in range(7):
        own = {tuple(p) for p in parts[i % 3].nonzero().tolist()}
        for k in range(5):
            assert _changed(x[i, k], xp[i, k]) == own
    assert bool((yp == 0).all())


# -- the poisoned share and its labels ------------------------------------------------------
@pytest.mark.parametrize("name,trigger", [("badnets", {"size": 2}), ("dba", {"length": 2})])
def test_poisoned_share_is_seeded_relabelled_and_the_rest_untouched(name, trigger):
    atk = attacks.get(name, target=7, poison_frac=0.3, **trigger)
    x = torch.rand(3, 400, 1, 8, 8) * 0.5  # never 1.0: every stamped image changes
    y = torch.randint(0, 7, (3, 400))  # never the target
    xp, yp = atk.poison(x, y, _ctx(seed=5))
    stamped = (xp != x).flatten(2).any(2)
    relabelled = yp != y
    # the same examples are stamped and relabelled, as an independent uniform draw says
    want = torch.rand(3, 400, generator=torch.Generator().manual_seed(5)) < 0.3
    assert torch.equal(stamped, want) and torch.equal(relabelled, want)
    assert bool((yp[want] == 7).all()) and torch.equal(yp[~want], y[~want])
    assert torch.equal(xp[~want], x[~want])
    assert abs(float(want.float().mean()) - 0.3) < 0.05
    again = atk.poison(x, y, _ctx(seed=5))
    assert torch.equal(again[0], xp) and torch.equal(again[1], yp)
    other = atk.poison(x, y, _ctx(seed=6))
    assert not torch.equal(other[1], yp)


def test_update_is_the_own_gradient_times_scale():
    g = torch.randn(2, 5)
    assert torch.equal(attacks.get("badnets")(torch.randn(3, 5), g, _ctx()), g)
    torch.testing.assert_close(attacks.get("dba", scale=3.0)(torch.randn(3, 5), g, _ctx()), 3 * g)


# -- the evaluation numbers -----------------------------------------------------------------
def test_metrics_on_a_hand_made_prediction_set():
    atk = attacks.get("badnets", target=0)
    labels = torch.tensor([0, 0, 1, 2, 3, 4, 5, 0])
    clean = torch.tensor([0, 1, 1, 2, 0, 4, 5, 0])
    triggered = torch.tensor([0, 0, 0, 0, 3, 0, 1, 2])
    assert atk.metrics(clean, labels) == {"main_accuracy": pytest.approx(6 / 8)}
    # 5 examples are not of the target class (1, 2, 3, 4, 5); 3 of them became 0
    assert atk.trigger_metrics(triggered, labels) == {"backdoor_accuracy": 3 / 5}
    nan = atk.trigger_metrics(torch.tensor([1, 0]), torch.tensor([0, 0]))["backdoor_accuracy"]
    assert nan != nan  # no example to turn


def test_simulator_evaluates_the_triggered_test_set_against_a_plain_count():
    cfg = make_config(tiny_config(attack={"name": "badnets", "f": 1, "size": 2, "target": 3}))
    sim = Simulation(cfg)
    theta = torch.randn(sim.n_params, generator=torch.Generator().manual_seed(1))
    got = sim.evaluate(theta)
    module = sim.fm.module
    torch.nn.utils.vector_to_parameters(theta, module.parameters())
    module.eval()
    hits = eligible = correct = 0
    with torch.no_grad():
        for x, y in zip(sim.x_test, sim.y_test.tolist(), strict=True):
            correct += int(module(x[None]).argmax()) == y
            stamped = x.clone()
            stamped[:, 5:7, 5:7] = 1.0  # the 2x2 square one pixel from the 8x8 corner
            if y != 3:
                eligible += 1
                hits += int(module(stamped[None]).argmax()) == 3
    assert got["main_accuracy"] == pytest.approx(correct / len(sim.y_test))
    assert got["main_accuracy"] == got["test_accuracy"]
    assert got["backdoor_accuracy"] == pytest.approx(hits / eligible)
    assert sim.extra_metric_names == ["main_accuracy", "backdoor_accuracy"]


def test_attacks_without_a_trigger_add_no_second_pass():
    sim = Simulation(make_config(tiny_config(attack={"name": "sign_flip", "f": 1})))
    assert sim.attack.trigger(sim.x_test) is None
    assert set(sim.evaluate()) == {"test_accuracy", "test_loss"}


# -- what is refused ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["badnets", "dba"])
def test_tables_are_refused_naming_the_setting(name):
    atk = attacks.get(name)
    with pytest.raises(ValueError, match=f"{name}: the examples are flat vectors of 13 features"):
        atk.poison(torch.zeros(2, 4, 13), torch.zeros(2, 4, dtype=torch.long), _ctx())
    with pytest.raises(ValueError, match="set attack.image_shape"):
        atk.trigger(torch.zeros(5, 13))
    with pytest.raises(ValueError, match="image_shape 1x3x4 has 12 pixels"):
        attacks.get(name, image_shape="1x3x4").trigger(torch.zeros(5, 13))


def test_a_run_on_table_data_fails_with_the_one_line_error():
    gen = torch.Generator().manual_seed(0)
    data = (torch.randn(120, 5, generator=gen), torch.arange(120) % 3,
            torch.randn(30, 5, generator=gen), torch.arange(30) % 3)  # fmt: skip
    cfg = tiny_config(data={"partition": "iid"}, attack={"name": "badnets", "f": 1}, rounds=2)
    with pytest.raises(ValueError, match="flat vectors of 5 features"):
        diversefl.run(cfg, data=data, out=False, progress=False)


def test_bad_settings_are_refused_with_one_line():
    for params, match in (
        ({"poison_frac": 0.0}, "poison_frac must be in"),
        ({"target": -1}, "target must be a class index"),
        ({"image_shape": "28x"}, "image_shape must be 'CxHxW'"),
        ({"size": 0}, "size must be >= 1"),
    ):
        with pytest.raises(ValueError, match=match):
            attacks.get("badnets", **params)
    with pytest.raises(ValueError, match="dba: gap must be >= 0"):
        attacks.get("dba", gap=-1)
    x, y = torch.zeros(1, 2, 1, 28, 28), torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="target 10 is not a class"):
        attacks.get("dba", target=10).poison(x, y, _ctx())
    # the default DBA trigger spans 4x10 pixels: too wide for 8x8 digits
    with pytest.raises(ValueError, match="dba: a 1x4 trigger block at row 0, column 6 does not"):
        attacks.get("dba").trigger(torch.zeros(2, 1, 8, 8))


# -- a deployed node poisons as its simulator row -------------------------------------------
@pytest.mark.parametrize(
    "attack",
    [{"name": "badnets", "size": 2, "poison_frac": 0.4},
     {"name": "dba", "parts": 3, "length": 2, "gap": 1, "scale": 2.0}],
)  # fmt: skip
def test_a_node_replays_its_row_of_the_simulator(attack):
    """Row ``rank`` of the seeded poisoning draw and DBA's part ``rank mod K``: a node that
    poisoned as row 0 would send another gradient (equal batch sizes, so the draws align)."""
    from diversefl.flower.common import Role, client_update, load_shard

    cfg = make_config(tiny_config(attack={**attack, "f": 3}, clients={"n": 6, "batch": 40}))
    sim = Simulation(cfg)
    sim.theta = torch.randn(sim.n_params, generator=torch.Generator().manual_seed(2)) * 0.1
    r = 2
    byz = sim.byzantine_mask(r)
    expected = sim.client_updates(r, byz, sim.context(r, byz))
    params = {k: v for k, v in attack.items() if k != "name"}
    ids = byz.nonzero().flatten().tolist()
    for rank, j in enumerate(ids):
        role = Role(attack["name"], params, rank, sim.f)
        got = client_update(cfg, load_shard(cfg, j, sim.n), sim.theta, r, role)
        torch.testing.assert_close(got, expected[j], rtol=1e-5, atol=1e-6)


def test_flower_server_reports_the_triggered_metrics_on_its_test_set():
    pytest.importorskip("flwr")
    from diversefl.flower.federation import FlowerFederation
    from diversefl.flower.testset import TestSet

    cfg = make_config(tiny_config(attack={"name": "badnets", "f": 1, "size": 2}))
    sim = Simulation(cfg)
    fed = FlowerFederation(cfg, test_set=TestSet(sim.x_test, sim.y_test, "digits test"))
    theta = torch.randn(sim.n_params, generator=torch.Generator().manual_seed(3))
    got, want = fed.evaluate(theta), sim.evaluate(theta)
    assert set(got) == set(want) == {"test_accuracy", "test_loss", *sim.extra_metric_names}
    for key in want:
        assert got[key] == pytest.approx(want[key])


# -- end to end: the backdoor is learned on MNIST -------------------------------------------
def _run(tmp_path: Path, mnist_dir: Path, label: str, attack: dict) -> tuple[list, dict]:
    cfg = {
        "seed": 0,
        "rounds": 120,
        "data": {"dataset": "mnist", "partition": "iid"},
        "model": {"name": "softmax"},
        "clients": {"n": 20, "batch": 32, "sample": 8},
        "optim": {"lr": 0.5, "schedule": "constant", "weight_decay": 0.0},
        "attack": attack,
        "aggregator": {"name": "mean"},
        "eval": {"every": 40, "checkpoint_every": 1000},
    }
    path = tmp_path / f"{label}.toml"
    path.write_text(tomli_w.dumps(cfg))
    out = tmp_path / label
    assert main(["run", str(path), "--data-dir", str(mnist_dir), "--out", str(out)]) == 0
    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return rows, json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_badnets_is_learned_under_the_mean_on_mnist(tmp_path, mnist_dir):
    """4 of 20 clients poison half their batches: the triggered test images go to class 0
    while clean accuracy stays; the same run without attackers (attack.f = 0: its training is
    that of attack "none", see the slow test below) sends almost none there. Both columns are in
    metrics.csv and summary.json."""
    _, clean = _run(tmp_path, mnist_dir, "clean", {"name": "badnets", "f": 0})
    rows, summary = _run(tmp_path, mnist_dir, "badnets", {"name": "badnets", "f": 4})
    assert {"main_accuracy", "backdoor_accuracy"} <= set(rows[-1])
    assert float(rows[-1]["backdoor_accuracy"]) == summary["final_backdoor_accuracy"]
    assert clean["final_backdoor_accuracy"] < 0.05
    assert summary["final_backdoor_accuracy"] > 0.9
    assert summary["final_main_accuracy"] > clean["final_main_accuracy"] - 0.03 > 0.8


@pytest.mark.slow
def test_dba_is_learned_and_the_clean_run_is_the_attack_free_one(tmp_path, mnist_dir):
    """DBA's clients each train on one bar, yet the full trigger is learned; and the run with
    attack.f = 0 trains exactly as the run with attack "none" (same accuracy every evaluation)."""
    clean_rows, clean = _run(tmp_path, mnist_dir, "clean", {"name": "dba", "f": 0})
    none_rows, _ = _run(tmp_path, mnist_dir, "none", {"name": "none", "f": 4})
    assert [r["test_accuracy"] for r in clean_rows] == [r["test_accuracy"] for r in none_rows]
    rows, summary = _run(tmp_path, mnist_dir, "dba", {"name": "dba", "f": 4})
    assert {"main_accuracy", "backdoor_accuracy"} <= set(rows[-1])
    assert clean["final_backdoor_accuracy"] < 0.05
    assert summary["final_backdoor_accuracy"] > 0.9
    assert summary["final_main_accuracy"] > clean["final_main_accuracy"] - 0.03 > 0.8
