"""Pure helpers for a user's own data: a seeded held-out test split and per-feature
standardisation with statistics of the training data."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["apply_standardization", "feature_stats", "held_out_split", "standardize_tensor"]


def held_out_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices of ``n`` examples: ``round(fraction * n)`` random ones
    (seeded) are held out, but never all of them: at least one stays for training."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"test fraction must be in (0, 1), got {fraction}")
    if n < 0:
        raise ValueError(f"number of examples must be >= 0, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    k = min(int(np.floor(fraction * n + 0.5)), max(n - 1, 0))
    return np.sort(order[k:]).astype(np.int64), np.sort(order[:k]).astype(np.int64)


def feature_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (population, in float64) over the rows of ``x``.
    A constant feature gets mean = its value and std = 1, so it standardises to exactly 0."""
    x64 = np.asarray(x, dtype=np.float64)
    if x64.shape[0] == 0:
        raise ValueError("cannot compute feature statistics of zero examples")
    mean = x64.mean(axis=0)
    std = x64.std(axis=0)
    constant = np.all(x64 == x64[0], axis=0)
    mean = np.where(constant, x64[0], mean)
    std = np.where(constant, 1.0, std)
    return mean, std


def apply_standardization(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` per feature, computed in float64, returned as float32."""
    out = (np.asarray(x, dtype=np.float64) - mean) / std
    return out.astype(np.float32)


def standardize_tensor(x: torch.Tensor, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """A float32 tensor of rows standardised as :func:`apply_standardization` does (on its
    device: the same numbers on the simulator, the server and each node)."""
    out = apply_standardization(x.detach().cpu().numpy(), mean, std)
    return torch.from_numpy(out).to(x.device)


def sample_stats(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """:func:`feature_stats` of the pooled one-time sample rows ``x [P, F]`` (the statistics
    of ``standardize = "samples"``), or ValueError when the rows are not a 2-D table."""
    if x.ndim != 2:
        raise ValueError(
            f"data.standardize = 'samples' standardises table features; these examples have "
            f"shape {tuple(x.shape[1:])}"
        )
    return feature_stats(x.detach().cpu().numpy())
