"""DiverseFL's per-client test on constructed examples, against a plain-Python reference."""

from __future__ import annotations

import math

import torch

from diversefl import aggregators
from diversefl.aggregators import RoundContext


def _ctx(n: int, guiding: torch.Tensor, f: int = 0) -> RoundContext:
    return RoundContext(
        round=1, n=n, f=f, generator=torch.Generator().manual_seed(0), guiding_fn=lambda: guiding
    )


def _reference(guiding: list[list[float]], updates: list[list[float]], eps1: float, eps2: float):
    accepted, c1s, c2s = [], [], []
    for g, z in zip(guiding, updates, strict=True):
        dot = sum(a * b for a, b in zip(g, z, strict=True))
        c1 = (dot > 0) - (dot < 0)
        c2 = math.sqrt(sum(b * b for b in z)) / math.sqrt(sum(a * a for a in g))
        c1s.append(c1)
        c2s.append(c2)
        accepted.append(c1 > 0 and eps1 < c2 < eps2)
    kept = [z for z, a in zip(updates, accepted, strict=True) if a]
    mean = [sum(col) / len(kept) for col in zip(*kept, strict=True)] if kept else None
    return accepted, c1s, c2s, mean


def test_hand_example():
    guiding = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [3.0, 4.0]])
    updates = torch.tensor(
        [
            [1.5, 0.2],  # same direction, ratio ~1.51: accepted
            [0.0, -2.0],  # opposite direction (C1 < 0): rejected
            [4.0, 4.0],  # ratio 4 > eps2: rejected
            [1.0, 1.0],  # dot 7 > 0 but ratio 0.28 < eps1: rejected
        ]
    )
    out = aggregators.get("diversefl")(updates, _ctx(4, guiding))
    assert out.accepted.tolist() == [True, False, False, False]
    torch.testing.assert_close(out.update, torch.tensor([1.5, 0.2]))
    assert out.scores["c1"].tolist() == [1.0, -1.0, 1.0, 1.0]
    torch.testing.assert_close(out.scores["c2"][3], torch.tensor(math.sqrt(2) / 5))


def test_matches_reference_on_random_inputs():
    gen = torch.Generator().manual_seed(4)
    for n, d in [(5, 3), (23, 50), (9, 200)]:
        guiding = torch.randn(n, d, generator=gen)
        updates = guiding * torch.rand(n, 1, generator=gen) * 3 + torch.randn(n, d, generator=gen)
        acc, c1, c2, mean = _reference(guiding.tolist(), updates.tolist(), 0.5, 2.0)
        out = aggregators.get("diversefl")(updates, _ctx(n, guiding))
        assert out.accepted.tolist() == acc
        assert out.scores["c1"].tolist() == c1
        torch.testing.assert_close(out.scores["c2"], torch.tensor(c2), rtol=1e-5, atol=1e-6)
        if mean is not None:
            torch.testing.assert_close(out.update, torch.tensor(mean), rtol=1e-5, atol=1e-6)


def test_rejects_the_papers_attacks_and_accepts_honest():
    gen = torch.Generator().manual_seed(0)
    n, d, f = 10, 500, 4
    true = torch.randn(n, d, generator=gen)
    guiding = true + 0.3 * torch.randn(n, d, generator=gen)  # a noisy estimate, as on a sample
    updates = true.clone()
    ctx = _ctx(n, guiding, f)
    from diversefl import attacks

    updates[0] = attacks.get("sign_flip")(true[f:], true[:1], ctx)
    updates[1] = attacks.get("gaussian", sigma=1e4)(true[f:], true[1:2], ctx)
    updates[2] = attacks.get("same_value", sigma=1e4)(true[f:], true[2:3], ctx)
    updates[3] = float("nan")
    out = aggregators.get("diversefl")(updates, ctx)
    assert out.accepted.tolist() == [False] * f + [True] * (n - f)
    torch.testing.assert_close(out.update, true[f:].mean(0))
    assert torch.isfinite(out.update).all()


def test_all_rejected_gives_zero_update_and_permutation_invariance():
    guiding = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    out = aggregators.get("diversefl")(-guiding, _ctx(6, guiding))
    assert not out.accepted.any() and torch.count_nonzero(out.update) == 0
    updates = guiding * torch.tensor([1.0, -1.0, 1.2, 5.0, 0.9, 1.1])[:, None]
    base = aggregators.get("diversefl")(updates, _ctx(6, guiding))
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    permuted = aggregators.get("diversefl")(updates[perm], _ctx(6, guiding[perm]))
    torch.testing.assert_close(permuted.update, base.update)
    assert permuted.accepted.tolist() == base.accepted[perm].tolist()
