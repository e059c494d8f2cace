"""What the ``diversefl`` command tells a user about a run directory: how to go on after
Ctrl-C, and why ``--resume`` finds nothing to continue (with what the folder holds)."""

from __future__ import annotations

import shlex
from pathlib import Path

from diversefl.results import RunDirError

_SHOWN = 6  # entries of a folder named in a message


class Interrupted(KeyboardInterrupt):
    """Ctrl-C in a command that knows what the user can do next (``advice``, the text after
    ``interrupted``)."""

    def __init__(self, advice: str) -> None:
        super().__init__(advice)
        self.advice = advice


def resume_advice(out: Path) -> str:
    """What to do after ``diversefl run --out out`` was interrupted, naming the real folder:
    resume it (from its checkpoint, or from the start when none was written yet), or, when
    nothing was written, run the command again."""
    if not (out / "config.toml").is_file():
        return ": nothing was written yet; run the same command again"
    again = f"`diversefl run --out {shlex.quote(str(out))} --resume`"
    if (out / "checkpoint.pt").is_file():
        return f": it continues from its last checkpoint with {again}"
    return f": no checkpoint was written yet; {again} starts it again"


def saved_config(out: Path) -> Path:
    """``out/config.toml``, the config ``run --out out --resume`` goes on with; a
    :class:`RunDirError` saying there is no run in ``out`` (and what is there) without it."""
    path = out / "config.toml"
    if path.is_file():
        return path
    raise RunDirError(f"--resume: there is no run in {out} to resume ({_holds(out)})")


def _holds(folder: Path) -> str:
    """What ``folder`` holds, for a message: nothing, run directories one level down (a demo's
    or a sweep's folder), or its first entries."""
    if not folder.exists():
        return "it does not exist"
    if not folder.is_dir():
        return "it is a file"
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    if not entries:
        return "it is empty"
    runs = [p.name for p in entries if (p / "config.toml").is_file()]
    if runs:
        text = f"it holds the run directories {_listed(runs)}: resume one of them, e.g. --out "
        text += shlex.quote(str(folder / runs[0]))
        if (folder / "sweep.csv").is_file():
            text += "; a sweep continues when its `diversefl sweep` command runs again"
        return text
    return f"it holds {_listed([p.name + ('/' if p.is_dir() else '') for p in entries])}"


def _listed(names: list[str]) -> str:
    """The first names, comma-separated, and how many more there are."""
    more = len(names) - _SHOWN
    return ", ".join(names[:_SHOWN]) + (f" and {more} more" if more > 0 else "")
