"""RSA (Li et al., AAAI 2019): Byzantine-robust stochastic aggregation with an l1 penalty.

Not a rule over gradients: every client keeps its own model copy and uploads it; the server
pulls its model toward the copies through ``sign(theta_M - theta_j)``, so one arbitrary copy
moves it by at most ``lr * delta`` per coordinate (paper supplementary, eqs. 13-14).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import AggregatorError, sanitize

if TYPE_CHECKING:
    from diversefl.aggregators.base import RoundContext
    from diversefl.engine.simulator import RoundRecord, Simulation


def rsa_client_step(
    theta_j: Tensor, theta_m: Tensor, grads: Tensor, lr: float, delta: float, n: int
) -> Tensor:
    """Eq. 13: ``theta_j - lr * (g_j / n + delta * sign(theta_j - theta_M))`` for all rows."""
    return theta_j - lr * (grads / n + delta * torch.sign(theta_j - theta_m[None, :]))


def rsa_server_step(
    theta_m: Tensor, uploads: Tensor, lr: float, delta: float, weight_decay: float
) -> Tensor:
    """Eq. 14: ``theta_M - lr * (lambda theta_M + delta * sum_j sign(theta_M - theta_j))``."""
    pull = torch.sign(theta_m[None, :] - uploads).sum(0)
    return theta_m - lr * (weight_decay * theta_m + delta * pull)


@dataclass
class RSA:
    """The RSA protocol's settings and state (client model copies and their last uploads)."""

    name: ClassVar[str] = "rsa"
    delta: float = 0.25  # weight of the l1 consensus penalty (paper: 0.25)

    def __post_init__(self) -> None:
        if self.delta < 0:
            raise ValueError(f"delta must be >= 0, got {self.delta}")
        self.clients: Tensor | None = None
        self.uploads: Tensor | None = None

    def check(self, n: int, f: int) -> None:
        """RSA runs for any n >= 1."""
        if n < 1:
            raise AggregatorError(f"rsa: needs at least one client, got n={n}")

    def step(self, sim: Simulation, r: int, byz: Tensor, ctx: RoundContext) -> RoundRecord:
        """One RSA round: clients step their copies, the server steps toward the uploads."""
        from diversefl.engine.simulator import RoundRecord

        n, lr = sim.n, sim.schedule(r)
        if self.clients is None:
            self.clients = sim.theta[None, :].repeat(n, 1)
            self.uploads = self.clients.clone()
        # a checkpoint holds them on the CPU: back to the model's device after a resume
        self.clients = self.clients.to(sim.theta.device)
        self.uploads = self.uploads.to(sim.theta.device)
        grads = sim.client_gradients(r, byz, ctx, theta=self.clients)
        new_clients = rsa_client_step(self.clients, sim.theta, grads, lr, self.delta, n)
        uploads, valid = sanitize(self.uploads, n)
        # Malformed uploads carry no vote (their sign term is dropped), never a crash.
        uploads = torch.where(valid[:, None], uploads, sim.theta[None, :])
        sim.theta = rsa_server_step(sim.theta, uploads, lr, self.delta, sim.cfg.optim.weight_decay)
        self.clients = new_clients
        sent = new_clients.clone()
        byz_d = byz.to(sent.device)
        if bool(byz.any()):
            sent[byz_d] = sim.attack(sent[~byz_d], sent[byz_d], ctx).to(sent.dtype)
        self.uploads = sent
        accepted = valid.cpu()
        return RoundRecord(round=r, lr=lr, byzantine=byz.cpu(), accepted=accepted)

    def state_dict(self) -> dict[str, Any]:
        """Client copies and last uploads (None before the first round), on the CPU."""
        cpu = lambda t: None if t is None else t.detach().cpu()  # noqa: E731
        return {"clients": cpu(self.clients), "uploads": cpu(self.uploads)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.clients, self.uploads = state["clients"], state["uploads"]
