"""deploy-local keeps every process's log, the ServerApp's own output included: Flower runs the
ServerApp with its output discarded and keeps it on the SuperLink, so the launcher saves it
(``flwr log``) into ``WORKDIR/logs/serverapp.log`` and names Flower's reason when a run fails.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
import tomli_w

from diversefl.flower import FLOWER_AVAILABLE

pytestmark = pytest.mark.skipif(
    not FLOWER_AVAILABLE, reason='flwr is not installed: pip install -e ".[flower]"'
)


def _fake_flwr(folder: Path, body: str) -> Path:
    """An executable ``flwr`` in ``folder`` running the Python ``body``."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "flwr"
    script.write_text(f"#!{sys.executable}\nimport sys, time\n{body}\n")
    script.chmod(0o755)
    return folder


def test_serverapp_log_is_saved_and_a_failed_fetch_says_why(tmp_path, monkeypatch):
    from diversefl.flower.deploy import LocalFederation

    fed = LocalFederation(tmp_path / "work")
    env = fed.env()
    printing = _fake_flwr(
        tmp_path / "ok", "assert sys.argv[1:] == ['log', '7', 'local', '--show']\nprint('why')"
    )
    monkeypatch.setattr(fed, "env", lambda: {**env, "PATH": f"{printing}:{env['PATH']}"})
    path = fed.save_serverapp_log(7)
    assert path == fed.logs / "serverapp.log" and path.read_text() == "why\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    hanging = _fake_flwr(tmp_path / "hang", "time.sleep(60)")
    monkeypatch.setattr(fed, "env", lambda: {**env, "PATH": f"{hanging}:{env['PATH']}"})
    fed.save_serverapp_log(7, timeout=1)  # a SuperLink that does not answer: no exception
    assert "flwr log 7 failed: TimeoutExpired" in path.read_text()
    assert fed.stop() == []


FAILING_CONFIG = {
    "name": "flower-fails",
    "seed": 0,
    "rounds": 1,
    "data": {"dataset": "digits", "partition": "iid"},
    "model": {"name": "softmax"},
    "clients": {"n": 2, "batch": 0.5, "sample": 0.1},
    "optim": {"lr": 0.5, "schedule": "constant", "weight_decay": 0.0},
    "attack": {"name": "none"},
    "aggregator": {"name": "diversefl"},
    "eval": {"every": 1},
}


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_failed_run_leaves_its_reason_in_the_logs(tmp_path, capsys):
    """A real deployment whose ServerApp fails (a reply timeout no node can meet, so no
    sample arrives): exit 1, one error line with Flower's reason, and that reason and the
    traceback in logs/serverapp.log, beside one log per process; nothing survives."""
    from test_flower import _leftovers

    from diversefl.flower.deploy import main

    config = tmp_path / "fails.toml"
    config.write_text(tomli_w.dumps(FAILING_CONFIG))
    work = tmp_path / "work"
    args = [str(config), "--nodes", "2", "--round-timeout", "0.01", "--timeout", "300"]
    try:
        code = main([*args, "--workdir", str(work), "--out", str(tmp_path / "out")])
    finally:
        assert _leftovers(work) == [], "processes survived the deployment"
    err = capsys.readouterr().err.strip().splitlines()
    reason = "no sample within 0.01 s"  # the strategy's words for a node that did not answer
    assert code == 1 and len(err) == 1, err
    assert "ended 'finished:failed'" in err[0] and reason in err[0]
    assert f"{work / 'logs' / 'serverapp.log'}" in err[0]
    logs = {p.name for p in (work / "logs").iterdir()}
    assert {"superlink.log", "supernode-0.log", "supernode-1.log", "worker.log"} <= logs
    served = (work / "logs" / "serverapp.log").read_text()
    assert reason in served and "Traceback" in served and "Starting DiverseFLStrategy" in served
