"""diversefl: Byzantine-robust federated learning on non-IID data (DiverseFL and baselines)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy: `import diversefl` stays cheap; `diversefl.run` pulls in the engine on first use.
    if name in ("run", "RunResult"):
        from diversefl import api

        return getattr(api, name)
    raise AttributeError(name)


__all__ = ["RunResult", "__version__", "run"]
