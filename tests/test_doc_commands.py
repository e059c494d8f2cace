"""Every `diversefl ...` command printed in the README and docs/ parses with today's command
line, and every config file they name exists (the docs must stay true as flags change)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from diversefl.cli import build_parser
from diversefl.flower.deploy import build_parser as deploy_parser

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
SHELL_LANGS = {"", "sh", "bash", "console", "shell"}
COMMAND = re.compile(r"^(\$ )?([A-Z_]+=\S* )*diversefl\b")


def shell_blocks(text: str) -> list[str]:
    """The contents of the fenced code blocks marked as shell (or unmarked)."""
    blocks, current, lang = [], None, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if current is None:
                current, lang = [], line.lstrip()[3:].strip()
            else:
                if lang in SHELL_LANGS:
                    blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def doc_commands() -> list[tuple[str, list[str]]]:
    """``(where, argv)`` for every shell line in a fenced block that runs ``diversefl``."""
    found = []
    for path in DOCS:
        for block in shell_blocks(path.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                if not COMMAND.match(line.strip()):
                    continue
                words = shlex.split(line, comments=True)
                while words and words[0] != "diversefl":  # "$ " and VAR=value prefixes
                    words = words[1:]
                found.append((f"{path.name}: {line.strip()}", words[1:]))
    return found


COMMANDS = doc_commands()


def test_docs_show_the_main_commands() -> None:
    subcommands = {argv[0] for _, argv in COMMANDS if argv}
    assert {
        "run",
        "sweep",
        "plot",
        "reproduce",
        "detection",
        "deploy-local",
        "data",
        "samples",
    } <= subcommands


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w[:90] for w, _ in COMMANDS])
def test_doc_command_parses(where: str, argv: list[str]) -> None:
    parser = deploy_parser() if argv[:1] == ["deploy-local"] else build_parser()
    args = argv[1:] if argv[:1] == ["deploy-local"] else argv
    try:
        parser.parse_args(args)
    except SystemExit as exc:
        if exc.code != 0:  # --help / --version exit 0
            pytest.fail(f"does not parse ({where})")


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w[:90] for w, _ in COMMANDS])
def test_doc_command_configs_exist(where: str, argv: list[str]) -> None:
    for word in argv:
        if word.startswith("configs/") and word.endswith(".toml"):
            assert (REPO / word).is_file(), f"{word} does not exist ({where})"


@pytest.mark.parametrize(
    ("where", "argv"),
    [(w, a) for w, a in COMMANDS if a[:1] in (["run"], ["sweep"])],
    ids=[w[:90] for w, a in COMMANDS if a[:1] in (["run"], ["sweep"])],
)
@pytest.mark.slow  # 2 s or more on a 2-core CPU
def test_doc_run_and_sweep_configs_validate(where: str, argv: list[str]) -> None:
    """The config a documented `run` / `sweep` names, with its `--set`, `--seed` and
    `--rounds`, is a valid config (a renamed key would fail here, not in a user's hands)."""
    from diversefl.api import resolve_config
    from diversefl.cli import _run_overrides
    from diversefl.demo import demo_config
    from diversefl.experiments.sweep import load_sweep
    from diversefl.presets import preset_names, preset_path

    args = build_parser().parse_args(argv)
    config: Path | None = None
    if args.config is not None:
        if (REPO / args.config).is_file():
            config = REPO / args.config
        elif args.config in preset_names():  # a preset name, as `diversefl presets` lists
            config = preset_path(args.config)
        else:
            pytest.skip(f"{args.config} is a placeholder")
    overrides = _run_overrides(args)
    if argv[0] == "sweep":
        assert config is not None
        assert load_sweep(config, overrides)
    elif config is None:
        if not args.resume:
            resolve_config(demo_config("diversefl"), overrides)
    else:
        resolve_config(config, overrides)


def toml_blocks() -> list[tuple[str, str]]:
    """``(where, text)`` of every fenced block marked ``toml`` in the README and docs/."""
    found = []
    for path in DOCS:
        current, lang = None, ""
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                if current is None:
                    current, lang, start = [], line.lstrip()[3:].strip(), number
                else:
                    if lang == "toml":
                        found.append((f"{path.name}:{start}", "\n".join(current)))
                    current = None
            elif current is not None:
                current.append(line)
    return found


TOML_BLOCKS = toml_blocks()


def test_docs_show_toml_examples() -> None:
    assert len(TOML_BLOCKS) >= 4


@pytest.mark.parametrize(("where", "text"), TOML_BLOCKS, ids=[w for w, _ in TOML_BLOCKS])
def test_doc_toml_block_is_a_valid_config(where: str, text: str, tmp_path: Path) -> None:
    """A TOML example in the docs parses and, saved as a file, loads as a config (a sweep file
    as a grid): a user who copies it gets a run, not a syntax error."""
    import tomllib

    from diversefl.api import resolve_config
    from diversefl.experiments.sweep import load_sweep

    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        pytest.fail(f"{where}: not valid TOML: {exc}")
    path = tmp_path / "example.toml"
    path.write_text(text)
    if "sweep" in raw:
        assert load_sweep(path, [])
    else:
        resolve_config(path, [])
