"""The ``a+b+rule`` names of pipelines (pre-aggregators, then a rule): one spelling everywhere a
pipeline is named as text (a sweep's labels, an attack's ``rule``), joined and split here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SEPARATOR = "+"


def pipeline_name(rule: str, pre: Sequence[str | dict[str, Any]] | None = None) -> str:
    """``rule`` behind the stages ``pre`` (names, or tables with a ``name``) as one name, e.g.
    ``nnm+krum``; the rule's own name without stages. Settings are not part of the name."""
    stages = [s if isinstance(s, str) else str(s.get("name")) for s in pre or []]
    return SEPARATOR.join([*stages, rule])


def split_pipeline_name(text: str, where: str) -> tuple[list[str], str]:
    """(pre-aggregator names, rule name) of ``text``: every part before the last must be a
    registered pre-aggregator; an unknown one is a ValueError that names it (prefixed by
    ``where``) and lists the known ones. The rule itself is the caller's to check."""
    from diversefl.aggregators.pre import PRE

    *stages, rule = text.split(SEPARATOR)
    for part in [*stages, rule]:
        if not part:
            raise ValueError(f"{where}: {text!r} has an empty part; write pre+...+rule")
    for part in stages:
        if part not in PRE:
            raise ValueError(
                f"{where}: {text!r}: {part!r} is not a pre-aggregator (the parts before the rule "
                f"are); known pre-aggregators: {', '.join(PRE.names())}"
            )
    return stages, rule
