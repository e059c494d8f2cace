"""The model as one flat parameter vector, so that clients, attacks and aggregators all see
plain ``[d]`` / ``[n, d]`` tensors."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FlatModel:
    """A module plus the bookkeeping to move between a flat vector ``theta`` and its params."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        named = [(k, p) for k, p in module.named_parameters() if p.requires_grad]
        self.names = [k for k, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.dim = sum(self.numels)
        self.buffers = dict(module.named_buffers())

    def flatten(self) -> Tensor:
        """The module's current parameters as one detached vector ``[d]``."""
        return torch.cat([p.detach().reshape(-1) for p in self.module.parameters()]).clone()

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Split ``theta`` (``[d]``) into named parameter views (no copy)."""
        if theta.shape[-1] != self.dim:
            raise ValueError(f"theta has {theta.shape[-1]} entries, the model needs {self.dim}")
        pieces = torch.split(theta, self.numels, dim=-1)
        lead = tuple(theta.shape[:-1])
        return {
            k: v.reshape(lead + s) for k, v, s in zip(self.names, pieces, self.shapes, strict=True)
        }

    def load_into_module(self, theta: Tensor) -> nn.Module:
        """Copy ``theta`` into the module's parameters (for export and plain-loop references)."""
        with torch.no_grad():
            for p, v in zip(self.module.parameters(), self.unflatten(theta).values(), strict=True):
                p.copy_(v)
        return self.module
