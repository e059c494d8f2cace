"""The federation contract the training loop drives: the in-process :class:`Simulation` and the
Flower server's remote population both satisfy it, by composition (neither inherits the other)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from diversefl.round import RoundRecord


@runtime_checkable
class Federation(Protocol):
    """What :func:`diversefl.engine.runner.train` needs from a federation: one round at a time,
    evaluation, checkpointable state and what the run files report."""

    theta: Tensor  # the global model, flat ``[d]``
    f: int  # Byzantine clients in the run (what the summary reports)
    device: torch.device

    @property
    def n_params(self) -> int:
        """Entries of the flat model."""
        ...

    @property
    def extra_metric_names(self) -> list[str]:
        """Metric columns beyond the standard ones (e.g. backdoor accuracy)."""
        ...

    def step(self, r: int) -> RoundRecord:
        """Run round r (1-based) and step the global model."""
        ...

    def evaluate(self, theta: Tensor | None = None) -> dict[str, float]:
        """Test metrics of the current (or given) model."""
        ...

    def byzantine_ids(self) -> list[int] | str:
        """The Byzantine client ids for the run files."""
        ...

    def extra_summary(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """What the federation adds to summary.json."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly from this round."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        ...
