"""The overrides a sweep ran with (``--set``, ``--rounds``, ...), kept in its folder as
``overrides.json`` so that ``diversefl sweep CONFIG --status`` checks its runs against the
same grid without the user repeating them (plain JSON: nothing in it runs)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from diversefl.config import ConfigError
from diversefl.results import atomic_write_bytes

OVERRIDES_FILE = "overrides.json"


def write_overrides(out: Path, overrides: Sequence[str]) -> None:
    """Record ``overrides`` in ``out`` (replacing what an earlier sweep there recorded)."""
    text = json.dumps({"overrides": list(overrides)}, indent=1) + "\n"
    atomic_write_bytes(out / OVERRIDES_FILE, text.encode())


def read_overrides(out: Path) -> list[str] | None:
    """The overrides recorded in ``out`` (None when no sweep recorded any there); a file that
    is not such a record is a ConfigError naming it."""
    path = out / OVERRIDES_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not a sweep's overrides record ({err})") from None
    items = data.get("overrides") if isinstance(data, dict) else None
    if not (isinstance(items, list) and all(isinstance(x, str) for x in items)):
        raise ConfigError(f"{path}: not a sweep's overrides record (no list of overrides)")
    return items
