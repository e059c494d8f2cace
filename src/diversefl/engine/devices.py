"""Which torch devices a config may name, and whether this machine has the one it names: one
check for the config, a run and a sweep's up-front check, so all refuse a device with the same
one-line message."""

from __future__ import annotations

import torch

from diversefl.config import SUPPORTED_DEVICE_TYPES, ConfigError, parse_device

SUPPORTED_TYPES = SUPPORTED_DEVICE_TYPES  # re-exported


def usable_device(device: str) -> torch.device:
    """``torch.device(device)``, or a one-line ConfigError naming ``engine.device`` when the
    device is not supported or this machine lacks it (no CUDA, an index past the last one)."""
    try:
        dev = parse_device(device)
    except ValueError as err:
        raise ConfigError(f"engine.device: {err}") from None
    if dev.type == "cpu":
        return dev
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
    try:
        torch.empty(0, device=dev)  # a busy (exclusive-mode) or broken device fails here
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"engine.device = {device!r}: torch cannot use it on this machine ({first})"
        ) from None
    return dev
