"""Markdown helpers shared by the generators: docstrings (numpy style, Sphinx roles) as
Markdown, table cells, and values written the way a TOML config writes them."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from typing import Any

_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`).+?(?<!`)\1(?!`)", re.DOTALL)
_TAG_LIKE = re.compile(r"<(?=[A-Za-z/!?])")  # "<name>" would pass through as an HTML tag
_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc):`~?([^`]+)`")
_SECTION_RULE = re.compile(r"^-{3,}$")
_TERM_SECTIONS = {"Parameters", "Returns", "Raises", "Yields", "Attributes"}


class DocsError(ValueError):
    """The code lacks something its generated reference needs (a comment, a docstring)."""


def doc_markdown(obj: object) -> str:
    """The object's own docstring as Markdown ('' when it has none: a dataclass's generated
    signature line is not a docstring, nor is one inherited from a base class)."""
    doc = obj.__doc__ if isinstance(obj, type) else inspect.getdoc(obj)
    if not doc or isinstance(obj, type) and doc.startswith(f"{obj.__name__}("):
        return ""
    return docstring_markdown(inspect.cleandoc(doc))


def _role_name(match: re.Match[str]) -> str:
    """``:func:`~a.b.c``` -> `` `c` ``, ``:class:`a.B``` -> `` `a.B` ``."""
    name = match.group(1)
    short = match.group(0).split("`", 1)[1].startswith("~")
    return f"`{name.rsplit('.', 1)[-1] if short else name}`"


def roles_as_code(text: str) -> str:
    """Sphinx roles (``:func:`name```, ``:class:`~a.B```) as inline code spans."""
    return _ROLE.sub(_role_name, text)


def docstring_markdown(doc: str) -> str:
    """A cleaned docstring as Markdown: Sphinx roles become code, numpy section headers
    (``Notes`` over a dashed rule) bold labels, and a section's ``term`` + indented description
    pairs (Parameters, Returns) a bullet list."""
    lines = roles_as_code(doc).splitlines()
    out: list[str] = []
    section = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and _SECTION_RULE.match(nxt.strip()) and len(nxt.strip()) >= 3:
            section = line.strip()
            out += ["", f"**{section}**", ""]
            i += 2
            continue
        if section in _TERM_SECTIONS and line.strip() and not line.startswith(" "):
            desc: list[str] = []
            i += 1
            while i < len(lines) and (lines[i].startswith(" ") or not lines[i].strip()):
                if lines[i].strip():
                    desc.append(lines[i].strip())
                i += 1
            term = line.strip()
            out.append(f"- `{term}`: {' '.join(desc)}" if desc else f"- `{term}`")
            continue
        out.append(line)
        i += 1
    return escape_tags("\n".join(out).strip())


def first_paragraph(markdown: str) -> str:
    """The text up to the first blank line, joined to one line (for table cells)."""
    return " ".join(markdown.strip().split("\n\n", 1)[0].split())


def outside_code(text: str, fix: Callable[[str], str]) -> str:
    """``text`` with ``fix`` applied to every part outside inline code spans (a span opens and
    closes with the same number of backticks, as in Markdown)."""
    out, last = [], 0
    for span in _CODE_SPAN.finditer(text):
        out += [fix(text[last : span.start()]), span.group(0)]
        last = span.end()
    return "".join([*out, fix(text[last:])])


def escape_tags(text: str) -> str:
    """``<word>`` outside code written as ``&lt;word>``, so Markdown shows it instead of
    passing it through as HTML."""
    return outside_code(text, lambda part: _TAG_LIKE.sub("&lt;", part))


def cell(text: str) -> str:
    """``text`` made safe for one Markdown table cell: one line, pipes outside code escaped."""
    return escape_tags(outside_code(" ".join(text.split()), lambda p: p.replace("|", "\\|")))


def toml_value(value: Any) -> str:
    """``value`` as a TOML config writes it; None (an unset optional key) as 'unset'."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def code(text: str) -> str:
    """``text`` as an inline code span (a span holding a backtick gets a double fence)."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"
