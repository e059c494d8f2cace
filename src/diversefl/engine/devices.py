"""Whether this machine has the torch device a config names: one check for a run and for a
sweep's up-front check, so both refuse a missing GPU with the same message."""

from __future__ import annotations

import torch

from diversefl.config import ConfigError


def usable_device(device: str) -> torch.device:
    """``torch.device(device)``, or a ConfigError naming ``engine.device`` when this machine
    lacks it (no CUDA, a CUDA index beyond the devices, another type torch cannot use)."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"engine.device = {device!r}: torch sees no CUDA device on this machine "
                "(use --device cpu)"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(
                f"engine.device = {device!r}: torch sees {count} CUDA device"
                f"{'' if count == 1 else 's'} on this machine "
                f"({', '.join(f'cuda:{i}' for i in range(count))}; use --device with one of them)"
            )
        return dev
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError, ValueError) as err:
        raise ConfigError(
            f"engine.device = {device!r}: torch cannot use it on this machine ({err}); "
            "use --device cpu"
        ) from None
    return dev
