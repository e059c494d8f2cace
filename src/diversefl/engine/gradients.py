"""Per-client mini-batch gradients for all clients in one batched call (torch.func), with a
plain per-client loop behind the same signature as the reference the tests compare against."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad, vmap

from diversefl.engine.dense_grads import dense_grads
from diversefl.engine.params import FlatModel


def _client_loss(
    fm: FlatModel, theta: Tensor, x: Tensor, y: Tensor, w: Tensor, scale: Tensor
) -> Tensor:
    """Weighted mean cross-entropy of one client's batch (w masks padding; eq. 3's 1/m),
    times ``scale`` (1 for the paper's mean loss, m for a summed-loss convention)."""
    params = fm.unflatten(theta)
    logits = functional_call(fm.module, (params, fm.buffers), (x,))
    losses = F.cross_entropy(logits, y, reduction="none")
    return scale * (losses * w).sum() / w.sum().clamp_min(1.0)


def batched_grads(
    fm: FlatModel,
    theta: Tensor,
    x: Tensor,
    y: Tensor,
    w: Tensor | None = None,
    clients_per_chunk: int | None = None,
    scale: Tensor | None = None,
    method: str = "auto",
) -> Tensor:
    """Gradients ``[n, d]`` of each client's mean batch loss.

    ``theta`` is ``[d]`` (one global model, as in FedSGD) or ``[n, d]`` (one model per client,
    as in RSA); ``x`` is ``[n, m, ...]``, ``y`` ``[n, m]``, ``w`` ``[n, m]`` (1 = real example,
    0 = padding for clients with smaller batches), ``scale`` ``[n]`` multiplies each client's
    loss (default 1). The client axis is processed in chunks of
    ``clients_per_chunk`` to bound memory for large models.

    ``method``: "vmap" (``torch.func`` on any model), "dense" (the hand-written backward of
    :mod:`diversefl.engine.dense_grads`, for Flatten/Linear/ReLU networks and one shared
    model) or "auto" (dense where it applies, else vmap).
    """
    n = x.shape[0]
    if w is None:
        w = torch.ones(y.shape, dtype=x.dtype, device=x.device)
    if scale is None:
        scale = torch.ones(n, dtype=x.dtype, device=x.device)
    per_client_theta = theta.dim() == 2
    if method not in ("auto", "vmap", "dense"):
        raise ValueError(f"method must be 'auto', 'vmap' or 'dense', got {method!r}")
    dense_ok = not per_client_theta and fm.dense
    if method == "dense" and not dense_ok:
        raise ValueError("method='dense' needs a Flatten/Linear/ReLU model and one shared theta")
    if dense_ok and method != "vmap":
        coef = scale[:, None] * w / w.sum(dim=1, keepdim=True).clamp_min(1.0)
        chunk = clients_per_chunk or n
        grads = torch.empty(n, fm.dim, dtype=theta.dtype, device=theta.device)
        for s in range(0, n, chunk):  # each chunk writes its rows in place: no final cat
            sl = slice(s, s + chunk)
            dense_grads(fm, theta, x[sl], y[sl], coef[sl], out=grads[sl])
        return grads
    fn = vmap(
        grad(lambda t, xb, yb, wb, sb: _client_loss(fm, t, xb, yb, wb, sb)),
        in_dims=(0 if per_client_theta else None, 0, 0, 0, 0),
        randomness="different",
    )
    chunk = clients_per_chunk or n
    out = []
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        t = theta[sl] if per_client_theta else theta
        out.append(fn(t, x[sl], y[sl], w[sl], scale[sl]))
    return out[0] if len(out) == 1 else torch.cat(out)


def loop_grads(
    fm: FlatModel,
    theta: Tensor,
    x: Tensor,
    y: Tensor,
    w: Tensor | None = None,
    scale: Tensor | None = None,
) -> Tensor:
    """Reference: the same gradients with one ``nn.Module`` and autograd, client by client."""
    module = fm.module
    rows = []
    for j in range(x.shape[0]):
        t = theta[j] if theta.dim() == 2 else theta
        fm.load_into_module(t)
        module.zero_grad(set_to_none=True)
        wj = torch.ones(y.shape[1]) if w is None else w[j]
        keep = wj > 0
        loss = F.cross_entropy(module(x[j][keep]), y[j][keep], reduction="sum") / keep.sum()
        if scale is not None:
            loss = loss * scale[j]
        loss.backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in module.parameters()]))
    return torch.stack(rows)
