"""Which reference pages the site generates, and from what."""

from __future__ import annotations

from collections.abc import Callable

from refdocs.cli_ref import cli_page
from refdocs.config_ref import config_page
from refdocs.models_ref import models_page
from refdocs.registry_ref import aggregators_page, attacks_page

GENERATORS: dict[str, Callable[[], str]] = {
    "reference/config.md": config_page,
    "reference/aggregators.md": aggregators_page,
    "reference/attacks.md": attacks_page,
    "reference/models.md": models_page,
    "reference/cli.md": cli_page,
}


def generated_pages() -> dict[str, str]:
    """Every generated page: its path under docs/ and its Markdown."""
    return {path: make() for path, make in GENERATORS.items()}
