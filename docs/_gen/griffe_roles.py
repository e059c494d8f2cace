"""Griffe extension for the Python API page: Sphinx roles in the project's docstrings
(``:func:`name```, ``:class:`~a.B```) rendered as inline code, as the generated pages do."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import griffe

sys.path.insert(0, str(Path(__file__).parent))  # loaded by path, beside the refdocs package
from refdocs.text import roles_as_code  # noqa: E402


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring's roles once griffe has loaded the object."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Replace ``:role:`target``` by `` `target` `` in ``obj``'s docstring."""
        if obj.docstring is not None:
            obj.docstring.value = roles_as_code(obj.docstring.value)
