"""The documentation site's reference pages are generated from the code and stay complete: every
config key, every registered rule and attack and every subcommand has its entry (a new key, rule
or command without documentation fails here), and the site builds with ``mkdocs build --strict``
where MkDocs is installed (CI builds it on its own as well)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel

from diversefl.attacks import REGISTRY as ATTACKS
from diversefl.cli import build_parser
from diversefl.config import Config
from diversefl.methods import METHODS

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "docs" / "_gen"))

from refdocs import cli_ref, config_ref, models_ref, registry_ref, source, text  # noqa: E402
from refdocs.pages import generated_pages  # noqa: E402


def schema_keys() -> list[str]:
    """Every dotted config key, read straight from the pydantic schema."""
    keys = []
    for name, field in Config.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            keys += [f"{name}.{sub}" for sub in section.model_fields]
        else:
            keys.append(name)
    return keys


def test_every_config_key_is_in_the_config_reference() -> None:
    page = config_ref.config_page()
    keys = schema_keys()
    assert {"rounds", "data.dataset", "aggregator.assumed_f", "engine.grads"} <= set(keys)
    missing = [k for k in keys if f'<a id="{k}"></a>' not in page]
    assert not missing, f"config keys without a reference entry: {missing}"


def test_config_reference_shows_type_default_and_meaning() -> None:
    page = config_ref.config_page()
    row = next(line for line in page.splitlines() if '<a id="clients.n"></a>' in line)
    assert "`int` >= 1" in row and "`23`" in row and "Number of clients" in row
    row = next(line for line in page.splitlines() if '<a id="attack.name"></a>' in line)
    for name in ATTACKS.names():  # the allowed names come from the registry, linked
        assert f"[`{name}`](attacks.md#{name})" in row


def test_a_config_key_without_a_comment_fails_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module_file = tmp_path / "undocumented_section.py"
    module_file.write_text(
        textwrap.dedent(
            '''
            from pydantic import BaseModel

            class Section(BaseModel):
                """A section."""

                said: int = 1  # explained
                # explained above
                above: int = 2
                silent: int = 3
            '''
        )
    )
    spec = importlib.util.spec_from_file_location("undocumented_section", module_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "undocumented_section", module)  # inspect finds its source
    spec.loader.exec_module(module)
    with pytest.raises(text.DocsError, match=r"config key demo\.silent has no comment"):
        config_ref.section_text("demo", module.Section)
    fields = source.class_fields(module.Section)
    assert fields["said"].comment == "explained" and fields["above"].comment == "explained above"
    assert fields["silent"].comment == ""


def test_every_rule_and_attack_is_in_its_reference() -> None:
    pages = {"aggregator": registry_ref.aggregators_page(), "attack": registry_ref.attacks_page()}
    for kind, registry in (("aggregator", METHODS), ("attack", ATTACKS)):
        assert len(registry) >= 10
        for name in registry.names():
            assert f"## `{name}` {{#{name}}}" in pages[kind], f"{kind} {name} undocumented"
    assert '<a id="diversefl.min_cosine"></a>' in pages["aggregator"]
    assert '<a id="gaussian.sigma"></a>' in pages["attack"]


def test_client_count_limits_come_from_each_rules_own_check() -> None:
    """Krum needs n > 2f + 2 and Bulyan n >= 4f + 3 (the papers' bounds, by hand)."""
    assert registry_ref.limit_text(METHODS["krum"]).endswith(
        "f = 1: n >= 5, f = 2: n >= 7, f = 5: n >= 13."
    )
    assert "f = 5: n >= 23" in registry_ref.limit_text(METHODS["bulyan"])
    assert registry_ref.limit_text(METHODS["diversefl"]) == ""  # any n


def cli_subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    """Every leaf subcommand of ``parser``, walked through argparse's own choices."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = cli_subcommands(sub, f"{prefix}{name} ")
                found += nested or [f"{prefix}{name}"]
    return found


def test_every_subcommand_is_in_the_cli_reference() -> None:
    page = cli_ref.cli_page()
    commands = cli_subcommands(build_parser())
    assert {"run", "sweep", "plot", "deploy-local", "data fetch", "samples"} <= set(commands)
    for command in commands:
        assert f"## `diversefl {command}`" in page, f"diversefl {command} undocumented"
    for option in ("--resume", "--only", "--seed-spread", "--node-auth", "--base-url"):
        assert f"`{option}" in page


def test_model_parameter_counts_are_counted_on_built_models() -> None:
    page = models_ref.models_page()
    assert "Parameters: 7,850 (MNIST / Fashion-MNIST)" in page  # 784 * 10 + 10
    assert "199,210 (MNIST / Fashion-MNIST)" in page  # 784*200+200 + 200*200+200 + 200*10+10


def test_docstrings_become_markdown() -> None:
    doc = "Use :func:`~a.b.c` and :class:`x.Y`.\n\nParameters\n----------\nsigma\n    The std.\n"
    assert text.docstring_markdown(doc) == (
        "Use `c` and `x.Y`.\n\n\n**Parameters**\n\n- `sigma`: The std."
    )
    assert text.cell("a | b `c | d` runs/<name>") == "a \\| b `c | d` runs/&lt;name>"
    assert text.cell("``x | y`` and `<z>`") == "``x | y`` and `<z>`"


def test_generated_pages_are_not_also_on_disk() -> None:
    pages = generated_pages()
    assert set(pages) >= {"reference/config.md", "reference/cli.md", "reference/attacks.md"}
    for path in pages:
        assert not (REPO / "docs" / path).exists(), f"docs/{path} is generated: delete the file"


@pytest.mark.slow  # 2 s or more on a 2-core CPU
def test_site_builds_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    config_html = (tmp_path / "reference" / "config" / "index.html").read_text()
    assert 'id="aggregator.assumed_f"' in config_html
    assert (tmp_path / "reference" / "python-api" / "index.html").read_text().count("run(") >= 1
