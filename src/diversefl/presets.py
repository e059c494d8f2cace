"""The config presets shipped inside the package (``src/diversefl/configs``): resolve a name
such as ``paper/mnist-softmax`` to its TOML file from any folder, and list them with a
one-line description (``diversefl presets``).

Only argparse, pathlib and the standard library at import time: ``diversefl --help`` must not
pay for pydantic or torch."""

from __future__ import annotations

import argparse
import difflib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

PRESET_DIR = Path(__file__).resolve().parent / "configs"
# a period and a space end a sentence, except after these abbreviations ("Figs. 3 and 9")
_SENTENCE_END = re.compile(r"(?<!\bFig)(?<!\bFigs)(?<!\bSec)(?<!\bEq)(?<!\be\.g)(?<!\bi\.e)\.\s+")
_MAX_DESCRIPTION = 130


@dataclass(frozen=True)
class Preset:
    """One shipped config: its name (``group/stem``), file, description and whether it
    defines a sweep grid."""

    name: str
    path: Path
    description: str
    is_sweep: bool


def preset_names() -> list[str]:
    """Every preset's name, ``group/stem`` without ``.toml``, sorted."""
    return sorted(p.relative_to(PRESET_DIR).with_suffix("").as_posix() for p in _files())


def _files() -> list[Path]:
    """Every TOML file under the preset folder."""
    return sorted(PRESET_DIR.rglob("*.toml"))


def _normalise(name: str) -> str:
    """``configs/paper/x.toml``, ``paper/x.toml`` and ``paper/x`` all name ``paper/x``."""
    text = name.strip().replace("\\", "/")
    text = text.removeprefix("./").removeprefix("configs/")
    return text.removesuffix(".toml")


def close_matches(name: str, names: list[str] | None = None) -> list[str]:
    """Presets a mistyped ``name`` probably meant: the same file stem in any group first,
    then names similar as text (at most five)."""
    names = preset_names() if names is None else names
    wanted = _normalise(name)
    stem = wanted.rsplit("/", 1)[-1]
    same_stem = [n for n in names if n.rsplit("/", 1)[-1] == stem]
    similar = difflib.get_close_matches(wanted, names, n=5, cutoff=0.6)
    stems = {n.rsplit("/", 1)[-1]: n for n in names}
    similar += [stems[s] for s in difflib.get_close_matches(stem, list(stems), n=3, cutoff=0.75)]
    return list(dict.fromkeys(same_stem + similar))[:5]


def preset_path(name: str) -> Path:
    """The TOML file of the preset ``name``; an unknown name is a ConfigError listing the
    close matches and pointing to ``diversefl presets``."""
    wanted = _normalise(name)
    names = preset_names()
    if wanted in names:  # a listed name only: never a path built from user text
        return PRESET_DIR / f"{wanted}.toml"
    from diversefl.config import ConfigError

    matches = close_matches(name, names)
    hint = f"did you mean {', '.join(matches)}? " if matches else ""
    raise ConfigError(
        f"config file not found: {name}, and no preset has that name ({hint}`diversefl "
        "presets` lists them)"
    )


def resolve_config_arg(arg: str) -> str:
    """A config argument as given on the command line: an existing path, an absolute one or
    one starting with ``./`` or ``../`` is used as it is (the loader reports a missing file);
    anything else is looked up as a preset name (ConfigError when there is none)."""
    explicit = Path(arg).is_absolute() or arg.startswith(("./", "../"))
    if arg == "" or explicit or Path(arg).exists():
        return arg
    return str(preset_path(arg))


def describe(path: Path) -> str:
    """The first sentence of a TOML file's leading comment block (cut at 130 characters):
    the first line alone often stops mid-phrase."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(part for part in lines if part)
    sentence = _SENTENCE_END.split(text, maxsplit=1)[0].rstrip(".")
    if len(sentence) > _MAX_DESCRIPTION:
        sentence = sentence[: _MAX_DESCRIPTION - 3].rsplit(" ", 1)[0] + "..."
    return sentence


def list_presets() -> list[Preset]:
    """Every shipped preset with its description and whether it defines a sweep grid."""
    presets = []
    for name in preset_names():
        path = PRESET_DIR / f"{name}.toml"
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        presets.append(Preset(name, path, describe(path), "sweep" in raw))
    return presets


def cmd_presets(args: argparse.Namespace) -> int:
    """``diversefl presets``: a table of the shipped presets (``--paths``: their files)."""
    from rich.console import Console
    from rich.table import Table

    presets = list_presets()
    if args.paths:
        for p in presets:
            print(f"{p.name}\t{p.path}")
        return 0
    table = Table(title="presets: diversefl sweep NAME runs the grid, diversefl run NAME its base")
    table.add_column("name", no_wrap=True)
    table.add_column("description")
    for p in presets:
        table.add_row(p.name + ("" if p.is_sweep else " (one run)"), p.description)
    console = Console()
    console.print(table)
    console.print(f"files in {PRESET_DIR}: copy one to edit it", highlight=False)
    return 0


def add_presets_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``presets`` subcommand on the ``diversefl`` parser."""
    pr = sub.add_parser("presets", help="list the config presets shipped with diversefl")
    pr.add_argument(
        "--paths", action="store_true", help="print NAME<TAB>FILE lines instead of the table"
    )
    pr.set_defaults(func=cmd_presets)
