"""The second batch of issue #33's rules (flame, foolsgold, fldetector, caf, smea) against plain
loop NumPy references, scikit-learn's HDBSCAN and hand-computed examples; their n/f refusals;
malformed rows; a few huge rows; the stateful rules' resume; one CLI run of each."""

from __future__ import annotations

import io
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
from conftest import tiny_config

from diversefl import aggregators
from diversefl.aggregators import AggregatorError, RoundContext
from diversefl.aggregators.flame import majority_cluster
from diversefl.aggregators.fldetector import (
    gap_clusters,
    kmeans_1d_costs,
    lbfgs_hvp,
    upper_cluster,
)
from diversefl.cli import main

RULES = ["flame", "foolsgold", "fldetector", "caf", "smea"]


def ctx_for(
    n: int, f: int, r: int = 1, seed: int = 0, params: torch.Tensor | None = None,
    ids: torch.Tensor | None = None,
) -> RoundContext:  # fmt: skip
    return RoundContext(
        round=r,
        n=n,
        f=f,
        generator=torch.Generator().manual_seed(seed),
        params=params,
        client_ids=ids,
    )


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def norm(v: np.ndarray) -> float:
    return math.sqrt(sum(float(a) * float(a) for a in v))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity by a loop (0 when either vector is zero)."""
    na, nb = norm(a), norm(b)
    return (
        0.0
        if na == 0 or nb == 0
        else sum(float(p) * float(q) for p, q in zip(a, b, strict=True)) / na / nb
    )


def saved_and_loaded(state: dict) -> dict:
    """``state`` through torch.save and the safe reader (as a checkpoint goes)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ---------------------------------------------------------------- flame


def ref_single_linkage_core(dist: list[list[float]], m: int) -> list[bool]:
    """Kruskal with union-find: add the edges in order of distance (all ties at once) until a
    component reaches m points; its members."""
    n = len(dist)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    edges = sorted((dist[i][j], i, j) for i in range(n) for j in range(i + 1, n))
    k = 0
    while True:
        level = edges[k][0]
        while k < len(edges) and edges[k][0] == level:
            parent[root(edges[k][1])] = root(edges[k][2])
            k += 1
        roots = [root(i) for i in range(n)]
        big = [r for r in set(roots) if roots.count(r) >= m]
        if big:
            return [r == big[0] for r in roots]


def ref_flame(x: np.ndarray) -> tuple[list[bool], np.ndarray]:
    """FLAME without noise by loops: cosine distances, single linkage to floor(n/2) + 1 points,
    the median norm of all updates, the mean of the kept updates clipped to it."""
    n = len(x)
    dist = [[0.0 if i == j else 1 - cosine(x[i], x[j]) for j in range(n)] for i in range(n)]
    kept = ref_single_linkage_core(dist, n // 2 + 1)
    norms = sorted(norm(row) for row in x)
    median = norms[n // 2] if n % 2 else (norms[n // 2 - 1] + norms[n // 2]) / 2
    rows = [x[i] * min(1.0, median / norm(x[i])) for i in range(n) if kept[i]]
    return kept, sum(rows) / len(rows)


def test_majority_cluster_matches_scikit_learn_hdbscan() -> None:
    from sklearn.cluster import HDBSCAN

    rng = np.random.default_rng(0)
    for trial in range(60):
        n, d = int(rng.integers(3, 14)), int(rng.integers(2, 6))
        x = rng.normal(size=(n, d))
        if trial % 2:
            x[: n // 3] += rng.normal(size=d) * 3  # a planted group
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        dist = np.clip(1 - unit @ unit.T, 0, None)
        np.fill_diagonal(dist, 0)
        m = n // 2 + 1
        labels = HDBSCAN(
            metric="precomputed", min_cluster_size=m, min_samples=1, allow_single_cluster=True,
            copy=True,
        ).fit_predict(dist)  # fmt: skip
        got = majority_cluster(torch.from_numpy(dist), m)
        assert got.tolist() == (labels != -1).tolist(), (trial, labels)


@pytest.mark.parametrize(("n", "seed"), [(7, 0), (10, 1), (13, 2), (4, 3)])
def test_flame_matches_loop_reference(n: int, seed: int) -> None:
    x = randn(n, 6, seed=seed)
    x[: n // 3] = x[: n // 3] * 5 + 2.0  # a scaled, shifted minority
    out = aggregators.get("flame", noise=0.0)(x, ctx_for(n, 1))
    kept, want = ref_flame(x.numpy())
    assert out.accepted.tolist() == kept
    np.testing.assert_allclose(out.update.numpy(), want, rtol=1e-12)


def test_flame_by_hand() -> None:
    # (1,0), (2,0), (3,0) share a direction (cosine distance 0): the cluster of 3 = floor(5/2)+1.
    # norms 1, 2, 1, 3, 4 -> median 2; (3,0) is clipped to (2,0): mean ((1+2+2)/3, 0)
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, -4.0]])
    out = aggregators.get("flame", noise=0.0)(x, ctx_for(5, 2))
    assert out.accepted.tolist() == [True, True, False, True, False]
    torch.testing.assert_close(out.update, torch.tensor([5.0 / 3.0, 0.0]))
    assert out.scores["norm_ratio"].tolist() == [0.5, 1.0, 0.5, 1.5, 2.0]


def test_flame_noise_is_lambda_times_the_median_norm() -> None:
    x = randn(9, 20, seed=4)
    quiet = aggregators.get("flame", noise=0.0)(x, ctx_for(9, 2, seed=5)).update
    noisy = aggregators.get("flame", noise=0.01)(x, ctx_for(9, 2, seed=5)).update
    median = float(torch.linalg.vector_norm(x, dim=1).median())  # n odd: the middle norm
    draw = torch.randn(20, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(noisy - quiet, 0.01 * median * draw, rtol=1e-12, atol=1e-15)


def test_flame_refuses_bad_settings_and_runs_any_n() -> None:
    with pytest.raises(ValueError, match="noise must be >= 0, got -1.0"):
        aggregators.get("flame", noise=-1.0)
    with pytest.raises(AggregatorError, match="needs at least one client, got n=0"):
        aggregators.get("flame").check(0, 0)
    aggregators.get("flame").check(1, 5)  # f is not used


# ---------------------------------------------------------------- foolsgold


def ref_foolsgold_weights(h: np.ndarray, kappa: float = 1.0) -> list[float]:
    """Algorithm 1 of the paper by loops (the authors' zero diagonal)."""
    n = len(h)
    cs = [[0.0 if i == j else cosine(h[i], h[j]) for j in range(n)] for i in range(n)]
    v = [max(row) for row in cs]
    for i in range(n):
        for j in range(n):
            if i != j and v[j] > v[i]:
                cs[i][j] *= v[i] / v[j]
    alpha = [min(1.0, max(0.0, 1 - max(row))) for row in cs]
    top = max(alpha)
    if top == 0:
        return [0.0] * n
    weights = []
    for a in (a / top for a in alpha):
        if a >= 1:
            weights.append(1.0)
        elif a <= 0:
            weights.append(0.0)
        else:
            weights.append(min(1.0, max(0.0, kappa * (math.log(a / (1 - a)) + 0.5))))
    return weights


def test_foolsgold_rounds_match_loop_reference() -> None:
    """Four rounds: each round's weights come from the summed histories, the update is the
    weighted mean of that round's updates. Clients 0 and 1 are sybils with one objective."""
    n, d = 7, 5
    agg = aggregators.get("foolsgold")
    history = np.zeros((n, d))
    target = randn(d, seed=20).numpy()
    for r in range(1, 5):
        x = randn(n, d, seed=20 + r)
        x[:2] = torch.from_numpy(target) + 0.05 * randn(2, d, seed=40 + r)
        out = agg(x, ctx_for(n, 2, r=r))
        history += x.numpy()
        w = ref_foolsgold_weights(history)
        want = sum(wi * row for wi, row in zip(w, x.numpy(), strict=True)) / sum(w)
        np.testing.assert_allclose(out.scores["weight"].numpy(), w, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(out.update.numpy(), want, rtol=1e-9)
        assert out.accepted.tolist() == [wi > 0 for wi in w]
    assert not out.accepted[0] and not out.accepted[1]


def test_foolsgold_by_hand() -> None:
    # two identical histories (cosine 1) and one orthogonal: v = (1, 1, 0); pardoning scales
    # client 2's similarities by 0; alpha = (0, 0, 1) -> weights (0, 0, 1): the update is (0, 1)
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    out = aggregators.get("foolsgold")(x, ctx_for(3, 1))
    assert out.scores["weight"].tolist() == [0.0, 0.0, 1.0]
    assert out.update.tolist() == [0.0, 1.0]
    assert out.accepted.tolist() == [False, False, True]


def test_foolsgold_keys_history_by_client_id() -> None:
    """Rows in a different order with their ids give the same weights, client by client."""
    n, d = 6, 4
    a, b = aggregators.get("foolsgold"), aggregators.get("foolsgold")
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    for r in range(1, 4):
        x = randn(n, d, seed=50 + r)
        x[[1, 4]] = randn(d, seed=60)  # two sybils
        one = a(x, ctx_for(n, 1, r=r))
        two = b(x[perm], ctx_for(n, 1, r=r, ids=perm))
        torch.testing.assert_close(two.scores["weight"], one.scores["weight"][perm])
        torch.testing.assert_close(two.update, one.update)


def test_foolsgold_state_round_trip_and_repeated_round() -> None:
    """A run saved after round 2 (whose round 2 was called twice: the last call counts) and
    resumed through the safe reader gives the uninterrupted run's rounds 3-5 bit for bit."""
    n, d = 6, 5
    xs = [randn(n, d, seed=70 + r) for r in range(5)]
    whole = aggregators.get("foolsgold")
    outs = [whole(x, ctx_for(n, 1, r=r + 1)) for r, x in enumerate(xs)]
    half = aggregators.get("foolsgold")
    half(xs[0], ctx_for(n, 1, r=1))
    half(xs[1] * 3, ctx_for(n, 1, r=2))
    again = half(xs[1], ctx_for(n, 1, r=2))  # round 2 again: replaces the first call
    assert torch.equal(again.update, outs[1].update)
    resumed = aggregators.get("foolsgold")
    resumed.load_state_dict(saved_and_loaded(half.state_dict()))
    for r in range(2, 5):
        got = resumed(xs[r], ctx_for(n, 1, r=r + 1))
        assert torch.equal(got.update, outs[r].update)
        assert torch.equal(got.scores["weight"], outs[r].scores["weight"])


def test_foolsgold_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="kappa must be > 0, got 0.0"):
        aggregators.get("foolsgold", kappa=0.0)
    with pytest.raises(AggregatorError, match="needs at least one client, got n=0"):
        aggregators.get("foolsgold").check(0, 0)
    with pytest.raises(AggregatorError, match="saved history must be a 2-D float tensor"):
        aggregators.get("foolsgold").load_state_dict({"history": [1.0], "start": None})


# ---------------------------------------------------------------- caf


def ref_caf(x: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    """CAF by loops in the d-dimensional space: the weighted covariance built from outer
    products, its top eigenpair by NumPy, tau per client; the max over positive weights."""
    n = len(x)
    c = np.ones(n)
    best, best_lam = c.copy(), math.inf
    while f > 0 and c.sum() > n - 2 * f:
        s = c.sum()
        mu = sum(c[i] * x[i] for i in range(n)) / s
        cov = sum(c[i] * np.outer(x[i] - mu, x[i] - mu) for i in range(n)) / s
        values, vectors = np.linalg.eigh(cov)
        if values[-1] < best_lam:
            best, best_lam = c.copy(), values[-1]
        tau = [float(np.dot(x[i] - mu, vectors[:, -1])) ** 2 for i in range(n)]
        top = max(tau[i] for i in range(n) if c[i] > 0)
        c = np.array([max(0.0, c[i] * (1 - tau[i] / top)) for i in range(n)])
    return sum(best[i] * x[i] for i in range(n)) / best.sum(), best


@pytest.mark.parametrize(("n", "f", "d", "seed"), [(7, 2, 4, 0), (10, 3, 6, 1), (9, 4, 3, 2)])
def test_caf_matches_loop_reference(n: int, f: int, d: int, seed: int) -> None:
    x = randn(n, d, seed=seed)
    x[:f] += randn(d, seed=seed + 10) * 4  # a shifted group
    out = aggregators.get("caf")(x, ctx_for(n, f))
    want, weights = ref_caf(x.numpy(), f)
    np.testing.assert_allclose(out.update.numpy(), want, rtol=1e-9)
    np.testing.assert_allclose(out.scores["weight"].numpy(), weights, rtol=1e-9, atol=1e-12)
    assert out.accepted.tolist() == (weights > 0).tolist()


def test_caf_by_hand() -> None:
    # step 1: mean 3, tau = 9, 4, 1, 36 -> c = (3/4, 8/9, 35/36, 0), sum 47/18 > n - 2f = 2;
    # step 2 has the smaller eigenvalue, its mean (17/6) / (47/18) = 51/47, then sum(c) < 2
    x = torch.tensor([[0.0], [1.0], [2.0], [9.0]], dtype=torch.float64)
    out = aggregators.get("caf")(x, ctx_for(4, 1))
    assert out.update.item() == pytest.approx(51 / 47, rel=1e-12)
    np.testing.assert_allclose(out.scores["weight"].numpy(), [3 / 4, 8 / 9, 35 / 36, 0], rtol=1e-12)
    assert out.accepted.tolist() == [True, True, True, False]


def test_caf_f_zero_is_the_mean_and_limits() -> None:
    x = randn(5, 3, seed=3)
    torch.testing.assert_close(aggregators.get("caf")(x, ctx_for(5, 0)).update, x.mean(0))
    with pytest.raises(
        AggregatorError, match=r"caf: needs f >= 0 and n > 2f clients, got n=4, f=2"
    ):
        aggregators.get("caf").check(4, 2)
    aggregators.get("caf").check(5, 2)


# ---------------------------------------------------------------- smea


def ref_smea(x: np.ndarray, f: int) -> list[int]:
    """Every (n - f)-subset's covariance from outer products; the first smallest top
    eigenvalue wins."""
    n = len(x)
    best, best_value = None, math.inf
    for subset in itertools.combinations(range(n), n - f):
        rows = x[list(subset)]
        mu = rows.mean(0)
        cov = sum(np.outer(r - mu, r - mu) for r in rows) / len(rows)
        value = np.linalg.eigvalsh(cov)[-1]
        if value < best_value:
            best, best_value = list(subset), value
    assert best is not None
    return best


@pytest.mark.parametrize(("n", "f", "d", "seed"), [(7, 2, 4, 0), (9, 3, 2, 1), (6, 0, 3, 2)])
def test_smea_matches_subset_loop_reference(n: int, f: int, d: int, seed: int) -> None:
    x = randn(n, d, seed=seed)
    x[0] += 3.0
    out = aggregators.get("smea")(x, ctx_for(n, f))
    chosen = ref_smea(x.numpy(), f)
    assert out.accepted.nonzero().flatten().tolist() == chosen
    np.testing.assert_allclose(out.update.numpy(), x.numpy()[chosen].mean(0), rtol=1e-12)


def test_smea_by_hand() -> None:
    # 1-D, keep 3 of 5: {0, 1, 2} has variance 2/3, every other triple more -> mean 1
    x = torch.tensor([[9.0], [0.0], [10.0], [1.0], [2.0]], dtype=torch.float64)
    out = aggregators.get("smea")(x, ctx_for(5, 2))
    assert out.update.tolist() == [1.0]
    assert out.accepted.tolist() == [False, True, False, True, True]
    assert out.scores["eigenvalue"][1].item() == pytest.approx(2 / 3, rel=1e-12)


def test_smea_refuses_small_n_and_too_many_subsets() -> None:
    with pytest.raises(AggregatorError, match=r"smea: needs n > 2f clients, got n=6, f=3"):
        aggregators.get("smea").check(6, 3)
    with pytest.raises(AggregatorError, match=r"C\(n=40, f=5\) = 658008 subsets exceeds"):
        aggregators.get("smea").check(40, 5)
    aggregators.get("smea", max_subsets=10**6).check(40, 5)
    aggregators.get("smea").check(23, 6)  # the documented bound: n = 23 allows f <= 6
    with pytest.raises(ValueError, match="max_subsets must be >= 1, got 0"):
        aggregators.get("smea", max_subsets=0)


# ---------------------------------------------------------------- fldetector


def ref_bfgs_matrix(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The BFGS Hessian estimate by its recursion from B_0 = sigma I, one pair at a time."""
    sigma = float(y[-1] @ s[-1]) / float(s[-1] @ s[-1])
    b = sigma * np.eye(s.shape[1])
    for si, yi in zip(s, y, strict=True):
        bs = b @ si
        b = b - np.outer(bs, bs) / float(si @ bs) + np.outer(yi, yi) / float(yi @ si)
    return b


@pytest.mark.parametrize(("k", "d", "seed"), [(1, 4, 0), (3, 6, 1), (5, 8, 2)])
def test_lbfgs_hvp_matches_the_bfgs_recursion(k: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(d, d))
    hessian = q @ q.T + np.eye(d)  # positive definite: every pair has y . s > 0
    s = rng.normal(size=(k, d))
    y = s @ hessian
    v = rng.normal(size=d)
    got = lbfgs_hvp(torch.from_numpy(s), torch.from_numpy(y), torch.from_numpy(v))
    assert got is not None
    np.testing.assert_allclose(got.numpy(), ref_bfgs_matrix(s, y) @ v, rtol=1e-9, atol=1e-10)


def ref_kmeans_cost(x: list[float], k: int) -> float:
    """Optimal k-means cost over every labelling of the points (all k labels used)."""
    best = math.inf
    for labels in itertools.product(range(k), repeat=len(x)):
        if len(set(labels)) < k:
            continue
        cost = 0.0
        for c in range(k):
            members = [v for v, lab in zip(x, labels, strict=True) if lab == c]
            mean = sum(members) / len(members)
            cost += sum((v - mean) ** 2 for v in members)
        best = min(best, cost)
    return best


def test_kmeans_1d_costs_match_brute_force() -> None:
    points = torch.rand(4, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    points[1, :3] += 5.0  # a clustered row
    got = kmeans_1d_costs(points, 3)
    for b in range(4):
        for k in (1, 2, 3):
            want = ref_kmeans_cost(points[b].tolist(), k)
            assert float(got[b, k - 1]) == pytest.approx(want, rel=1e-9, abs=1e-12)


def ref_gap_clusters(x: list[float], uniform: np.ndarray, k_max: int) -> int:
    """Tibshirani's rule by loops on min-max scaled scores and the given reference draws."""
    lo, hi = min(x), max(x)
    scaled = [(v - lo) / (hi - lo) for v in x]
    k_top = min(k_max, len(x) - 1, len(set(x)))
    gap, spread = [], []
    for k in range(1, k_top + 1):
        logs = [math.log(ref_kmeans_cost(list(row), k)) for row in uniform]
        mean = sum(logs) / len(logs)
        sd = math.sqrt(sum((v - mean) ** 2 for v in logs) / len(logs))
        gap.append(mean - math.log(ref_kmeans_cost(scaled, k)))
        spread.append(sd * math.sqrt(1 + 1 / len(logs)))
    for k in range(1, k_top):
        if gap[k - 1] >= gap[k] - spread[k]:
            return k
    return k_top


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_gap_statistic_matches_loop_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=6)
    if seed % 2:
        x[:2] += 3.0  # two clear clusters
    refs = 5
    uniform = torch.rand(
        refs, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    got = gap_clusters(torch.from_numpy(x), torch.Generator().manual_seed(seed), 3, refs)
    assert got == ref_gap_clusters(x.tolist(), uniform.numpy(), 3)
    if seed % 2:
        assert got >= 2


def test_upper_cluster_matches_brute_force() -> None:
    rng = np.random.default_rng(4)
    for _ in range(20):
        x = rng.uniform(size=7)
        best, mask = math.inf, None
        for labels in itertools.product([False, True], repeat=7):
            if all(labels) or not any(labels):
                continue
            high = [v for v, lab in zip(x, labels, strict=True) if lab]
            low = [v for v, lab in zip(x, labels, strict=True) if not lab]
            cost = sum((v - np.mean(high)) ** 2 for v in high)
            cost += sum((v - np.mean(low)) ** 2 for v in low)
            if cost < best and np.mean(high) > np.mean(low):
                best, mask = cost, list(labels)
        assert upper_cluster(torch.from_numpy(x)).tolist() == mask


@pytest.mark.parametrize("with_params", [True, False])
def test_fldetector_scores_by_hand(with_params: bool) -> None:
    """d = 1, one pair: B = y / s. With the model: w = 0, -1, -2; aggregates 2 then 11/3, so
    s = -1, y = 5/3, H v = 5/3; predictions (0, 1, 10) + 5/3 miss (2, 2, 13) by 1/3, 2/3, 4/3,
    scores 1/7, 2/7, 4/7. Without it, s = -2 (minus the first aggregate), v = -11/3: H v =
    55/18, misses 19/18, 37/18, 1/18, scores 19/57, 37/57, 1/57."""
    agg = aggregators.get("fldetector", window=2, history=1)
    rounds = [([1.0, 2.0, 3.0], 0.0), ([0.0, 1.0, 10.0], -1.0), ([2.0, 2.0, 13.0], -2.0)]
    for r, (values, w) in enumerate(rounds, start=1):
        params = torch.tensor([w], dtype=torch.float64) if with_params else None
        x = torch.tensor(values, dtype=torch.float64)[:, None]
        out = agg(x, ctx_for(3, 0, r=r, params=params))
    want = [1 / 7, 2 / 7, 4 / 7] if with_params else [19 / 57, 37 / 57, 1 / 57]
    np.testing.assert_allclose(out.scores["suspicion"].numpy(), want, rtol=1e-12)
    assert out.update.tolist() == pytest.approx([17 / 3]) and out.accepted.all()


def quadratic_federation(
    agg: aggregators.Aggregator, rounds: int, byz: list[int], with_params: bool = True,
    start: int = 1, w: torch.Tensor | None = None,
) -> tuple[list, torch.Tensor]:  # fmt: skip
    """Clients with gradients A (w - c_i) of quadratics, attackers sending fresh noise each
    round; the model steps with the aggregate. Returns every round's result and the model."""
    n, d = 12, 8
    a = torch.diag(torch.linspace(0.5, 2.0, d, dtype=torch.float64))
    centres = 0.3 * randn(n, d, seed=90)
    w = torch.zeros(d, dtype=torch.float64) if w is None else w
    outs = []
    for r in range(start, start + rounds):
        updates = (w[None, :] - centres) @ a
        if byz:
            updates[byz] = 5.0 * randn(len(byz), d, seed=100 + r)
        ctx = ctx_for(n, len(byz), r=r, seed=r, params=w.clone() if with_params else None)
        outs.append(agg(updates, ctx))
        w = w - 0.1 * outs[-1].update
    return outs, w


@pytest.mark.parametrize("with_params", [True, False])
def test_fldetector_flags_the_attackers_and_then_excludes_them(with_params: bool) -> None:
    byz = [2, 7, 9]
    outs, _ = quadratic_federation(
        aggregators.get("fldetector", window=3, history=3), 10, byz, with_params
    )
    assert outs[0].accepted.all()  # nothing to predict from yet
    last = outs[-1]
    honest = [i for i in range(12) if i not in byz]
    assert last.accepted.tolist() == [i not in byz for i in range(12)]
    first = next(i for i, o in enumerate(outs) if not o.accepted.all())
    judged = outs[first].scores["suspicion"]  # the scores the detection saw
    assert float(judged[byz].min()) > float(judged[honest].max())
    assert all(o.accepted.tolist() == last.accepted.tolist() for o in outs[first:])  # for good
    assert last.scores["suspicion"][byz].isnan().all()  # no longer scored


def test_fldetector_flags_nobody_without_attackers() -> None:
    outs, _ = quadratic_federation(aggregators.get("fldetector", window=3, history=3), 12, [])
    assert all(o.accepted.all() for o in outs)


def test_fldetector_state_round_trip() -> None:
    """Saved after round 4 (before any detection) and resumed through the safe reader: rounds
    5-10, detection included, bit for bit."""
    byz = [2, 7, 9]
    whole, _ = quadratic_federation(aggregators.get("fldetector", window=3, history=3), 10, byz)
    half = aggregators.get("fldetector", window=3, history=3)
    _, w = quadratic_federation(half, 4, byz)
    resumed = aggregators.get("fldetector", window=3, history=3)
    resumed.load_state_dict(saved_and_loaded(half.state_dict()))
    rest, _ = quadratic_federation(resumed, 6, byz, start=5, w=w)
    assert not rest[-1].accepted[byz].any()
    for got, want in zip(rest, whole[4:], strict=True):
        assert torch.equal(got.update, want.update) and torch.equal(got.accepted, want.accepted)
        torch.testing.assert_close(
            got.scores["suspicion"], want.scores["suspicion"], rtol=0, atol=0, equal_nan=True
        )


def test_fldetector_refusals() -> None:
    with pytest.raises(AggregatorError, match=r"trims f=2 values from each end of n=4"):
        aggregators.get("fldetector", base="trimmed_mean").check(4, 2)
    aggregators.get("fldetector").check(4, 2)  # the mean has no limit
    with pytest.raises(ValueError, match="window must be >= 1, got 0"):
        aggregators.get("fldetector", window=0)
    with pytest.raises(ValueError, match="k_max must be >= 2, got 1"):
        aggregators.get("fldetector", k_max=1)
    with pytest.raises(ValueError, match="aggregator.base"):
        aggregators.get("fldetector", base="krum")
    with pytest.raises(AggregatorError, match="saved state must have the fields"):
        aggregators.get("fldetector").load_state_dict({"state": {"prev": torch.zeros(1)}})


# ---------------------------------------------------------------- every new rule


@pytest.mark.parametrize("name", RULES)
def test_nan_row_is_ignored_like_a_missing_client(name: str) -> None:
    """A NaN row is dropped before the rule (sanitize): the result is the rule on the other
    rows with f lowered by one, and the NaN client is not accepted."""
    n, f, d = 9, 2, 12
    x = randn(n, d, seed=11)
    bad = x.clone()
    bad[4, 3] = float("nan")
    out = aggregators.get(name)(bad, ctx_for(n, f))
    rest = torch.cat([x[:4], x[5:]])
    want = aggregators.get(name)(rest, ctx_for(n - 1, f - 1))
    assert not out.accepted[4]
    assert torch.equal(out.update, want.update)
    assert torch.cat([out.accepted[:4], out.accepted[5:]]).tolist() == want.accepted.tolist()


@pytest.mark.parametrize("name", ["flame", "foolsgold", "caf", "smea"])
def test_a_few_huge_rows_do_not_move_the_aggregate(name: str) -> None:
    """(FLDetector needs a history first: its multi-round test above.)"""
    n, f, d = 15, 3, 50
    honest = 1.0 + 0.1 * randn(n - f, d, seed=12)
    x = torch.cat([honest, torch.full((f, d), -1e3, dtype=torch.float64)])
    mean = honest.mean(0)
    out = aggregators.get(name)(x, ctx_for(n, f))
    assert float((out.update - mean).norm()) < 0.1 * float(mean.norm())
    assert not out.accepted[n - f :].any()


@pytest.mark.parametrize("name", RULES)
def test_each_rule_runs_end_to_end_from_the_cli(name: str, tmp_path: Path) -> None:
    """Ten rounds of the digits demo through the CLI. FLDetector gets a short window and the
    median as its base rule (robust while it gathers scores) against Gaussian noise, which
    its predictions expose: the attacker is excluded by the last round."""
    attack, params = "sign_flip", {}
    if name == "fldetector":
        attack, params = "gaussian", {"window": 3, "history": 3, "base": "median"}
    cfg = tiny_config(
        rounds=10,
        clients={"n": 8, "batch": 0.5, "sample": 8},
        attack={"name": attack, "byzantine": [2]},
        aggregator={"name": name, **params},
    )
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps(cfg))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_test_accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert f'name = "{name}"' in (out / "config.toml").read_text()
    if name == "fldetector":
        last = (out / "decisions.csv").read_text().splitlines()[-8:]  # round 10, clients 0-7
        assert [row.split(",")[3] for row in last] == ["1", "1", "0", "1", "1", "1", "1", "1"]
