"""Per-coordinate order statistics over the client axis, shared by the median and trimmed-mean
rules. On CPU numpy's sort is several times faster than ``torch.sort`` along the client axis
(measured in ``benchmarks/aggregators.py``), so CPU tensors are sorted with numpy (zero-copy in,
zero-copy out); other devices use torch."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _numpy_ok(x: Tensor) -> bool:
    return x.device.type == "cpu" and not x.requires_grad and x.dtype != torch.bfloat16


def sort_clients(updates: Tensor) -> Tensor:
    """Each coordinate's values in ascending order: ``updates [n, d]`` sorted along dim 0."""
    if _numpy_ok(updates):
        return torch.from_numpy(np.sort(updates.numpy(), axis=0))
    return torch.sort(updates, dim=0).values
