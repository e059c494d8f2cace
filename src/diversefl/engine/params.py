"""The model as one flat parameter vector, so that clients, attacks and aggregators all see
plain ``[d]`` / ``[n, d]`` tensors."""

from __future__ import annotations

from functools import cached_property

import torch
from torch import Tensor, nn

from diversefl.engine.dense_grads import is_dense


def layer_sizes(names: list[str], numels: list[int]) -> tuple[int, ...]:
    """Sizes of the consecutive blocks of ``theta`` that belong to one layer (parameters whose
    names share the module prefix, e.g. ``0.weight`` and ``0.bias``)."""
    sizes: list[int] = []
    prev = None
    for name, k in zip(names, numels, strict=True):
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        if sizes and owner == prev:
            sizes[-1] += k
        else:
            sizes.append(k)
        prev = owner
    return tuple(sizes)


class FlatModel:
    """A module plus the bookkeeping to move between a flat vector ``theta`` and its params."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        named = [(k, p) for k, p in module.named_parameters() if p.requires_grad]
        self.names = [k for k, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.dim = sum(self.numels)
        self.layer_sizes = layer_sizes(self.names, self.numels)
        self.buffers = dict(module.named_buffers())

    @cached_property
    def dense(self) -> bool:
        """Whether the hand-written dense backward applies to this model (checked once)."""
        return is_dense(self.module)

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
