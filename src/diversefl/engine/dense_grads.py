"""Per-client gradients of plain dense networks (Flatten / Linear / ReLU, cross-entropy), with
the backward pass written out by hand.

All clients share one model in a FedSGD round, so the forward pass and the backward signal of
every layer are single big matmuls over the stacked ``[n * m, features]`` batch; only the weight
gradients are per client, one batched matmul (``bmm``) per layer. This is the same arithmetic
``vmap(grad(...))`` performs, without its dispatch and layout copies, which matters for the
paper's small models (softmax regression, the 2x200 MLP) where those overheads are a large part
of a round. The tests compare it with a per-client ``nn.Module`` loop.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import accumulate
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from diversefl.engine.params import FlatModel

_DENSE_TYPES = (nn.Flatten, nn.Linear, nn.ReLU)


def is_dense(module: nn.Module) -> bool:
    """True for an ``nn.Sequential`` of Flatten / Linear (with bias) / ReLU layers only, ending
    in a Linear, with no buffers: the networks :func:`dense_grads` handles."""
    if not isinstance(module, nn.Sequential) or len(module) == 0:
        return False
    layers = list(module)
    if not all(type(layer) in _DENSE_TYPES for layer in layers):
        return False
    if not isinstance(layers[-1], nn.Linear) or any(True for _ in module.buffers()):
        return False
    linears = [layer for layer in layers if isinstance(layer, nn.Linear)]
    if any(layer.bias is None for layer in linears):
        return False
    flatten_ok = all(
        isinstance(layer, nn.Flatten) and layer.start_dim == 1 and layer.end_dim == -1
        for layer in layers
        if isinstance(layer, nn.Flatten)
    )
    return flatten_ok and all(p.requires_grad for p in module.parameters())


def dense_grads(
    fm: FlatModel, theta: Tensor, x: Tensor, y: Tensor, coef: Tensor, out: Tensor | None = None
) -> Tensor:
    """Gradients ``[n, d]`` of each client's loss ``sum_k coef[j, k] * CE(f(x[j, k]), y[j, k])``
    for one shared model ``theta`` (``[d]``); ``x`` is ``[n, m, ...]``, ``coef`` ``[n, m]``
    (the padding mask, the 1/m of the mean loss and any loss scale folded together).

    Every layer's weight and bias gradients are written straight into their columns of the
    ``[n, d]`` result (``out`` when given, e.g. a slice of a bigger buffer), so no per-layer
    piece is concatenated afterwards: for the 2x200 MLP that copy alone was ~8% of the call.
    """
    n, m = y.shape
    out = _result(fm, theta, n, out)

    def write(dz: Tensor, a: Tensor, w_out: Tensor, b_out: Tensor) -> None:
        dz3 = dz.view(n, m, dz.shape[1])
        torch.sum(dz3, dim=1, out=b_out)  # bias
        torch.bmm(dz3.transpose(1, 2), a.view(n, m, -1), out=w_out)  # weight

    _backprop(fm, theta, x.reshape(n * m, -1), y.reshape(-1), coef.reshape(-1), out, write)
    return out


def dense_grads_ragged(
    fm: FlatModel,
    theta: Tensor,
    x: Tensor,
    y: Tensor,
    coef: Tensor,
    lengths: list[int],
    out: Tensor | None = None,
) -> Tensor:
    """:func:`dense_grads` for clients with batches of different sizes, without padding: ``x``
    ``[R, ...]``, ``y`` and ``coef`` ``[R]`` hold client 0's ``lengths[0]`` examples, then client
    1's, and so on. The forward and backward signals are one matmul per layer over all R
    examples; each client's weight gradient is one matmul over its own rows. Under a
    Dirichlet partition the 10% mini-batches differ by 5x, and padding (even in size groups)
    computes up to a quarter more examples than there are."""
    n = len(lengths)
    out = _result(fm, theta, n, out)
    bounds = list(accumulate(lengths, initial=0))
    if bounds[-1] == 0:  # no client has an example: every gradient is zero
        return out.zero_()

    def write(dz: Tensor, a: Tensor, w_out: Tensor, b_out: Tensor) -> None:
        for j in range(n):
            lo, hi = bounds[j], bounds[j + 1]
            torch.sum(dz[lo:hi], dim=0, out=b_out[j])  # bias
            torch.mm(dz[lo:hi].t(), a[lo:hi], out=w_out[j])  # weight

    _backprop(fm, theta, x.reshape(bounds[-1], -1), y, coef, out, write)
    return out


def _result(fm: FlatModel, theta: Tensor, n: int, out: Tensor | None) -> Tensor:
    if out is None:
        return torch.empty(n, fm.dim, dtype=theta.dtype, device=theta.device)
    if out.shape != (n, fm.dim) or out.stride(1) != 1:
        raise ValueError(f"out must be a row-major [{n}, {fm.dim}] view, got {tuple(out.shape)}")
    return out


def _backprop(
    fm: FlatModel,
    theta: Tensor,
    h: Tensor,
    y: Tensor,
    coef: Tensor,
    out: Tensor,
    write: Callable[[Tensor, Tensor, Tensor, Tensor], None],
) -> None:
    """Forward the stacked examples ``h`` ``[R, features]`` through the shared model, then walk
    back: ``write(dz, a, w_out, b_out)`` turns each Linear's output signal ``dz`` ``[R, out]``
    and input ``a`` ``[R, in]`` into the per-client weight (``w_out`` ``[n, out, in]``) and bias
    (``b_out`` ``[n, out]``) gradients, views into ``out``."""
    n = out.shape[0]
    params = list(fm.unflatten(theta).values())
    offsets = list(accumulate(fm.numels, initial=0))  # where each parameter starts in theta
    inputs: list[Tensor] = []  # the input of every Linear, kept for its weight gradient
    weights: list[Tensor] = []
    relu_after: list[bool] = []  # whether a ReLU follows Linear i (its output is then h > 0)
    owned = False  # h is a tensor made here (not the caller's x), so a ReLU may overwrite it
    k = 0
    for layer in cast(nn.Sequential, fm.module):  # is_dense(fm.module) holds here
        if isinstance(layer, nn.Linear):
            w, b = params[k], params[k + 1]
            k += 2
            inputs.append(h)
            weights.append(w)
            relu_after.append(False)
            h, owned = torch.addmm(b, h, w.t()), True
        elif isinstance(layer, nn.ReLU):
            h = torch.relu_(h) if owned else torch.relu(h)
            if relu_after:
                relu_after[-1] = True
    # d loss / d logits = coef * (softmax - onehot)
    rows = h.shape[0]
    dz = torch.softmax(h, dim=1)
    dz[torch.arange(rows, device=dz.device), y] -= 1.0
    dz.mul_(coef.reshape(-1, 1).to(dz.dtype))
    for i in range(len(weights) - 1, -1, -1):
        a, width = inputs[i], dz.shape[1]
        w_at, b_at, end = offsets[2 * i], offsets[2 * i + 1], offsets[2 * i + 2]
        w_out = out[:, w_at:b_at].view(n, width, -1)  # each client's [out, in] block, row-major
        write(dz, a, w_out, out[:, b_at:end])
        if i > 0:
            dz = dz @ weights[i]
            if relu_after[i - 1]:
                # a = relu(previous Linear's output): its derivative is a > 0, in one fused pass
                dz = torch.ops.aten.threshold_backward(dz, a, 0.0)
