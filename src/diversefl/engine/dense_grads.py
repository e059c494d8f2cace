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

import torch
from torch import Tensor, nn

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


def dense_grads(fm: FlatModel, theta: Tensor, x: Tensor, y: Tensor, coef: Tensor) -> Tensor:
    """Gradients ``[n, d]`` of each client's loss ``sum_k coef[j, k] * CE(f(x[j, k]), y[j, k])``
    for one shared model ``theta`` (``[d]``); ``x`` is ``[n, m, ...]``, ``coef`` ``[n, m]``
    (the padding mask, the 1/m of the mean loss and any loss scale folded together)."""
    n, m = y.shape
    params = list(fm.unflatten(theta).values())
    h = x.reshape(n * m, -1)
    inputs: list[Tensor] = []  # the input of every Linear, kept for its weight gradient
    weights: list[Tensor] = []
    relu_after: list[bool] = []  # whether a ReLU follows Linear i (its output is then h > 0)
    k = 0
    for layer in fm.module:
        if isinstance(layer, nn.Linear):
            w, b = params[k], params[k + 1]
            k += 2
            inputs.append(h)
            weights.append(w)
            relu_after.append(False)
            h = torch.addmm(b, h, w.t())
        elif isinstance(layer, nn.ReLU):
            h = torch.relu(h)
            relu_after[-1] = True
    # d loss / d logits = coef * (softmax - onehot)
    dz = torch.softmax(h, dim=1)
    dz[torch.arange(n * m, device=dz.device), y.reshape(-1)] -= 1.0
    dz.mul_(coef.reshape(-1, 1).to(dz.dtype))
    pieces: list[Tensor] = []
    for i in range(len(weights) - 1, -1, -1):
        a, out = inputs[i], dz.shape[1]
        dz3 = dz.view(n, m, out)
        pieces.append(dz3.sum(dim=1))  # bias
        pieces.append(torch.bmm(dz3.transpose(1, 2), a.view(n, m, -1)).reshape(n, -1))  # weight
        if i > 0:
            dz = dz @ weights[i]
            if relu_after[i - 1]:
                dz.mul_(a > 0)  # a = relu(previous Linear's output): its derivative is a > 0
    pieces.reverse()
    return torch.cat(pieces, dim=1)
