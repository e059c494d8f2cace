"""MkDocs hook: adds the reference pages generated from the code (config keys, rules, attacks,
models, command line) to the site before its navigation and links are built."""

from __future__ import annotations

from typing import Any

from mkdocs.structure.files import File, Files
from refdocs.pages import generated_pages


def on_files(files: Files, config: Any) -> Files:
    """Add every generated page; a page that also exists on disk is a build error."""
    for path, markdown in generated_pages().items():
        if files.get_file_from_path(path) is not None:
            raise ValueError(f"docs/{path} is generated at build time: delete the file on disk")
        files.append(File.generated(config, path, content=markdown))
    return files
