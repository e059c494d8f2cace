"""The light install (``pip install diversefl``: no matplotlib, Flower, pyarrow or pillow) runs
the demo, runs and sweeps; what needs an extra says which one to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_config

import diversefl
from diversefl.cli import main
from diversefl.data.datasets import DataError

OPTIONAL = ("matplotlib", "flwr", "pyarrow", "PIL")

_WITHOUT_EXTRAS = """
import sys

class Uninstalled:  # `import name` fails as if the package were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {optional!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

sys.meta_path.insert(0, Uninstalled())
from diversefl.cli import main
code = main(["run", "--rounds", "2", "--quiet", "--out", sys.argv[1]])
code = code or main(["run", "paper/mnist-softmax", "--set", "data.dataset='digits'",
                     "--rounds", "2", "--quiet", "--out", sys.argv[2]])
code = code or main(["plot", sys.argv[2], "--table"])
leaked = sorted(n for n in {optional!r} if n in sys.modules)
print("leaked", leaked)
sys.exit(code)
"""


@pytest.mark.slow  # 2 s or more on a 2-core CPU
def test_demo_run_and_table_need_no_optional_package(tmp_path: Path):
    script = _WITHOUT_EXTRAS.format(optional=OPTIONAL)
    demo, run = tmp_path / "demo", tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-c", script, str(demo), str(run)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "leaked []" in out.stdout
    assert (demo / "diversefl" / "summary.json").is_file() and (demo / "mean").is_dir()
    assert (run / "metrics.csv").is_file()


def test_plot_without_matplotlib_names_the_extra(tmp_path: Path, monkeypatch, capsys):
    diversefl.run(tiny_config(rounds=2), out=tmp_path / "r")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["plot", str(tmp_path / "r"), "--out", str(tmp_path / "r.png")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err == "error: figures need matplotlib, which is not installed: pip install " + (
        "'diversefl[plots]'"
    )
    assert not (tmp_path / "r.png").exists()


def test_other_missing_modules_still_raise(monkeypatch):
    """Only an error that says what to install becomes one line; a real bug stays loud."""
    import argparse

    from diversefl import cli

    def broken(args: argparse.Namespace) -> int:
        import a_module_that_is_not_there  # noqa: F401

        return 0

    class Parser:
        def parse_args(self, argv: list[str]) -> argparse.Namespace:
            return argparse.Namespace(func=broken)

    monkeypatch.setattr(cli, "build_parser", Parser)
    with pytest.raises(ModuleNotFoundError, match="a_module_that_is_not_there"):
        main(["presets"])


def test_image_folders_without_pillow_name_the_extra(tmp_path: Path, monkeypatch):
    from diversefl.data.images import _read_image

    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(DataError, match=r"needs pillow.*pip install 'diversefl\[files\]'"):
        _read_image(tmp_path / "a.png", None)
