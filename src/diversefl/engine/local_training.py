"""FedAvg-style local training, batched over clients: every client runs its E_j local SGD
steps from the global model at once (one batched gradient call per step, a loop over steps,
never over clients) and sends the pseudo-gradient ``(theta - theta_E) / lr``: the model delta
on the gradient scale, so every rule, attack and the server step take it as they take a
gradient (with the server's lr equal to ``lr`` the server step is FedAvg's model average)."""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import torch
from torch import Tensor

from diversefl.config import Config
from diversefl.engine.seeding import generator

#: ``grads_at(models, step, rows)``: the gradients ``[k, d]`` of local step ``step``'s batches
#: of the clients ``rows`` (an index tensor; None: all n) at ``models``: the global model
#: ``[d]`` at step 0, one model per wanted client ``[k, d]`` at every later step.
GradsAt = Callable[[Tensor, int, Tensor | None], Tensor]


def uses_local_training(cfg: Config) -> bool:
    """Whether the clients run more than FedSGD's one gradient (``clients.local_steps > 1``
    or ``clients.local_epochs`` set); otherwise the engine keeps its one-gradient path."""
    return cfg.clients.local_steps > 1 or cfg.clients.local_epochs is not None


def step_counts(cfg: Config, shard_len: Tensor, batch_k: Tensor) -> Tensor:
    """Local steps ``[n]`` (long) of every client: ``clients.local_steps``, or with
    ``clients.local_epochs`` = e, ``ceil(e * shard_len_j / batch_j)`` (e read as the decimal
    the config wrote, so 0.1 x 30 / 3 is 1 step, not 2)."""
    epochs = cfg.clients.local_epochs
    if epochs is None:
        return torch.full((shard_len.shape[0],), cfg.clients.local_steps, dtype=torch.long)
    e = Fraction(repr(float(epochs)))
    counts = [
        max(1, math.ceil(e * int(L) / int(m)))
        for L, m in zip(shard_len.tolist(), batch_k.tolist(), strict=True)
    ]
    return torch.tensor(counts, dtype=torch.long)


def local_lr(cfg: Config, server_lr: float) -> float:
    """The clients' local SGD step size in a round whose server lr is ``server_lr``:
    ``clients.local_lr``, else the server's lr (after the schedule); ValueError when it is 0
    (the pseudo-gradient divides by it)."""
    lr = cfg.clients.local_lr if cfg.clients.local_lr is not None else server_lr
    if not lr > 0:
        raise ValueError(
            f"local training with a local step size of {lr} (the server's lr of the round, "
            "e.g. optim.warmup_start_lr = 0): set clients.local_lr > 0"
        )
    return float(lr)


def batch_generator(seed: int, r: int, step: int) -> torch.Generator:
    """The generator of local step ``step``'s mini-batch draw in round r: FedSGD's
    ``(seed, "batch", r)`` for the first step (so step 0 draws exactly the one-step batch),
    ``(seed, "batch", r, step)`` for every later one."""
    return generator(seed, "batch", r) if step == 0 else generator(seed, "batch", r, step)


def local_pseudo_gradients(theta: Tensor, grads_at: GradsAt, steps: Tensor, lr: float) -> Tensor:
    """Every client's pseudo-gradient ``[n, d]`` after ``steps[j]`` local SGD steps of size
    ``lr`` from the global model ``theta`` (``[d]``), each step on its own batch.

    Step 0 is one call at the shared ``theta`` (the one-step gradient); each later step s
    calls ``grads_at`` once for the clients with ``steps > s`` and leaves the others' models
    where they are. A client with one step sends that gradient itself (not ``(theta - (theta -
    lr g)) / lr``, which rounds differently); a client with 0 steps (not asked) sends zeros.
    """
    if not lr > 0:
        raise ValueError(f"local step size must be > 0, got {lr}")
    steps = steps.to(theta.device)
    first = grads_at(theta, 0, None)
    last = int(steps.max()) if steps.numel() else 0
    if last <= 1:
        return first.masked_fill((steps == 0)[:, None], 0.0)
    models = theta[None, :] - lr * first
    for s in range(1, last):
        active = steps > s
        if bool(active.all()):
            models.sub_(lr * grads_at(models, s, None))
            continue
        rows = active.nonzero().flatten()
        models[rows] = models[rows] - lr * grads_at(models[rows], s, rows)
    sent = (theta[None, :] - models) / lr
    sent = torch.where((steps == 1)[:, None], first, sent)
    return sent.masked_fill((steps == 0)[:, None], 0.0)


def server_step_count(steps: Tensor) -> int:
    """Local steps of a server-side root-data update (FLTrust): the clients' mean step count,
    rounded (``clients.local_steps`` itself unless ``clients.local_epochs`` varies it)."""
    return max(1, round(float(steps.float().mean())))
