"""Guiding gradients on the two disjoint halves of each client's shared sample, the server-side
evidence DiverseFL's self-calibrating threshold (``min_cosine = "auto"``) reads each client's
noise floor from. Shared by the simulator and the Flower server, which hold the samples as the
same padded ``[n, S, ...]`` tensors (real rows first, in the sample's seeded order)."""

from __future__ import annotations

import torch
from torch import Tensor

from diversefl.engine.gradients import batched_grads
from diversefl.engine.local_training import local_pseudo_gradients
from diversefl.engine.params import FlatModel


def _positions(t: Tensor, start: int, width: int) -> Tensor:
    """Positions ``start, start + 2, ...`` of every row of ``t [n, S, ...]``, zero-padded to
    ``width`` positions."""
    part = t[:, start::2]
    missing = width - part.shape[1]
    if missing == 0:
        return part
    pad = torch.zeros((t.shape[0], missing, *t.shape[2:]), dtype=t.dtype, device=t.device)
    return torch.cat([part, pad], dim=1)


def split_halves(x: Tensor, y: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each client's sample rows split by position parity: examples ``[2n, ceil(S/2), ...]``,
    labels and weights ``[2n, ceil(S/2)]``, rows ``0..n-1`` the even positions of the clients'
    samples and rows ``n..2n-1`` the odd ones.

    The sample order is the seeded draw of the sample, so this is a fixed random split; the two
    halves are disjoint and together hold every sample row (a client with L real rows gets
    ceil(L/2) and floor(L/2): with L < 2 its second half is empty, weight 0, a zero gradient).
    Real rows stay first in each half (``w`` stays a prefix mask), padding has weight 0."""
    if not (x.shape[:2] == y.shape == w.shape):
        raise ValueError(
            f"split_halves: x {tuple(x.shape)}, y {tuple(y.shape)} and w {tuple(w.shape)} "
            "must share their [n, S] axes"
        )
    width = (w.shape[1] + 1) // 2
    halves = [torch.cat([_positions(t, 0, width), _positions(t, 1, width)]) for t in (x, y, w)]
    return halves[0], halves[1], halves[2]


def sample_guides(
    fm: FlatModel,
    theta: Tensor,
    x: Tensor,
    y: Tensor,
    w: Tensor,
    scale: Tensor,
    steps: Tensor | None,
    lr: float | None,
    chunk: int | None,
    method: str,
) -> Tensor:
    """Guiding gradients ``[k, d]`` on samples ``x [k, S, ...]`` at ``theta``: one gradient
    each (FedSGD), or with local training (``steps [k]``, step size ``lr``) the
    pseudo-gradients of ``steps[j]`` local steps, every step on the whole sample; the
    computation of the simulator's and the Flower server's ``guiding``."""
    if steps is None:
        return batched_grads(fm, theta, x, y, w, chunk, scale, method=method)
    if lr is None:
        raise ValueError("sample_guides: local training needs the local step size lr")
    per_client = "auto" if method == "dense" else method  # one model per client after step 0

    def grads_at(models: Tensor, s: int, rows: Tensor | None) -> Tensor:
        sel = slice(None) if rows is None else rows
        m = method if s == 0 else per_client
        return batched_grads(fm, models, x[sel], y[sel], w[sel], chunk, scale[sel], method=m)

    return local_pseudo_gradients(theta, grads_at, steps, lr)


def half_sample_guides(
    fm: FlatModel,
    theta: Tensor,
    x: Tensor,
    y: Tensor,
    w: Tensor,
    scale: Tensor,
    steps: Tensor | None,
    lr: float | None,
    chunk: int | None,
    method: str,
) -> Tensor:
    """Guiding gradients ``[2, n, d]`` on the two halves (:func:`split_halves`) of the samples
    ``x [n, S, ...]``, computed as the full guide is (:func:`sample_guides`: the same loss
    scale and, with local training, the same local steps), in one batched call of 2n rows."""
    n = x.shape[0]
    xh, yh, wh = split_halves(x, y, w)
    steps2 = None if steps is None else steps.repeat(2)
    grads = sample_guides(fm, theta, xh, yh, wh, scale.repeat(2), steps2, lr, chunk, method)
    return grads.view(2, n, -1)
