"""Pre-aggregators before any rule (`aggregator.pre`): NNM, bucketing, static clipping and ARC
against plain loops, the pipeline's mapping of accepted rows back to clients, and the config."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_config

from diversefl.aggregators import AggregatorError
from diversefl.aggregators.pipeline import Pipeline
from diversefl.aggregators.pre import PRE, build_stages
from diversefl.aggregators.pre.bucketing import bucket_means
from diversefl.aggregators.pre.clipping import arc_count
from diversefl.aggregators.pre.nnm import nearest_neighbour_mixing
from diversefl.config import ConfigError, make_config, to_toml_dict
from diversefl.engine.runner import train
from diversefl.methods import build_method
from diversefl.round import RoundContext


def ctx(n: int, f: int, seed: int = 0) -> RoundContext:
    return RoundContext(round=1, n=n, f=f, generator=torch.Generator().manual_seed(seed))


def test_nnm_is_the_mean_of_each_rows_nearest_neighbours():
    x = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    f = 2
    got = nearest_neighbour_mixing(x, f)
    for i in range(7):
        dists = sorted(range(7), key=lambda j: (float(torch.dist(x[i], x[j])), j))
        want = sum(x[j] for j in dists[: 7 - f]) / (7 - f)
        assert torch.allclose(got[i], want)


def test_nnm_picks_true_neighbours_among_large_nearly_equal_float32_rows():
    # rows of norm ~1e4 a few units apart: |a|^2 + |b|^2 - 2 a.b cancels in float32, so the
    # neighbours must come from exact differences (a plain float64 loop is the reference)
    gen = torch.Generator().manual_seed(3)
    base = torch.full((1, 50), 1e3)
    x = (base + torch.randn(9, 50, generator=gen) * torch.arange(1.0, 10.0)[:, None]).float()
    f = 3
    got = nearest_neighbour_mixing(x, f)
    x64 = x.double()
    for i in range(9):
        near = sorted(range(9), key=lambda j: (float((x64[i] - x64[j]).square().sum()), j))
        want = x64[near[: 9 - f]].mean(0).float()
        assert torch.allclose(got[i], want, rtol=1e-6, atol=0)


def test_bucketing_averages_the_shuffled_buckets():
    x = torch.arange(10.0).reshape(5, 2)
    perm = torch.tensor([3, 0, 4, 1, 2])
    means, members = bucket_means(x, 2, perm)
    assert torch.equal(means, torch.stack([(x[3] + x[0]) / 2, (x[4] + x[1]) / 2, x[2]]))
    assert members.tolist() == [
        [True, False, False, True, False],
        [False, True, False, False, True],
        [False, False, True, False, False],
    ]


def test_static_clipping_and_arc_against_plain_loops():
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [6.0, 8.0], [0.0, 2.0], [1.0, 0.0]])
    clip = PRE.build("clipping", {"bound": 1.0})
    out, _ = clip(x, ctx(5, 1))
    for row, orig in zip(out, x, strict=True):
        norm = float(orig.norm())
        assert torch.allclose(row, orig * (min(1.0, 1.0 / norm)))
    assert [arc_count(5, f) for f in range(4)] == [0, 1, 2, 2]  # floor(2 f (5 - f) / 5)
    assert arc_count(23, 5) == math.floor(2 * 5 * 18 / 23)
    out, _ = PRE.build("arc", {})(x, ctx(5, 2))  # the 2 longest (10, 5) to the 3rd (2)
    assert torch.allclose(out[0], x[0] * 2 / 5) and torch.allclose(out[2], x[2] * 2 / 10)
    assert torch.equal(out[[1, 3, 4]], x[[1, 3, 4]])


def test_pipeline_maps_accepted_buckets_back_to_their_clients():
    rule = build_method("krum", {})
    assert rule.name == "krum"
    pipe = build_method("multi_krum", {"m": 1}, [{"name": "bucketing", "s": 2}])
    assert isinstance(pipe, Pipeline) and pipe.name == "bucketing+multi_krum"
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    x[:2] += 100.0
    out = pipe(x, ctx(20, 1))
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    buckets = [set(perm[i : i + 2].tolist()) for i in range(0, 20, 2)]
    chosen = {j for j, a in enumerate(out.accepted.tolist()) if a}
    assert len(chosen) == 2 and chosen in buckets  # one bucket, both of its clients
    assert not chosen & {0, 1}


def test_nnm_then_krum_keeps_one_row_per_client():
    pipe = build_method("krum", {}, ["nnm"])
    x = torch.randn(11, 3, generator=torch.Generator().manual_seed(2))
    out = pipe(x, ctx(11, 2))
    assert out.accepted.sum() == 1
    mixed = nearest_neighbour_mixing(x, 2)
    assert torch.allclose(out.update, mixed[out.accepted].squeeze(0))


def test_what_cannot_be_composed_is_refused():
    with pytest.raises(AggregatorError, match="bucketing turns clients into groups"):
        build_method("diversefl", {}, ["bucketing"])
    for stateful in ("foolsgold", "fldetector"):  # per-client history keyed by bucket: no
        with pytest.raises(AggregatorError, match="keeps a history per client"):
            build_method(stateful, {}, ["bucketing"])
        build_method(stateful, {}, ["nnm"])  # rows stay the clients' own: allowed
    with pytest.raises(AggregatorError, match="protocol"):
        build_method("rsa", {}, ["nnm"])
    with pytest.raises(AggregatorError, match=r"n > 2f \+ 2"):
        build_method("krum", {}, ["bucketing"]).check(23, 5)  # 12 buckets
    with pytest.raises(ValueError, match=r"aggregator.pre\[0\]: unknown pre-aggregator"):
        build_stages(["nope"])
    with pytest.raises(ValueError, match=r"aggregator.pre\[0\]"):
        build_stages([{"name": "bucketing", "s": 0}])


def test_config_key_and_a_run_of_nnm_then_krum():
    raw = tiny_config(
        rounds=60,
        clients={"n": 12, "batch": 0.5, "sample": 8},
        attack={"name": "sign_flip", "f": 3},
        aggregator={"name": "krum", "pre": ["nnm"]},
    )
    cfg = make_config(raw)
    assert to_toml_dict(cfg)["aggregator"]["pre"] == ["nnm"]
    assert "pre" not in to_toml_dict(make_config(tiny_config()))["aggregator"]
    with pytest.raises(ConfigError, match=r"aggregator.pre\[0\]"):
        make_config(tiny_config(aggregator={"name": "krum", "pre": ["nope"]}))
    mixed = train(cfg, progress=False)
    plain = train(make_config({**raw, "aggregator": {"name": "krum"}}), progress=False)
    # on class-sorted shards Krum alone picks one client's gradient; mixing first averages
    # neighbours, which is NNM's point (Allouah et al., 2023)
    assert mixed.final_accuracy > plain.final_accuracy + 0.1
