"""RSA (Li et al., AAAI 2019): Byzantine-robust stochastic aggregation with an l1 penalty.

Not a rule over gradients: every client keeps its own model copy and uploads it; the server
pulls its model toward the copies through ``sign(theta_M - theta_j)``, so one arbitrary copy
moves it by at most ``lr * delta`` per coordinate (paper supplementary, eqs. 13-14).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import sanitize
from diversefl.protocols.base import Protocol, ProtocolRound, ProtocolState


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
class RSA(Protocol):
    """The RSA protocol's settings. Its state: the clients' model copies ``clients`` and what
    they uploaded last round ``uploads`` (both ``[n, d]``; absent before the first round)."""

    name: ClassVar[str] = "rsa"
    delta: float = 0.25  # weight of the l1 consensus penalty (paper: 0.25)

    def __post_init__(self) -> None:
        if self.delta < 0:
            raise ValueError(f"delta must be >= 0, got {self.delta}")

    def round(
        self,
        state: ProtocolState,
        theta: Tensor,
        *,
        lr: float,
        weight_decay: float,
        client_gradients: Callable[[Tensor], Tensor],
        attack: Callable[[Tensor], Tensor],
    ) -> ProtocolRound:
        """One RSA round: clients step their copies, the server steps toward the last uploads."""
        clients, uploads = state.get("clients"), state.get("uploads")
        if clients is None:
            raise ValueError("rsa: the state has no client models (call initial_state first)")
        assert uploads is not None  # initial_state sets both
        n = clients.shape[0]
        # a checkpoint holds them on the CPU: back to the model's device after a resume
        clients, uploads = clients.to(theta.device), uploads.to(theta.device)
        grads = client_gradients(clients)
        new_clients = rsa_client_step(clients, theta, grads, lr, self.delta, n)
        uploads, valid = sanitize(uploads, n)
        # Malformed uploads carry no vote (their sign term is dropped), never a crash.
        uploads = torch.where(valid[:, None], uploads, theta[None, :])
        theta = rsa_server_step(theta, uploads, lr, self.delta, weight_decay)
        sent = attack(new_clients.clone())
        return ProtocolRound(theta, {"clients": new_clients, "uploads": sent}, valid.cpu())

    @staticmethod
    def initial_state(theta: Tensor, n: int) -> ProtocolState:
        """Every client starts from the server's model and has uploaded it."""
        clients = theta[None, :].repeat(n, 1)
        return {"clients": clients, "uploads": clients.clone()}
