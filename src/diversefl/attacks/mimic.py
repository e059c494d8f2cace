"""Mimic (Karimireddy, He & Jaggi, ICLR 2022): every Byzantine client copies one honest client,
the one that most over-represents its own data, so that rules reading similarity as honesty
over-weight that client and the others' data is under-learned."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from diversefl.aggregators.base import RoundContext
from diversefl.attacks.base import Attack

Target = Literal["principal", "farthest"]


def principal_target(honest: Tensor) -> int:
    """Index of the honest row with the largest absolute projection on the top principal
    direction of the honest rows (centred at their mean); ties go to the lowest index.

    With ``C`` the centred rows and ``u`` the top eigenvector of the Gram matrix ``C C^T``
    (``m x m``, float64), the projections ``C v`` on the top direction ``v = C^T u / |C^T u|``
    are ``sqrt(lambda) u``, so the row is ``argmax |u_i|``: no ``d x d`` matrix is formed.
    """
    h = honest.to(torch.float64)
    centred = h - h.mean(0, keepdim=True)
    _, vectors = torch.linalg.eigh(centred @ centred.T)
    return int(torch.argmax(vectors[:, -1].abs()))


def farthest_target(honest: Tensor) -> int:
    """Index of the honest row farthest (Euclidean) from the honest mean; ties: lowest index."""
    h = honest.to(torch.float64)
    return int(torch.argmax((h - h.mean(0, keepdim=True)).norm(dim=1)))


@dataclass
class Mimic(Attack):
    """Every Byzantine client sends a copy of one honest client's update.

    The paper picks the target once, after a warm-up over which it estimates the top principal
    direction of the honest updates online, as the honest client with the largest projection on
    it (the most "heterogeneous" one). This attack keeps no state between rounds (so a resumed
    run is exact): it applies the same criterion to each round's honest updates
    (``target = "principal"``, the default), or, as a simpler variant, copies the honest update
    farthest from the honest mean (``target = "farthest"``). The message is an honest update, so
    no outlier test can reject it; the harm is that robust rules that favour agreeing updates
    learn mostly that one client's data.

    References
    ----------
    S. P. Karimireddy, L. He, M. Jaggi. "Byzantine-Robust Learning on Heterogeneous Datasets via
    Bucketing", ICLR 2022 (Section 4, the mimic attack).
    """

    name: ClassVar[str] = "mimic"
    needs_other_clients: ClassVar[bool] = True  # copies another client's update
    uses_own_gradients: ClassVar[bool] = False
    target: Target = "principal"  # which honest client to copy: principal | farthest

    def __post_init__(self) -> None:
        if self.target not in ("principal", "farthest"):
            raise ValueError(f"mimic: unknown target {self.target!r}; allowed: principal, farthest")

    def __call__(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        if byzantine.shape[0] == 0 or honest.shape[0] == 0:
            return byzantine.clone()
        pick = principal_target if self.target == "principal" else farthest_target
        sent = honest[pick(honest)]
        return sent.expand(byzantine.shape[0], -1).clone().to(byzantine.dtype)
