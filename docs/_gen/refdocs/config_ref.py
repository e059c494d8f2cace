"""The config reference: every key of :class:`diversefl.config.Config` with its type, default,
allowed range and meaning, read from the pydantic schema and the comments in config.py."""

from __future__ import annotations

import importlib
import re
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from refdocs.source import FieldSource, class_fields
from refdocs.text import DocsError, cell, code, doc_markdown, toml_value

_REGISTRY_NAME = re.compile(r"a name in (diversefl(?:\.\w+)+)", re.IGNORECASE)
_LITERAL = re.compile(r"Literal\[([^\]]*)\]")
_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
# where a registry's names are documented, for links from "allowed" lists
_NAME_PAGES = {"aggregator": "aggregators.md", "attack": "attacks.md", "model": "models.md"}
_SETTINGS_PAGES = {"aggregator": "aggregators.md", "attack": "attacks.md"}

INTRO = """\
# Config reference

Every setting of a run, generated from the schema in `src/diversefl/config.py` when this site is
built. A config is a TOML file; each key below goes in its section (`[data]`, `[clients]`, ...)
and can also be set on the command line with `--set section.key=value` (top-level keys:
`--set rounds=200`). An unknown key, a wrong type or a value out of range stops the run before
training with an error that names the key. `config.toml` in every run directory holds the
resolved config. [Run an experiment](../how-to/run.md) shows how overrides, types and run names
work.
"""


def sections() -> list[tuple[str, type[BaseModel]]]:
    """``(section name, section class)`` for every table of Config, in schema order."""
    from diversefl.config import Config

    return [
        (name, field.annotation)
        for name, field in Config.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    ]


def top_level_keys() -> list[str]:
    """The keys of Config that are not sections (name, seed, rounds)."""
    from diversefl.config import Config

    names = {name for name, _ in sections()}
    return [k for k in Config.model_fields if k not in names]


def _type_text(annotation: str) -> str:
    """``Literal["a", "b"] | None`` -> ``"a" | "b"``: what a TOML file may write."""
    text = _LITERAL.sub(lambda m: " | ".join(p.strip() for p in m.group(1).split(",")), annotation)
    parts = [p.strip() for p in text.split("|") if p.strip() != "None"]
    return " | ".join(parts)


def _bounds(info: FieldInfo) -> str:
    """The field's numeric range from its constraints, e.g. ``> 0``, ``>= 1``."""
    found = []
    for meta in info.metadata:
        for attr, sign in _BOUNDS:
            value = getattr(meta, attr, None)
            if value is not None:
                found.append(f"{sign} {value}")
    return ", ".join(found)


def _meaning(comment: str) -> str:
    """The comment as a sentence; a comment naming a registry (``a name in diversefl.x.REG``)
    gets the registry's names, linked to their reference where there is one."""
    text = comment[0].upper() + comment[1:]
    match = _REGISTRY_NAME.search(text)
    if not match:
        return text if text.endswith(".") else text + "."
    module, _, attr = match.group(1).rpartition(".")
    registry: Any = getattr(importlib.import_module(module), attr)
    page = _NAME_PAGES.get(registry.kind)
    names = [f"[{code(n)}]({page}#{n})" if page else code(n) for n in registry.names()]
    text = _REGISTRY_NAME.sub(f"{text[0]} name in {code(match.group(1))}", text)
    return f"{text.rstrip('.')}. Allowed: {', '.join(names)}."


def key_row(prefix: str, key: str, info: FieldInfo, source: FieldSource) -> str:
    """One table row: key (with an anchor), type, default, meaning."""
    full = f"{prefix}{key}"
    if not source.comment:
        raise DocsError(
            f"config key {full} has no comment in src/diversefl/config.py: add a trailing "
            "'# meaning' (or a comment line above it) so that the reference can explain it"
        )
    kind = _type_text(source.annotation)
    bounds = _bounds(info)
    default = info.default_factory() if info.default_factory else info.default  # type: ignore[call-arg]
    meaning = _meaning(source.comment)
    return (
        f'| <a id="{full}"></a>{code(key)} | {cell(code(kind))}{" " + bounds if bounds else ""} '
        f"| {cell(code(toml_value(default)))} | {cell(meaning)} |"
    )


def _table(prefix: str, cls: type[BaseModel], keys: list[str]) -> list[str]:
    """The rows of ``keys`` of one section (or of the top level), with their header."""
    sources = class_fields(cls)
    rows = ["| Key | Type | Default | Meaning |", "|---|---|---|---|"]
    for key in keys:
        if key not in sources:
            raise DocsError(f"config key {prefix}{key}: no annotated field in {cls.__name__}")
        rows.append(key_row(prefix, key, cls.model_fields[key], sources[key]))
    return rows


def section_text(name: str, cls: type[BaseModel]) -> list[str]:
    """A section's heading, docstring, extra-keys note and table."""
    lines = [f"## `[{name}]` {{#{name}}}", "", doc_markdown(cls), ""]
    if cls.model_config.get("extra") == "allow":
        page = _SETTINGS_PAGES.get(name)
        where = f" (see the [{name} reference]({page}))" if page else ""
        lines += [
            f"Any other key of `[{name}]` is a setting of the chosen {name}{where}; a setting "
            f"the {name} does not have is an error.",
            "",
        ]
    return lines + _table(f"{name}.", cls, list(cls.model_fields)) + [""]


def config_page() -> str:
    """The whole config reference page."""
    from diversefl.config import Config

    lines = [INTRO, "## Top-level keys {#top-level}", "", doc_markdown(Config), ""]
    lines += _table("", Config, top_level_keys()) + [""]
    for name, cls in sections():
        lines += section_text(name, cls)
    return "\n".join(lines)


def documented_keys() -> list[str]:
    """Every dotted key the page documents (what the tests hold against the schema)."""
    keys = top_level_keys()
    for name, cls in sections():
        keys += [f"{name}.{k}" for k in cls.model_fields]
    return keys
