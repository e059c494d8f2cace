"""The README's Python examples run as printed (the README must stay true).

Only what cannot hold on a test machine is adapted: the example's data directory becomes the
test data directory and a full run is cut to a few rounds (by wrapping ``diversefl.run``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import diversefl
from diversefl import aggregators, attacks
from diversefl.models import MODELS

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    """Every fenced ```python block of the README, in order."""
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples() -> None:
    blocks = python_blocks()
    assert len(blocks) >= 1
    assert any("diversefl.run(" in b for b in blocks)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_example_runs(
    index: int, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    code = python_blocks()[index]
    mnist_dir = request.getfixturevalue("mnist_dir") if "diversefl.run(" in code else None
    real_run = diversefl.run
    calls: list[Any] = []

    def short_run(config: Any = None, **kwargs: Any) -> Any:
        kwargs["data_dir"] = mnist_dir
        kwargs["overrides"] = [*(kwargs.get("overrides") or []), "rounds=3", "eval.every=1"]
        # the default run folder is runs/<name>-<time> under the cwd (the checkout): not here
        kwargs.setdefault("out", request.getfixturevalue("tmp_path") / f"run{len(calls)}")
        result = real_run(config, **kwargs)
        calls.append(result)
        return result

    monkeypatch.setattr(diversefl, "run", short_run)
    for registry in (MODELS, aggregators.REGISTRY, attacks.REGISTRY):  # examples may register
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # configs/ paths are repo-relative
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    assert printed.strip(), "every README example prints its result"
    if "diversefl.run(" in code:
        assert calls
        for result in calls:  # every run the example makes ran, and printed its accuracy
            assert result.summary["rounds"] == 3
            assert result.metrics[-1]["round"] in (3, "3")
            assert str(result.summary["final_test_accuracy"])[:6] in printed
    if "aggregators.get(" in code:
        assert "torch.Size([1000])" in printed
