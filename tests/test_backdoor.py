"""The backdoor (model-replacement) attack: batch poisoning, scaling, who is Byzantine, and
the main/backdoor metrics on a hand-made test set."""

from __future__ import annotations

import numpy as np
import torch
from conftest import tiny_config

import diversefl
from diversefl import attacks
from diversefl.aggregators import RoundContext
from diversefl.attacks.backdoor import backdoor_metrics
from diversefl.data.datasets import load_dataset
from diversefl.data.partition import partition


def _ctx() -> RoundContext:
    return RoundContext(
        round=1, n=4, f=1, generator=torch.Generator().manual_seed(0), num_classes=10
    )


def test_poisoned_batch_relabels_only_source_and_keeps_images():
    atk = attacks.get("backdoor", source=3, target=4, scale=7.0)
    y = torch.tensor([[3, 3, 5, 5, 3, 0]])
    x = torch.randn(1, 6, 2)
    x2, y2 = atk.poison(x, y, _ctx())
    assert torch.equal(x2, x)
    assert y2.tolist() == [[4, 4, 5, 5, 4, 0]]
    # the mix: normal images stay, half of this batch is main-task data
    assert int((y2 != 4).sum()) == 3


def test_update_is_scaled_by_factor():
    atk = attacks.get("backdoor", scale=7.0)
    g = torch.randn(2, 5)
    torch.testing.assert_close(atk(torch.randn(3, 5), g, _ctx()), 7.0 * g)


def test_metrics_on_hand_made_test_set():
    labels = torch.tensor([3, 3, 3, 3, 0, 1, 4, 4])
    preds = torch.tensor([4, 4, 3, 1, 0, 2, 4, 4])
    m = backdoor_metrics(preds, labels, source=3, target=4)
    assert m["backdoor_accuracy"] == 0.5  # 2 of the 4 threes became fours
    assert m["main_accuracy"] == 3 / 4  # 0 ok, 1 wrong, 4 ok, 4 ok


def test_two_class_partition_marks_exactly_source_owners(mnist_dir):
    labels = load_dataset("mnist", mnist_dir).y_train.numpy()
    parts = partition(labels, 23, "two-class")
    assert all(len(np.unique(labels[p])) >= 2 for p in parts)
    chosen = attacks.get("backdoor", source=3).choose_byzantine(labels, parts)
    expected = [j for j in range(23) if 3 in set(labels[parts[j]].tolist())]
    assert chosen == expected and 0 < len(chosen) < 23


def test_backdoor_run_reports_f_and_metrics():
    r = diversefl.run(
        tiny_config(
            rounds=10,
            data={"partition": "two-class"},
            attack={"name": "backdoor"},
            aggregator={"name": "diversefl"},
        ),
        out=False,
    )
    s = r.summary
    assert s["f"] == len(s["byzantine_ids"]) > 0
    assert "final_main_accuracy" in s and "final_backdoor_accuracy" in s
    assert {"main_accuracy", "backdoor_accuracy"} <= set(r.metrics[-1])
