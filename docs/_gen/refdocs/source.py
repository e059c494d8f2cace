"""What a class's source says about its fields: the annotation as written and the comment that
explains the field (a trailing ``# comment``, else the comment lines right above it)."""

from __future__ import annotations

import ast
import inspect
import io
import textwrap
import tokenize
from dataclasses import dataclass

_TOOL_COMMENTS = ("fmt:", "noqa", "type:", "pragma:")


@dataclass(frozen=True)
class FieldSource:
    """One field as its class's source writes it."""

    annotation: str  # the annotation's source text, e.g. "int | float"
    comment: str  # the explaining comment, '' when there is none


def _comments(source: str) -> dict[int, tuple[str, bool]]:
    """Line number -> (comment text, whether the comment is the whole line)."""
    found: dict[int, tuple[str, bool]] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        text = tok.string.lstrip("#").strip()
        if not text.startswith(_TOOL_COMMENTS):
            found[tok.start[0]] = (text, tok.line.strip().startswith("#"))
    return found


def _explanation(stmt: ast.AnnAssign, comments: dict[int, tuple[str, bool]]) -> str:
    """The statement's trailing comment, else the block of whole-line comments above it."""
    assert stmt.end_lineno is not None
    trailing = [
        comments[n][0]
        for n in range(stmt.lineno, stmt.end_lineno + 1)
        if n in comments and not comments[n][1]
    ]
    if trailing:
        return " ".join(trailing)
    block: list[str] = []
    line = stmt.lineno - 1
    while line in comments and comments[line][1]:
        block.insert(0, comments[line][0])
        line -= 1
    return " ".join(block)


def class_fields(cls: type) -> dict[str, FieldSource]:
    """Every annotated field written in ``cls``'s own body (ClassVars left out)."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments = _comments(source)
    classdef = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef))
    fields: dict[str, FieldSource] = {}
    for stmt in classdef.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        annotation = ast.get_source_segment(source, stmt.annotation) or ""
        if annotation.startswith(("ClassVar", "typing.ClassVar")):
            continue
        fields[stmt.target.id] = FieldSource(annotation, _explanation(stmt, comments))
    return fields


def inherited_fields(cls: type) -> dict[str, FieldSource]:
    """:func:`class_fields` over ``cls`` and its project base classes (a subclass wins)."""
    fields: dict[str, FieldSource] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__.startswith("diversefl"):
            fields.update(class_fields(klass))
    return fields
