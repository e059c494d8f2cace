"""Per-client mini-batch gradients for all clients in one batched call (torch.func), with a
plain per-client loop behind the same signature as the reference the tests compare against."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad, vmap

from diversefl.engine.dense_grads import dense_grads, dense_grads_ragged
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


# batched_grads avoids padding (a dense model: the concatenated real examples; any other model,
# or a set clients_per_chunk or method="vmap": groups of similar batch size, see length_groups)
# when the padding exceeds this share of the real examples AND padded examples x parameters
# exceeds MIN_WASTED_WORK: either copies the batch once more, so it pays only where the wasted
# gradient work is large (benchmarks/unequal_batches.py, Dirichlet(0.5), n = 23: the MLP's
# mini-batches, 1.2e9, 1.33-1.41x faster; softmax's, 4.5e7, and the MLP's 1% samples, 1.1e8,
# no gain).
PADDING_TOLERANCE = 0.25
MIN_WASTED_WORK = 1 << 28
# batched_grads(compute=...) computes the wanted clients in calls of their own only when each
# such call has at least this many examples: BLAS may round a row differently in a call of
# very few rows (MKL on this project's machines does at 3 rows or fewer), and a skipped
# client must leave the others' gradients exactly as the full call computes them
MIN_SKIP_ROWS = 32


def length_buckets(
    lengths: Tensor, tolerance: float = PADDING_TOLERANCE
) -> list[tuple[Tensor, int]]:
    """Group clients by batch size so that padding each group to its longest batch wastes at
    most ``tolerance`` times the group's real examples: ``[(client indices, width), ...]``.

    Clients are taken longest first (ties in index order); a client joins the current group
    while ``width * (size + 1) <= (1 + tolerance) * (examples + its length)``. With unequal
    partitions (Dirichlet) one padded batch can be twice the real work; the groups bring it
    back to within ``tolerance``."""
    order = torch.sort(lengths.cpu(), descending=True, stable=True).indices.tolist()
    lens = lengths.cpu().tolist()
    buckets: list[tuple[list[int], int]] = []
    members: list[int] = []
    width = total = 0
    for j in order:
        if members and width * (len(members) + 1) <= (1 + tolerance) * (total + lens[j]):
            members.append(j)
            total += lens[j]
            continue
        if members:
            buckets.append((members, width))
        members, width, total = [j], int(lens[j]), int(lens[j])
    if members:
        buckets.append((members, width))
    device = lengths.device
    return [(torch.tensor(m, dtype=torch.long, device=device), w) for m, w in buckets]


def _prefix_lengths(w: Tensor) -> Tensor | None:
    """Per-row count of nonzero weights when every row's nonzero weights come first (the
    padding masks the engine builds), else None."""
    nonzero = w != 0
    lengths = nonzero.sum(dim=1)
    prefix = torch.arange(w.shape[1], device=w.device)[None, :] < lengths[:, None]
    return lengths if bool(torch.equal(nonzero, prefix)) else None


def length_groups(w: Tensor, dim: int) -> list[tuple[Tensor, int]] | None:
    """The client groups :func:`batched_grads` computes separately for padding weights ``w``
    ``[n, m]`` and a model of ``dim`` parameters (:func:`length_buckets`), or None where one
    padded call is the better choice: fewer than two clients, weights that are not a prefix
    mask, padding within :data:`PADDING_TOLERANCE` of the real examples, or wasted work below
    :data:`MIN_WASTED_WORK` (checked first, so small models skip the mask inspection)."""
    if w.shape[0] < 2 or w.numel() * dim < MIN_WASTED_WORK:
        return None
    lengths = _prefix_lengths(w)
    if lengths is None:
        return None
    real = int(lengths.sum())
    wasted = w.numel() - real
    if wasted <= PADDING_TOLERANCE * real or wasted * dim < MIN_WASTED_WORK:
        return None
    return length_buckets(lengths)


def batched_grads(
    fm: FlatModel,
    theta: Tensor,
    x: Tensor,
    y: Tensor,
    w: Tensor | None = None,
    clients_per_chunk: int | None = None,
    scale: Tensor | None = None,
    method: str = "auto",
    compute: Tensor | None = None,
) -> Tensor:
    """Gradients ``[n, d]`` of each client's mean batch loss.

    ``theta`` is ``[d]`` (one global model, as in FedSGD) or ``[n, d]`` (one model per client,
    as in RSA); ``x`` is ``[n, m, ...]``, ``y`` ``[n, m]``, ``w`` ``[n, m]`` (1 = real example,
    0 = padding for clients with smaller batches), ``scale`` ``[n]`` multiplies each client's
    loss (default 1). ``clients_per_chunk`` bounds memory for large models. When the padding is
    more than :data:`PADDING_TOLERANCE` of the real examples (very different batch sizes)
    and large in absolute terms (:data:`MIN_WASTED_WORK`), a dense model on the "dense" path
    without ``clients_per_chunk`` is computed on the concatenated real examples, unpadded
    (:func:`~diversefl.engine.dense_grads.dense_grads_ragged`); otherwise clients are grouped
    by batch size (:func:`length_groups`) and each group is computed with its own, narrower
    padding. Equal batches take one call.

    ``method``: "vmap" (``torch.func`` on any model), "dense" (the hand-written backward of
    :mod:`diversefl.engine.dense_grads`, for Flatten/Linear/ReLU networks and one shared
    model) or "auto" (dense where it applies, else vmap).

    ``compute`` (bool ``[n]``, optional) names the clients whose gradients are wanted; the
    others' rows are zero. On the dense path without ``clients_per_chunk`` the others cost
    nothing: the wanted clients are computed in calls of their own (the same padded or
    unpadded path the full call takes, each client in its own row of the result). Elsewhere
    (the vmap path, whose dropout masks are drawn for the whole client batch at once; size
    groups; calls of fewer than :data:`MIN_SKIP_ROWS` examples) every client is computed and
    the others' rows are zeroed.
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
    groups = length_groups(w, fm.dim)
    # the hand-written dense backward on the whole client axis at once: the only path that can
    # drop padding and skip clients
    whole_dense = dense_ok and method != "vmap" and not clients_per_chunk
    if compute is not None:
        compute = compute.to(device=x.device, dtype=torch.bool)
        if compute.shape != (n,):
            raise ValueError(
                f"compute must be a bool mask of shape ({n},), got {tuple(compute.shape)}"
            )
        if bool(compute.all()):
            compute = None
        elif not whole_dense or (
            _smallest_call(compute, w, unpadded=groups is not None) < MIN_SKIP_ROWS
        ):
            grads = batched_grads(fm, theta, x, y, w, clients_per_chunk, scale, method)
            grads[~compute] = 0.0
            return grads
    if groups is not None and whole_dense:
        # unequal batches through a dense model: no padding at all (the groups' copy is made
        # here once, as the concatenated real examples)
        keep = w != 0 if compute is None else (w != 0) & compute[:, None]
        coef = (scale[:, None] * w / w.sum(dim=1, keepdim=True).clamp_min(1.0))[keep]
        lengths = keep.sum(dim=1).tolist()
        return dense_grads_ragged(fm, theta, x[keep], y[keep], coef, lengths)
    if groups is not None:
        return _grads_by_group(fm, theta, x, y, w, groups, clients_per_chunk, scale, method)
    if compute is None:
        return padded_grads(fm, theta, x, y, w, clients_per_chunk, scale, method, dense_ok)
    grads = torch.zeros(n, fm.dim, dtype=theta.dtype, device=theta.device)
    for a, b in client_runs(compute):  # contiguous runs of wanted clients: views, no copies
        padded_grads(fm, theta, x[a:b], y[a:b], w[a:b], None, scale[a:b], method, True, grads[a:b])
    return grads


def _grads_by_group(
    fm: FlatModel,
    theta: Tensor,
    x: Tensor,
    y: Tensor,
    w: Tensor,
    groups: list[tuple[Tensor, int]],
    clients_per_chunk: int | None,
    scale: Tensor,
    method: str,
) -> Tensor:
    """Gradients ``[n, d]`` computed one batch-size group at a time, each group padded only to
    its own width (clients without a single example get a zero gradient)."""
    per_client_theta = theta.dim() == 2
    dense_ok = not per_client_theta and fm.dense
    grads = torch.empty(x.shape[0], fm.dim, dtype=theta.dtype, device=theta.device)
    for idx, width in groups:
        if width == 0:
            grads[idx] = 0.0
            continue
        t = theta[idx] if per_client_theta else theta
        xs, ys, ws = x[idx, :width], y[idx, :width], w[idx, :width]
        grads[idx] = padded_grads(
            fm, t, xs, ys, ws, clients_per_chunk, scale[idx], method, dense_ok
        )
    return grads


def _smallest_call(compute: Tensor, w: Tensor, unpadded: bool) -> int:
    """Examples in the smallest matmul call :func:`batched_grads` makes for the clients in
    ``compute`` alone: all their real examples on the unpadded path, else the shortest run of
    consecutive wanted clients times the padded width."""
    if unpadded:
        return int((w[compute] != 0).sum())
    return min(b - a for a, b in client_runs(compute)) * w.shape[1] if bool(compute.any()) else 0


def client_runs(mask: Tensor) -> list[tuple[int, int]]:
    """The ``[start, stop)`` ranges of consecutive True entries of a bool ``[n]`` mask."""
    runs: list[tuple[int, int]] = []
    start = None
    for i, keep in enumerate(mask.tolist()):
        if keep and start is None:
            start = i
        elif not keep and start is not None:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, mask.shape[0]))
    return runs


def padded_grads(
    fm: FlatModel,
    theta: Tensor,
    x: Tensor,
    y: Tensor,
    w: Tensor,
    clients_per_chunk: int | None,
    scale: Tensor,
    method: str,
    dense_ok: bool,
    out: Tensor | None = None,
) -> Tensor:
    """Gradients ``[n, d]`` of one padded batch in one call (chunked by ``clients_per_chunk``):
    the body of :func:`batched_grads`, which checks the arguments; ``dense_ok`` selects the
    hand-written dense backward unless ``method`` is "vmap"; the dense path writes into
    ``out`` when given (a row-major ``[n, d]`` view)."""
    n = x.shape[0]
    per_client_theta = theta.dim() == 2
    if out is not None and not (dense_ok and method != "vmap"):
        raise ValueError("out is for the dense path only")
    if dense_ok and method != "vmap":
        coef = scale[:, None] * w / w.sum(dim=1, keepdim=True).clamp_min(1.0)
        chunk = clients_per_chunk or n
        grads = (
            torch.empty(n, fm.dim, dtype=theta.dtype, device=theta.device) if out is None else out
        )
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
    parts = []
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        t = theta[sl] if per_client_theta else theta
        parts.append(fn(t, x[sl], y[sl], w[sl], scale[sl]))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


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
        # backward() just filled every parameter's .grad
        rows.append(torch.cat([cast(Tensor, p.grad).reshape(-1) for p in module.parameters()]))
    return torch.stack(rows)
