"""Per-client gradients of K dense models at once, on one shared batch: the arithmetic of
packed federations (``diversefl sweep --pack K``).

Cells of a sweep that share dataset, partition, batch size and seed draw the same mini-batches
every round; only their models (and a data attack's labels) differ. The first Linear layer's
input is then the same for all K models, so its forward pass is one matmul against the K
weight matrices side by side and its weight gradients one batched matmul per client over the
K models' output signals: a softmax regression's 10-column matmuls become 10K-column ones,
which BLAS runs several times faster per column. Deeper layers are batched over the K models.
The results equal :func:`~diversefl.engine.dense_grads.dense_grads` per model up to float
rounding (the wider matmuls sum in another order); the tests bound the difference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from diversefl.engine.params import FlatModel


def packed_dense_grads(
    fm: FlatModel, thetas: Tensor, x: Tensor, ys: Tensor, coef: Tensor
) -> Tensor:
    """Gradients ``[K, n, d]``: model k's gradient of client j's loss
    ``sum_i coef[j, i] * CE(f_k(x[j, i]), ys[k, j, i])``.

    ``thetas`` is ``[K, d]`` (one flat model per packed cell), ``x`` ``[n, m, ...]`` the shared
    batch, ``ys`` ``[K, n, m]`` each cell's labels (a label-flipping attack changes only its
    own cell's), ``coef`` ``[n, m]`` the padding mask, 1/m and loss scale folded together.
    ``fm`` must satisfy :func:`~diversefl.engine.dense_grads.is_dense`."""
    k_models, n, m = ys.shape
    if thetas.shape != (k_models, fm.dim):
        raise ValueError(f"thetas must be [{k_models}, {fm.dim}], got {tuple(thetas.shape)}")
    rows = n * m
    params = list(fm.unflatten(thetas).values())  # each [K, *shape]
    offsets = [0]
    for numel in fm.numels:
        offsets.append(offsets[-1] + numel)
    out = torch.empty(k_models, n, fm.dim, dtype=thetas.dtype, device=thetas.device)
    h = x.reshape(rows, -1)
    inputs: list[Tensor] = []  # each Linear's input: [R, in] (shared, first) or [K, R, in]
    weights: list[Tensor] = []
    relu_after: list[bool] = []
    owned = False  # h was made here (not the caller's x), so a ReLU may overwrite it
    for layer in cast(nn.Sequential, fm.module):
        if isinstance(layer, nn.Linear):
            w, b = params[len(weights) * 2], params[len(weights) * 2 + 1]
            inputs.append(h)
            weights.append(w)
            relu_after.append(False)
            h, owned = _linear(h, w, b, k_models), True
        elif isinstance(layer, nn.ReLU):
            h = torch.relu_(h) if owned else torch.relu(h)
            if relu_after:
                relu_after[-1] = True
    # softmax over the few classes, written out: torch.softmax on a last dim of 10 is ~6x
    # slower than these three passes
    dz = h.sub_(h.amax(dim=2, keepdim=True)).exp_()  # [K, R, C]
    dz.div_(dz.sum(dim=2, keepdim=True))
    flat = dz.view(k_models * rows, -1)
    flat[torch.arange(k_models * rows, device=dz.device), ys.reshape(-1)] -= 1.0
    dz.mul_(coef.reshape(1, rows, 1).to(dz.dtype))
    for i in range(len(weights) - 1, -1, -1):
        width = dz.shape[2]
        w_at, b_at, end = offsets[2 * i], offsets[2 * i + 1], offsets[2 * i + 2]
        torch.sum(dz.view(k_models, n, m, width), dim=2, out=out[:, :, b_at:end])
        _weight_grads(dz, inputs[i], out, w_at, b_at, n, m)
        if i > 0:
            dz = torch.bmm(dz, weights[i])  # [K, R, in]
            if relu_after[i - 1]:
                dz = torch.ops.aten.threshold_backward(dz, inputs[i], 0.0)
    return out


def _linear(h: Tensor, w: Tensor, b: Tensor, k_models: int) -> Tensor:
    """``h @ w_k.T + b_k`` for every model k, as ``[K, R, out]``: one matmul against the K
    weight matrices side by side when ``h`` is the shared input ``[R, in]``, a batched one
    when it is already per model ``[K, R, in]``."""
    out_features = w.shape[1]
    if h.dim() == 2:
        z = torch.addmm(b.reshape(-1), h, w.reshape(k_models * out_features, -1).t())
        return z.view(h.shape[0], k_models, out_features).transpose(0, 1).contiguous()
    return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))


def _weight_grads(dz: Tensor, a: Tensor, out: Tensor, w_at: int, b_at: int, n: int, m: int) -> None:
    """Write every model's per-client weight gradients ``dz_kj.T @ a_kj`` into
    ``out[:, :, w_at:b_at]``."""
    k_models, _, width = dz.shape
    if a.dim() == 2:  # the shared input: one bmm per client over all K models' signals
        signal = dz.view(k_models, n, m, width).permute(1, 2, 0, 3).reshape(n, m, -1)
        grads = torch.bmm(signal.transpose(1, 2), a.view(n, m, -1))  # [n, K*out, in]
        out[:, :, w_at:b_at] = grads.view(n, k_models, -1).transpose(0, 1)
        return
    d = out.shape[2]
    target = out.view(k_models * n, d)[:, w_at:b_at].view(k_models * n, width, -1)
    torch.bmm(
        dz.view(k_models * n, m, width).transpose(1, 2), a.view(k_models * n, m, -1), out=target
    )


def packed_logits(fm: FlatModel, thetas: Tensor, x: Tensor) -> Tensor:
    """Logits ``[K, N, C]`` of the K dense models ``thetas`` ``[K, d]`` on the shared inputs
    ``x`` ``[N, ...]`` (the packed test pass)."""
    k_models = thetas.shape[0]
    params = list(fm.unflatten(thetas).values())
    h, owned, k = x.reshape(x.shape[0], -1), False, 0
    for layer in cast(nn.Sequential, fm.module):
        if isinstance(layer, nn.Linear):
            h, owned = _linear(h, params[k], params[k + 1], k_models), True
            k += 2
        elif isinstance(layer, nn.ReLU):
            h = torch.relu_(h) if owned else torch.relu(h)
    return h
