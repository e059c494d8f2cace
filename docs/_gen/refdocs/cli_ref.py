"""The command-line reference: every ``diversefl`` subcommand with its usage and options, read
from the parsers themselves (``diversefl.cli.build_parser`` and, for ``deploy-local``, which
hands its arguments to a parser of its own, ``diversefl.flower.deploy.build_parser``)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from refdocs.text import cell, code

WIDTH = 96  # usage lines are wrapped here, whatever the terminal that builds the site

INTRO = """\
# Command line

Every `diversefl` subcommand, generated from the command's own argument parsers when this site
is built (`diversefl SUBCOMMAND --help` prints the same). Errors a user can fix print one
`error: ...` line on stderr and exit with status 2; Ctrl-C exits with 130 after saying how to
resume; `DIVERSEFL_TRACEBACK=1` prints the full traceback instead (for a bug report).
"""


def _formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's own formatter at a fixed width, so the page does not depend on a terminal."""
    return argparse.HelpFormatter(prog, width=WIDTH, max_help_position=32)


def subcommands(
    parser: argparse.ArgumentParser, prefix: str
) -> Iterator[tuple[str, argparse.ArgumentParser, str]]:
    """``(full command, parser, one-line help)`` for every leaf subcommand, depth first."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help or "" for a in action._choices_actions}
        for name, sub in action.choices.items():
            full = f"{prefix} {name}"
            if name == "deploy-local" and prefix == "diversefl":
                from diversefl.flower.deploy import build_parser

                sub = build_parser()
            nested = list(subcommands(sub, full))
            yield from nested or [(full, sub, helps.get(name, ""))]


def usage(parser: argparse.ArgumentParser, prog: str) -> str:
    """The usage text, wrapped at :data:`WIDTH`."""
    fmt = _formatter(prog)
    fmt.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return fmt.format_help().strip()


def option_rows(parser: argparse.ArgumentParser, prog: str) -> list[str]:
    """One row per argument: how it is written, and its help with defaults filled in."""
    fmt = _formatter(prog)
    rows = ["| Argument | Meaning |", "|---|---|"]
    for action in parser._actions:
        skip = (argparse._HelpAction, argparse._SubParsersAction)
        if action.help == argparse.SUPPRESS or isinstance(action, skip):
            continue
        written = fmt._format_action_invocation(action)
        text = fmt._expand_help(action) if action.help else ""
        if not text and action.choices:
            text = "one of " + ", ".join(code(str(c)) for c in action.choices)
        if action.required and action.option_strings:
            text = f"required. {text}"
        rows.append(f"| {cell(code(written))} | {cell(text)} |")
    return rows


def command_text(full: str, parser: argparse.ArgumentParser, help_text: str) -> list[str]:
    """One subcommand's section."""
    anchor = full.removeprefix("diversefl ").replace(" ", "-")
    lines = [f"## `{full}` {{#{anchor}}}", ""]
    if help_text or parser.description:
        lines += [cell(help_text or parser.description or ""), ""]
    lines += ["```text", usage(parser, full), "```", ""]
    return lines + option_rows(parser, full) + [""]


def cli_page() -> str:
    """The whole command-line reference."""
    from diversefl.cli import build_parser

    parser = build_parser()
    commands = list(subcommands(parser, "diversefl"))
    lines = [INTRO, "## `diversefl` {#diversefl}", "", "```text", usage(parser, "diversefl")]
    lines += ["```", "", *option_rows(parser, "diversefl"), "", "| Subcommand | What it does |"]
    lines.append("|---|---|")
    for full, _, help_text in commands:
        anchor = full.removeprefix("diversefl ").replace(" ", "-")
        lines.append(f"| [{code(full)}](#{anchor}) | {cell(help_text)} |")
    lines.append("")
    for full, sub, help_text in commands:
        lines += command_text(full, sub, help_text)
    return "\n".join(lines)


def documented_commands() -> list[str]:
    """Every leaf subcommand the page documents, e.g. ``'data fetch'``."""
    from diversefl.cli import build_parser

    commands = subcommands(build_parser(), "diversefl")
    return [full.removeprefix("diversefl ") for full, _, _ in commands]
