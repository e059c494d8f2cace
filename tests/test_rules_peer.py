"""The peer-parity rules of issue #33 (meamed, mda, monna, dnc, signguard) against plain-loop
NumPy references and hand-computed examples; their n/f refusals; malformed rows; a simple
attack; and one run of each through the config and the CLI."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
from conftest import tiny_config

from diversefl import aggregators
from diversefl.aggregators import AggregatorError, RoundContext
from diversefl.aggregators.dnc import draw_coordinates
from diversefl.aggregators.signguard import largest_cluster, norm_filter, sign_features
from diversefl.cli import main

RULES = ["meamed", "mda", "monna", "dnc", "signguard"]


def ctx_for(n: int, f: int, root: torch.Tensor | None = None, seed: int = 0) -> RoundContext:
    """A round context; ``root`` is the server gradient MoNNA uses as its reference."""
    grad = (lambda idx: root) if root is not None else None
    return RoundContext(
        round=1,
        n=n,
        f=f,
        generator=torch.Generator().manual_seed(seed),
        server_grad_fn=grad,
        shared_samples=torch.arange(n) if root is not None else None,
    )


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------- meamed


def ref_meamed(x: np.ndarray, f: int) -> np.ndarray:
    """Per coordinate: the n - f values closest to the median (ties: smaller), averaged."""
    n, d = x.shape
    out = np.zeros(d)
    for u in range(d):
        med = float(np.median(x[:, u]))
        closest = sorted(x[:, u].tolist(), key=lambda v: (abs(v - med), v))[: n - f]
        out[u] = sum(closest) / (n - f)
    return out


@pytest.mark.parametrize(("n", "f", "seed"), [(7, 2, 0), (10, 3, 1), (5, 0, 2)])
def test_meamed_matches_loop_reference(n: int, f: int, seed: int) -> None:
    x = randn(n, 6, seed=seed)
    out = aggregators.get("meamed")(x, ctx_for(n, f))
    np.testing.assert_allclose(out.update.numpy(), ref_meamed(x.numpy(), f), rtol=1e-12)
    assert out.accepted.all()


def test_meamed_by_hand() -> None:
    # column 0: median 2, the 3 closest are 1, 2, 3 -> 2; column 1: median 0, closest 0, 1, -1
    x = torch.tensor([[1.0, 0.0], [2.0, 1.0], [3.0, -1.0], [100.0, 7.0], [-50.0, -9.0]])
    out = aggregators.get("meamed")(x, ctx_for(5, 2))
    assert out.update.tolist() == [2.0, 0.0]


# ---------------------------------------------------------------- mda


def ref_mda(x: np.ndarray, f: int) -> tuple[list[int], np.ndarray]:
    """Every (n - f)-subset's diameter by nested loops; the first smallest wins."""
    n = x.shape[0]
    best, best_diam = None, np.inf
    for subset in itertools.combinations(range(n), n - f):
        diam = max(
            (float(np.sqrt(((x[i] - x[j]) ** 2).sum())) for i in subset for j in subset),
            default=0.0,
        )
        if diam < best_diam:
            best, best_diam = list(subset), diam
    assert best is not None
    return best, x[best].mean(0)


@pytest.mark.parametrize(("n", "f", "seed"), [(7, 2, 0), (9, 3, 1), (6, 0, 2), (11, 4, 3)])
def test_mda_matches_subset_loop_reference(n: int, f: int, seed: int) -> None:
    x = randn(n, 4, seed=seed)
    x[0] += 3.0  # one outlier-ish row
    out = aggregators.get("mda")(x, ctx_for(n, f))
    chosen, want = ref_mda(x.numpy(), f)
    assert out.accepted.nonzero().flatten().tolist() == chosen
    np.testing.assert_allclose(out.update.numpy(), want, rtol=1e-12)


def test_mda_by_hand() -> None:
    # 1-D: {0, 1, 2} has diameter 2; any 3-set with 10 or 11 has diameter >= 8 -> mean 1
    x = torch.tensor([[10.0], [0.0], [11.0], [1.0], [2.0]])
    out = aggregators.get("mda")(x, ctx_for(5, 2))
    assert out.update.tolist() == [1.0]
    assert out.accepted.tolist() == [False, True, False, True, True]
    assert float(out.scores["diameter"][1]) == 2.0


def test_mda_refuses_small_n_and_too_many_subsets() -> None:
    with pytest.raises(AggregatorError, match=r"mda: needs n > 2f clients, got n=4, f=2"):
        aggregators.get("mda").check(4, 2)
    with pytest.raises(AggregatorError, match=r"C\(n=40, f=10\) = 847660528 subsets exceeds"):
        aggregators.get("mda").check(40, 10)
    aggregators.get("mda", max_subsets=10**9).check(40, 10)  # a larger bound allows it
    with pytest.raises(ValueError, match="max_subsets must be >= 1, got 0"):
        aggregators.get("mda", max_subsets=0)


# ---------------------------------------------------------------- monna


def ref_monna(x: np.ndarray, pivot: np.ndarray, f: int) -> np.ndarray:
    """The n - f rows nearest the pivot (ties: lower index), averaged."""
    dist = [float(np.sqrt(((row - pivot) ** 2).sum())) for row in x]
    order = sorted(range(len(dist)), key=lambda i: (dist[i], i))[: len(dist) - f]
    return x[sorted(order)].mean(0)


@pytest.mark.parametrize(("n", "f", "seed"), [(7, 2, 0), (12, 5, 1), (4, 0, 2)])
def test_monna_matches_loop_reference(n: int, f: int, seed: int) -> None:
    x = randn(n, 5, seed=seed)
    root = randn(5, seed=seed + 100)
    out = aggregators.get("monna")(x, ctx_for(n, f, root))
    want = ref_monna(x.numpy(), root.numpy(), f)
    np.testing.assert_allclose(out.update.numpy(), want, rtol=1e-12)
    assert int(out.accepted.sum()) == n - f


def test_monna_by_hand_and_ties() -> None:
    # distances to 0.5: 0.5, 0.5, 4.5, 4.5, 99.5; keep 3, the tie at 4.5 goes to client 2
    x = torch.tensor([[0.0], [1.0], [5.0], [-4.0], [100.0]])
    out = aggregators.get("monna")(x, ctx_for(5, 2, torch.tensor([0.5])))
    assert out.update.tolist() == [2.0]
    assert out.accepted.tolist() == [True, True, True, False, False]


def test_monna_needs_server_data_and_n_above_f() -> None:
    with pytest.raises(AggregatorError, match="monna: needs server-side data"):
        aggregators.get("monna")(torch.zeros(3, 2), ctx_for(3, 1))
    with pytest.raises(AggregatorError, match="needs f >= 0 and n - f >= 1, got n=3, f=3"):
        aggregators.get("monna").check(3, 3)
    bad = ctx_for(3, 1, torch.ones(5))  # a reference of the wrong length
    with pytest.raises(AggregatorError, match="server gradient must be finite with 2 entries"):
        aggregators.get("monna")(torch.zeros(3, 2), bad)


# ---------------------------------------------------------------- dnc


def ref_dnc(x: np.ndarray, coordinate_sets: list[np.ndarray], removed: int) -> np.ndarray:
    """Per coordinate set: centre, top right singular vector by NumPy's SVD, squared
    projections by a loop; keep the n - removed lowest; intersect; average."""
    n = x.shape[0]
    kept = set(range(n))
    for coords in coordinate_sets:
        sub = x[:, coords]
        centred = sub - sub.mean(0)
        top = np.linalg.svd(centred)[2][0]
        scores = [float(np.dot(centred[i], top)) ** 2 for i in range(n)]
        kept &= set(sorted(range(n), key=lambda i: (scores[i], i))[: n - removed])
    return x[sorted(kept)].mean(0)


@pytest.mark.parametrize(("n", "f", "seed"), [(9, 2, 0), (12, 3, 1), (6, 0, 2)])
def test_dnc_all_coordinates_matches_loop_reference(n: int, f: int, seed: int) -> None:
    x = randn(n, 7, seed=seed)
    x[: max(f, 1)] += 2.0  # a shifted group the top direction finds
    out = aggregators.get("dnc")(x, ctx_for(n, f))  # b = 10000 > d: every coordinate
    want = ref_dnc(x.numpy(), [np.arange(7)], f)
    np.testing.assert_allclose(out.update.numpy(), want, rtol=1e-10)


def test_dnc_subsampled_iterations_match_loop_reference() -> None:
    n, f, d = 10, 2, 40
    x = randn(n, d, seed=4)
    x[[3, 7]] += randn(2, d, seed=5) * 3
    out = aggregators.get("dnc", niters=3, b=15, c=1.5)(x, ctx_for(n, f, seed=9))
    sets = draw_coordinates(d, 15, 3, torch.Generator().manual_seed(9))
    assert all(len(set(s.tolist())) == 15 and s.tolist() == sorted(s.tolist()) for s in sets)
    want = ref_dnc(x.numpy(), [s.numpy() for s in sets], 3)  # floor(1.5 * 2) = 3 removed
    np.testing.assert_allclose(out.update.numpy(), want, rtol=1e-10)
    assert not out.accepted[3] and not out.accepted[7]


def test_dnc_by_hand() -> None:
    # d = 1: centred values -3, -2, -1, 6; v = 1; scores 9, 4, 1, 36 -> drop client 3, mean 1
    x = torch.tensor([[0.0], [1.0], [2.0], [9.0]])
    out = aggregators.get("dnc")(x, ctx_for(4, 1))
    assert out.accepted.tolist() == [True, True, True, False]
    assert out.update.tolist() == [1.0]
    np.testing.assert_allclose(out.scores["dnc"].numpy(), [9.0, 4.0, 1.0, 36.0], rtol=1e-12)


def test_dnc_refuses_removing_everyone() -> None:
    with pytest.raises(AggregatorError, match=r"removes floor\(c f\) = 3 of n=3 updates"):
        aggregators.get("dnc").check(3, 3)
    aggregators.get("dnc", c=0.5).check(3, 3)  # floor(1.5) = 1 removed
    with pytest.raises(ValueError, match="niters must be >= 1, got 0"):
        aggregators.get("dnc", niters=0)


# ---------------------------------------------------------------- signguard


def test_signguard_pieces_match_loops() -> None:
    x = randn(8, 30, seed=6)
    x[2, :10] = 0.0
    norms = torch.linalg.vector_norm(x, dim=1)
    mask, median = norm_filter(norms, 0.9, 1.05)
    values = sorted(float(np.sqrt((row**2).sum())) for row in x.numpy())
    want_median = (values[3] + values[4]) / 2
    assert float(median) == pytest.approx(want_median, rel=1e-12)
    for i, row in enumerate(x.numpy()):
        ratio = float(np.sqrt((row**2).sum())) / want_median
        assert bool(mask[i]) == (0.9 <= ratio <= 1.05)
    coords = torch.tensor([0, 3, 5, 11, 20])
    feats = sign_features(x, coords)
    for i in range(8):
        vals = [float(x[i, c]) for c in coords]
        want = [sum(v > 0 for v in vals) / 5, sum(v == 0 for v in vals) / 5]
        want.append(sum(v < 0 for v in vals) / 5)
        assert feats[i].tolist() == pytest.approx(want)


def test_largest_cluster_by_hand() -> None:
    a = torch.tensor([0.6, 0.0, 0.4], dtype=torch.float64)
    b = torch.tensor([0.2, 0.0, 0.8], dtype=torch.float64)
    jitter = randn(8, 3, seed=7) * 0.01
    points = torch.stack([a, b, a, a, b, a, a, b]) + jitter  # 5 near a, 3 near b
    assert largest_cluster(points).tolist() == [True, False, True, True, False, True, True, False]
    same = torch.stack([a] * 5)  # identical features: one cluster
    assert largest_cluster(same).all()


def test_signguard_by_hand() -> None:
    # norms 1, 1, 2, 1, 100 (median 1): only 100 is beyond 3x the median; client 2 (norm 2) is
    # clipped to norm 1. Client 3 points the other way (all negative): its own sign cluster.
    x = torch.tensor(
        [[0.6, 0.8], [0.8, 0.6], [1.2, 1.6], [-0.6, -0.8], [60.0, 80.0]], dtype=torch.float64
    )
    out = aggregators.get("signguard", coords=1.0)(x, ctx_for(5, 1))
    assert out.accepted.tolist() == [True, True, True, False, False]
    want = (x[0] + x[1] + x[2] / 2) / 3
    np.testing.assert_allclose(out.update.numpy(), want.numpy(), rtol=1e-12)
    np.testing.assert_allclose(out.scores["norm_ratio"].numpy(), [1, 1, 2, 1, 100], rtol=1e-12)


def test_signguard_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="needs 0 <= lower <= 1 <= upper, got lower=2"):
        aggregators.get("signguard", lower=2.0)
    with pytest.raises(ValueError, match=r"coords must be in \(0, 1\], got 0.0"):
        aggregators.get("signguard", coords=0.0)


# ---------------------------------------------------------------- every new rule


@pytest.mark.parametrize("name", RULES)
def test_nan_row_is_ignored_like_a_missing_client(name: str) -> None:
    """A NaN row is dropped before the rule (sanitize): the result is the rule on the other
    rows with f lowered by one, and the NaN client is not accepted."""
    n, f, d = 9, 2, 12
    x = randn(n, d, seed=11)
    root = x.mean(0)
    bad = x.clone()
    bad[4, 3] = float("nan")
    out = aggregators.get(name)(bad, ctx_for(n, f, root))
    rest = torch.cat([x[:4], x[5:]])
    want = aggregators.get(name)(rest, ctx_for(n - 1, f - 1, root))
    assert not out.accepted[4]
    assert torch.equal(out.update, want.update)
    assert torch.cat([out.accepted[:4], out.accepted[5:]]).tolist() == want.accepted.tolist()


@pytest.mark.parametrize("name", RULES)
def test_a_few_huge_rows_do_not_move_the_aggregate(name: str) -> None:
    n, f, d = 15, 3, 50
    honest = 1.0 + 0.1 * randn(n - f, d, seed=12)
    x = torch.cat([honest, torch.full((f, d), -1e3, dtype=torch.float64)])
    mean = honest.mean(0)
    out = aggregators.get(name)(x, ctx_for(n, f, mean + 0.05))
    assert float((out.update - mean).norm()) < 0.1 * float(mean.norm())
    if name != "meamed":  # meamed trims per coordinate, accepting every client as a whole
        assert not out.accepted[n - f :].any()


@pytest.mark.parametrize("name", RULES)
def test_each_rule_runs_end_to_end_from_the_cli(name: str, tmp_path: Path) -> None:
    cfg = tiny_config(
        rounds=10,
        clients={"n": 8, "batch": 0.5, "sample": 8},
        attack={"name": "sign_flip", "byzantine": [2]},
        aggregator={"name": name},
    )
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps(cfg))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_test_accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert "aggregator" in (out / "config.toml").read_text()
