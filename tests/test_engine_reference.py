"""The engine's glue against independent computations: a whole DiverseFL round under both loss
scales, the test-set evaluation, and the detection rates written to metrics.csv/summary.json."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from diversefl.api import run
from diversefl.config import make_config
from diversefl.engine.gradients import loop_grads
from diversefl.engine.simulator import Simulation


@pytest.mark.parametrize("loss", ["mean", "sum"])
def test_diversefl_round_matches_a_plain_loop(loss: str):
    """One DiverseFL round: client updates and guides by autograd client by client (times the
    client's batch size m_j under ``loss = "sum"``), eq. 10 in plain Python, the step by hand."""
    lr, wd = 0.05, 0.01
    cfg = make_config(
        tiny_config(
            model={"name": "mlp"},
            clients={"n": 6, "batch": 20, "sample": 8, "loss": loss},
            attack={"name": "sign_flip", "f": 2, "byzantine": [1, 4]},
            aggregator={"name": "diversefl"},
            optim={"lr": lr, "schedule": "constant", "weight_decay": wd},
        )
    )
    sim = Simulation(cfg)
    theta0 = sim.theta.clone()
    idx, w = sim.draw_batches(1)
    m = [int(w[j].sum()) for j in range(sim.n)]
    assert m == [20] * 6
    scale = [float(mj) if loss == "sum" else 1.0 for mj in m]
    grads = loop_grads(sim.fm, theta0, sim.x_train[idx], sim.y_train[idx], w)
    updates = [grads[j] * scale[j] * (-1.0 if j in (1, 4) else 1.0) for j in range(sim.n)]
    guides = []
    for j in range(sim.n):
        k = int(sim.sample_k[j])
        rows = sim.sample_idx[j, :k]
        assert set(rows.tolist()) <= set(sim.shards[j, : sim.shard_len[j]].tolist())
        g = loop_grads(sim.fm, theta0, sim.x_train[rows][None], sim.y_train[rows][None])[0]
        guides.append(g * scale[j])

    accepted = []
    for z, g in zip(updates, guides, strict=True):
        dot = sum(float(a) * float(b) for a, b in zip(z.tolist(), g.tolist(), strict=True))
        ratio = float(z.norm()) / float(g.norm())
        accepted.append(dot > 0 and 0.5 < ratio < 2.0)
    assert accepted[1] is False and accepted[4] is False
    assert sum(accepted) >= 2  # the step below averages something
    chosen = [updates[j] for j in range(sim.n) if accepted[j]]
    expected = theta0 - lr * (torch.stack(chosen).mean(0) + wd * theta0)

    rec = sim.step(1)
    assert rec.accepted.tolist() == accepted
    torch.testing.assert_close(sim.theta, expected, atol=1e-6, rtol=1e-4)
    # the recorded C2 is |update| / |guide| on the same scale for both losses
    ratios = [float(z.norm() / g.norm()) for z, g in zip(updates, guides, strict=True)]
    torch.testing.assert_close(rec.scores["c2"].double(), torch.tensor(ratios).double(),
                               atol=1e-5, rtol=1e-4)  # fmt: skip


def test_the_loss_scale_does_not_change_the_decisions():
    """Under ``loss = "sum"`` an honest update and its guide scale alike (both by m_j), so the
    honest clients' C2 and the decisions equal the mean loss's (the Gaussian noise is not
    scaled: the attackers' C2 shrinks by m_j, and they fail either way)."""
    recs = {}
    for loss in ("mean", "sum"):
        cfg = make_config(
            tiny_config(
                model={"name": "mlp"},
                clients={"n": 6, "batch": 0.3, "sample": 8, "loss": loss},
                attack={"name": "gaussian", "f": 2, "sigma": 0.05, "byzantine": [0, 3]},
                aggregator={"name": "diversefl"},
            )
        )
        recs[loss] = Simulation(cfg).step(1)
    assert recs["mean"].accepted.tolist() == recs["sum"].accepted.tolist()
    honest = [1, 2, 4, 5]
    torch.testing.assert_close(recs["mean"].scores["c2"][honest], recs["sum"].scores["c2"][honest],
                               rtol=1e-4, atol=1e-6)  # fmt: skip
    m = Simulation(make_config(tiny_config(clients={"n": 6, "batch": 0.3}))).batch_k.float()
    torch.testing.assert_close(
        recs["mean"].scores["c2"][[0, 3]],
        recs["sum"].scores["c2"][[0, 3]] * m[[0, 3]],
        rtol=1e-4,
        atol=1e-6,
    )


@pytest.mark.parametrize("model", ["softmax", "mlp"])
def test_evaluate_matches_one_pass_over_the_test_set(model: str):
    """Accuracy and mean cross-entropy from ragged eval batches (7: 51 full ones and one of 3)
    equal one forward pass of the whole test set through the plain module."""
    sim = Simulation(make_config(tiny_config(model={"name": model}, eval={"batch": 7})))
    assert sim.x_test.shape[0] % 7 != 0 and sim.x_test.shape[0] > 7
    gen = torch.Generator().manual_seed(3)
    theta = sim.theta + 0.3 * torch.randn(sim.theta.shape, generator=gen)
    got = sim.evaluate(theta)

    sim.fm.load_into_module(theta)
    module = sim.fm.module.eval()
    with torch.no_grad():
        logits = module(sim.x_test)
    module.train()
    pairs = zip(logits.argmax(1).tolist(), sim.y_test.tolist(), strict=True)
    right = sum(int(p == t) for p, t in pairs)
    assert got["test_accuracy"] == pytest.approx(right / sim.x_test.shape[0], abs=1e-6)
    assert got["test_loss"] == pytest.approx(float(F.cross_entropy(logits, sim.y_test)), rel=1e-5)
    assert 0.0 < got["test_accuracy"] < 1.0  # a non-trivial model, so a slip would show


def _recount(rows: list[dict[str, str]]) -> dict[str, float]:
    byz = [r for r in rows if r["byzantine"] == "1"]
    honest = [r for r in rows if r["byzantine"] == "0"]
    rounds = {r["round"] for r in rows}
    return {
        "tpr": sum(r["accepted"] == "0" for r in byz) / len(byz),
        "fpr": sum(r["accepted"] == "0" for r in honest) / len(honest),
        "n_accepted": sum(r["accepted"] == "1" for r in rows) / len(rounds),
    }


def test_detection_rates_recounted_from_decisions(tmp_path: Path):
    """metrics.csv's per-window TPR, FPR and accepted count, and summary.json's whole-run ones,
    equal counts taken by hand from decisions.csv, on a run where the rule errs both ways."""
    cfg = tiny_config(
        rounds=9,
        model={"name": "mlp"},
        clients={"n": 8, "batch": 0.2, "sample": 6},
        attack={"name": "label_flip", "f": 3, "byzantine": "per_round"},
        aggregator={"name": "diversefl", "eps1": 0.9, "eps2": 1.1},
        eval={"every": 3, "checkpoint_every": 9, "decisions": True},
    )
    out = tmp_path / "r"
    run(cfg, out=out)
    with (out / "decisions.csv").open() as fh:
        decisions = list(csv.DictReader(fh))
    with (out / "metrics.csv").open() as fh:
        metrics = list(csv.DictReader(fh))
    summary = json.loads((out / "summary.json").read_text())
    assert [int(r["round"]) for r in metrics] == [3, 6, 9]
    fprs = []
    for row in metrics:
        end = int(row["round"])
        window = [d for d in decisions if end - 3 < int(d["round"]) <= end]
        want = _recount(window)
        for key in ("tpr", "fpr", "n_accepted"):
            assert float(row[key]) == pytest.approx(want[key], abs=1e-4), (end, key)
        fprs.append(want["fpr"])
    whole = _recount(decisions)
    assert summary["mean_tpr"] == pytest.approx(whole["tpr"], abs=1e-5)
    assert summary["mean_fpr"] == pytest.approx(whole["fpr"], abs=1e-5)
    assert summary["mean_accepted"] == pytest.approx(whole["n_accepted"], abs=1e-4)
    # the narrow band rejects some honest clients and accepts some flipped ones: every
    # denominator above is exercised (an FPR of 0 or a TPR of 1 could hide a wrong one)
    assert any(0 < v < 1 for v in fprs)
    assert 0 < whole["tpr"] < 1 or 0 < whole["fpr"] < 1
