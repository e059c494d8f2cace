"""deploy-local refuses bad input before it starts any process (fast: nothing is started).

Every case runs with ``subprocess.Popen`` and ``subprocess.run`` replaced by a function that
fails the test, so a check that came only after a SuperLink start would show up here as a
started process, not as a slow federation that fails later.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import tomli_w
from conftest import tiny_config

from diversefl.flower import FLOWER_AVAILABLE

pytestmark = pytest.mark.skipif(
    not FLOWER_AVAILABLE, reason='flwr is not installed: pip install -e ".[flower]"'
)


class StartedProcessError(AssertionError):
    """A process was started although the input was refused."""


@pytest.fixture
def no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test at the first process deploy-local tries to start."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise StartedProcessError(f"a process was started: {args[0] if args else kwargs}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)


def _config(tmp_path: Path, **sections: object) -> str:
    path = tmp_path / "cfg.toml"
    path.write_text(tomli_w.dumps(tiny_config(**sections)))
    return str(path)


def _deploy(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``deploy-local`` with ``args``; its exit status and its stderr."""
    from diversefl.flower.deploy import main

    argv = [*args, "--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "work")]
    code = main(argv)
    return code, capsys.readouterr().err


def _assert_refused(tmp_path: Path, code: int, err: str, *needles: str) -> None:
    """Exit 2, one ``error:`` line naming the problem, and nothing created."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not (tmp_path / "work").exists()  # no workdir, so no log, key or shard
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--round-timeout", "-5", "round_timeout=-5.0: must be > 0"),
        ("--round-timeout", "0", "round_timeout=0.0: must be > 0"),
        ("--round-timeout", "inf", "round_timeout=inf: must be a finite number"),
        ("--timeout", "0", "timeout=0.0: must be > 0"),
        ("--timeout", "nan", "timeout=nan: must be a finite number"),
        ("--nodes", "0", "nodes=0: must be > 0"),
    ],
)
def test_bad_numbers_are_refused_before_any_process(
    tmp_path, capsys, no_processes, option, value, needle
):
    args = [_config(tmp_path), "--nodes", "4", option, value]
    code, err = _deploy(tmp_path, capsys, *args)
    _assert_refused(tmp_path, code, err, needle)


def test_rsa_is_refused_as_a_protocol_before_any_process(tmp_path, capsys, no_processes):
    """RSA's clients keep model copies: the ServerApp cannot run it, so deploy-local says so
    instead of starting a federation whose run ends finished:failed."""
    from diversefl.methods import build_method
    from diversefl.protocols import Protocol

    assert isinstance(build_method("rsa", {}), Protocol)  # what makes it undeployable
    config = _config(tmp_path, aggregator={"name": "rsa"})
    code, err = _deploy(tmp_path, capsys, config, "--nodes", "4")
    _assert_refused(tmp_path, code, err, "aggregator.name='rsa' is a protocol")
    for runtime in ("deployment", "simulation"):  # the Python API refuses it in both runtimes
        from diversefl.flower.deploy import DeployError, deploy_local

        with pytest.raises(DeployError, match="is a protocol"):
            deploy_local(config, 4, tmp_path / "out", runtime=runtime, workdir=tmp_path / "work")
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    ("sections", "extra", "needle"),
    [
        # the config's attack is built from other clients' updates: no node can carry it out,
        # even when --byzantine names another attack for the attacking node
        ({"attack": {"name": "alie", "f": 1}}, ["--byzantine", "1=sign_flip"], "'alie' is built"),
        ({"attack": {"name": "alie", "f": 1}}, [], "'alie' is built"),
        ({"attack": {"name": "sign_flip", "f": 1, "byzantine": "per_round"}}, [], "per_round"),
        ({"aggregator": {"name": "krum"}, "attack": {"name": "none", "f": 2}}, [], "krum"),
        ({"aggregator": {"name": "mean", "bogus": 1}}, [], "bogus"),
        ({"data": {"dataset": "mnist"}}, ["--data-dir", "/nonexistent/dfl"], "/nonexistent/dfl"),
        ({}, ["--byzantine", "x"], "--byzantine 'x': expected a partition id"),
        ({}, ["--data-dir", '/data/it\'s "mine"'], "both kinds of quote"),
    ],
)
def test_undeployable_configs_are_refused_before_any_process(
    tmp_path, capsys, no_processes, sections, extra, needle
):
    code, err = _deploy(tmp_path, capsys, _config(tmp_path, **sections), "--nodes", "4", *extra)
    _assert_refused(tmp_path, code, err, needle)


def test_python_api_checks_min_nodes_and_node_auth_first(tmp_path, no_processes):
    from diversefl.flower.deploy import DeployError, deploy_local

    config = _config(tmp_path)
    work = tmp_path / "work"
    with pytest.raises(DeployError, match=r"min_nodes=5: must lie in 1..nodes=4"):
        deploy_local(config, 4, tmp_path / "out", min_nodes=5, workdir=work)
    with pytest.raises(DeployError, match="max_inflight=-1: must be >= 0"):
        deploy_local(config, 4, tmp_path / "out", max_inflight=-1, workdir=work)
    with pytest.raises(DeployError, match="node_auth needs tls"):
        deploy_local(config, 4, tmp_path / "out", node_auth=True, workdir=work)
    assert not work.exists()


def test_a_run_failure_is_exit_1_and_an_input_error_exit_2(tmp_path, capsys, monkeypatch):
    """The two exit statuses: 2 for an input refused up front, 1 for a federation that was
    started and did not complete."""
    from diversefl.flower import deploy
    from diversefl.flower.deploy import DeployError

    def failed_run(*args: object, **kwargs: object) -> None:
        raise DeployError("run 7 ended 'finished:failed' (ServerApp failed with exception: x)")

    monkeypatch.setattr(deploy, "deploy_local", failed_run)
    code, err = _deploy(tmp_path, capsys, _config(tmp_path), "--nodes", "4")
    assert code == 1 and err.startswith("error: run 7 ended 'finished:failed'")
