"""The Python examples of the README and the docs run as printed (the docs must stay true).

Only what cannot hold on a test machine is adapted: the example's data directory becomes the
test data directory, its run folders go to a temporary folder, and a full run is cut to a few
rounds (by wrapping ``diversefl.run``)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import diversefl
from diversefl import aggregators, attacks
from diversefl.models import MODELS

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").rglob("*.md"))]


def python_blocks(path: Path = README) -> list[str]:
    """Every fenced ```python block of one Markdown file, in order."""
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


EXAMPLES = [
    (path.relative_to(REPO).as_posix(), i, code)
    for path in DOCS
    for i, code in enumerate(python_blocks(path))
]


def test_readme_has_python_examples() -> None:
    blocks = python_blocks()
    assert len(blocks) >= 1
    assert any("diversefl.run(" in b for b in blocks)
    assert len({where for where, _, _ in EXAMPLES}) >= 3  # the docs' examples are collected too


@pytest.mark.parametrize(
    ("where", "index", "code"), EXAMPLES, ids=[f"{w}:{i}" for w, i, _ in EXAMPLES]
)
def test_readme_python_example_runs(
    where: str,
    index: int,
    code: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
) -> None:
    mnist_dir = request.getfixturevalue("mnist_dir") if "diversefl.run(" in code else None
    real_run = diversefl.run
    calls: list[Any] = []

    def short_run(config: Any = None, **kwargs: Any) -> Any:
        kwargs["data_dir"] = mnist_dir
        kwargs["overrides"] = [*(kwargs.get("overrides") or []), "rounds=3", "eval.every=1"]
        # run folders (the default runs/<name>-<time>, or the example's) are under the cwd,
        # the checkout: a temporary folder here
        if kwargs.get("out", True) is not False:
            kwargs["out"] = request.getfixturevalue("tmp_path") / f"run{len(calls)}"
        result = real_run(config, **kwargs)
        calls.append(result)
        return result

    monkeypatch.setattr(diversefl, "run", short_run)
    for registry in (MODELS, aggregators.REGISTRY, attacks.REGISTRY):  # examples may register
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # configs/ paths are repo-relative
    module = types.ModuleType("doc_example")  # a real module: dataclasses look theirs up
    monkeypatch.setitem(sys.modules, "doc_example", module)
    exec(compile(code, f"{where} python block {index}", "exec"), module.__dict__)
    printed = capsys.readouterr().out
    if "print(" in code:
        assert printed.strip(), "an example that prints shows its result"
    if "diversefl.run(" in code:
        assert calls
        for result in calls:  # every run the example makes ran, and printed its accuracy
            assert result.summary["rounds"] == 3
            assert result.metrics[-1]["round"] in (3, "3")
            assert str(result.summary["final_test_accuracy"])[:6] in printed
    if "aggregators.get(" in code:
        assert "torch.Size([1000])" in printed
