"""Run diversefl federations on Flower (flwr 1.42): a ClientApp, a ServerApp with a
Message-API strategy, and a localhost launcher.

Install with ``pip install -e ".[flower]"``. The apps are referenced from ``pyproject.toml``
(``[tool.flwr.app.components]``); :mod:`diversefl.flower.deploy` starts a SuperLink and N
SuperNodes on 127.0.0.1 and runs them (``python -m diversefl.flower.deploy CONFIG --nodes N``).
Submodules import :mod:`flwr` lazily, so importing this package works without it.
"""

from __future__ import annotations

import importlib.util

#: True when Flower is installed (the ``flower`` extra).
FLOWER_AVAILABLE: bool = importlib.util.find_spec("flwr") is not None

__all__ = ["FLOWER_AVAILABLE"]
