"""Sweeps on Ray (``diversefl sweep --ray``): the run files equal a serial sweep's, finished
cells are not run again, a cell's returned files are checked before anything is written, a
failed cell is reported while the others finish, and on a two-node cluster started here a
worker killed mid-run is retried into the same files."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import torch
from conftest import hold_lock, tiny_config

from diversefl.cli import main
from diversefl.config import ConfigError
from diversefl.experiments.ray_payload import (
    PayloadError,
    PayloadLimits,
    check_payload,
    install_payload,
    pack_run_dir,
)
from diversefl.experiments.ray_sweep import RayOptions, check_options, run_ray_sweep
from diversefl.experiments.sweep import expand, run_sweep
from diversefl.results import load_checkpoint

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="ray is not installed (diversefl[ray])"
)
SMALL_STORE = 100 * 1024 * 1024  # bytes: a small object store keeps a test Ray instance light


def _grid(rounds: int = 20, **sweep: Any) -> dict:
    raw = tiny_config(rounds=rounds, attack={"name": "none", "f": 1})
    raw["eval"] = {"every": 5, "checkpoint_every": 10}
    raw["sweep"] = sweep
    return raw


FOUR = {"aggregators": ["mean", "diversefl"], "attacks": ["none", "sign_flip"]}


def _serial(raw: dict, out: Path) -> None:
    """The grid run by a plain sweep in this process, with one torch thread as each Ray task
    has (another thread count may sum in another order: other numbers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_sweep(expand(raw), out, progress=False, echo=lambda m: None)
    finally:
        torch.set_num_threads(threads)


def _metrics_without_time(path: Path) -> list[list[str]]:
    """metrics.csv's rows without the ``seconds`` column (wall time)."""
    rows = [line.split(",") for line in path.read_text().splitlines()]
    drop = rows[0].index("seconds")
    return [r[:drop] + r[drop + 1 :] for r in rows]


def _same_state(a: Any, b: Any) -> bool:
    """Checkpoint states equal: tensors bit for bit, other values by ==."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def assert_same_run(got: Path, want: Path) -> None:
    """The run files of ``got`` are those of ``want`` up to wall times: config.toml and
    decisions.csv byte for byte, metrics.csv but its seconds column, summary.json but its
    wall_seconds, the checkpoint's state (model, optimiser, generators) bit for bit."""
    assert sorted(p.name for p in got.iterdir() if p.name != ".lock") == sorted(
        p.name for p in want.iterdir() if p.name != ".lock"
    )
    for name in ("config.toml", "decisions.csv"):
        assert (got / name).read_bytes() == (want / name).read_bytes(), f"{got.name}/{name}"
    assert _metrics_without_time(got / "metrics.csv") == _metrics_without_time(want / "metrics.csv")
    s_got, s_want = (json.loads((d / "summary.json").read_text()) for d in (got, want))
    assert s_got.pop("wall_seconds") > 0 and s_want.pop("wall_seconds") > 0
    assert s_got == s_want
    c_got, c_want = (load_checkpoint(d / "checkpoint.pt") for d in (got, want))
    for state in (c_got, c_want):
        state.pop("seconds")  # wall time
        state["logs"].pop("metrics.csv")  # the digest of a file with wall times in it
    assert _same_state(c_got, c_want)


# --- (c) the payload a task returns: checked before anything is written -------------------


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, bytes]]:
    """One finished cell (mean, no attack) and its run files as a task returns them."""
    import diversefl

    cell = expand(_grid(aggregators=["mean"], attacks=["none"]))[0]
    run_dir = tmp_path_factory.mktemp("payload") / "run"
    diversefl.run(cell.config, out=run_dir, progress=False)
    return cell, pack_run_dir(run_dir)


@pytest.mark.parametrize(
    "name",
    ["../escape", "/etc/passwd", "sub/summary.json", "..", ".lock", ".running", "", "a\\b",
     "nul\x00.csv", "x" * 101, 3],
)  # fmt: skip
def test_payload_refuses_names_outside_the_run_folder(payload, name):
    _, files = payload
    with pytest.raises(PayloadError, match=r"result of c: file name .* is not a plain file name"):
        check_payload({**files, name: b"x"}, "c")


def test_payload_refuses_bad_values_sizes_and_missing_files(payload):
    _, files = payload
    with pytest.raises(PayloadError, match=r"result of c: expected a mapping"):
        check_payload([("summary.json", b"{}")], "c")
    with pytest.raises(PayloadError, match=r"metrics.csv holds bytearray, not bytes"):
        check_payload({**files, "metrics.csv": bytearray(b"round\n")}, "c")
    total = sum(len(v) for v in files.values())
    with pytest.raises(PayloadError, match=rf"the files pass {total - 1} bytes at "):
        check_payload(files, "c", PayloadLimits(max_bytes=total - 1))
    assert check_payload(files, "c", PayloadLimits(max_bytes=total)) == files
    with pytest.raises(PayloadError, match=r"6 files, more than the 5 allowed"):
        check_payload({**files, "notes.txt": b""}, "c", PayloadLimits(max_files=5))
    without = {k: v for k, v in files.items() if k != "summary.json"}
    with pytest.raises(PayloadError, match=r"no summary.json, which every finished run writes"):
        check_payload(without, "c")


def test_install_writes_the_run_and_replaces_an_interrupted_one(payload, tmp_path: Path):
    cell, files = payload
    run_dir = tmp_path / cell.dirname
    run_dir.mkdir()
    (run_dir / "metrics.csv").write_text("round\n1\n")  # an interrupted earlier attempt
    (run_dir / "checkpoint.pt").write_bytes(b"old")
    (run_dir / ".incoming-x1").mkdir()  # left by a collector killed while writing
    (run_dir / ".incoming-x1" / "summary.json").write_text("{}")
    result = install_payload(cell, run_dir, files)
    assert result.summary == json.loads(files["summary.json"]) and not result.elsewhere
    for name, data in files.items():
        assert (run_dir / name).read_bytes() == data
    assert sorted(p.name for p in run_dir.iterdir()) == sorted([*files, ".lock"])


def test_install_refuses_a_payload_of_another_config_or_a_bad_checkpoint(payload, tmp_path):
    """Nothing under --out changes when the files do not read back as the cell's finished run."""
    from diversefl.results import RunDirError

    cell, files = payload
    other = expand(_grid(rounds=21, aggregators=["mean"], attacks=["none"]))[0]
    with pytest.raises(ConfigError, match=r"different config \(rounds: saved 20, grid 21\)"):
        install_payload(other, tmp_path / "new", files)
    assert not (tmp_path / "new").exists()  # made for the lock, removed again
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "metrics.csv").write_text("round\n1\n")
    with pytest.raises(RunDirError, match=r"checkpoint.pt: not a readable checkpoint"):
        install_payload(cell, kept, {**files, "checkpoint.pt": b"not a checkpoint"})
    assert sorted(p.name for p in kept.iterdir()) == [".lock", "metrics.csv"]
    assert (kept / "metrics.csv").read_text() == "round\n1\n"


def test_install_leaves_a_cell_another_sweep_process_holds(payload, tmp_path: Path):
    cell, files = payload
    run_dir = tmp_path / cell.dirname
    child = hold_lock(run_dir)
    try:
        result = install_payload(cell, run_dir, files)
    finally:
        child.stdin.close()
        child.wait()
    assert result.summary is None and result.elsewhere.startswith("running in pid ")
    assert [p.name for p in run_dir.iterdir()] == [".lock"]


def test_options_are_checked_before_ray_is_asked():
    for options, message in [
        (RayOptions(address="grid.toml"), r"--ray grid.toml: expected no value"),
        (RayOptions(threads=0), r"--threads 0: a cell needs at least one CPU thread"),
        (RayOptions(gpu_fraction=1.5), r"--gpu-fraction 1.5: a share of one GPU"),
        (RayOptions(retries=-1), r"--retries -1: expected 0 or more"),
    ]:
        with pytest.raises(ConfigError, match=message):
            check_options(options)
    for address in ("local", "auto", "127.0.0.1:6379", "head-0.cluster:6379", "ray://h:10001"):
        check_options(RayOptions(address=address))


@needs_ray
def test_an_address_where_nothing_listens_fails_at_once(tmp_path: Path):
    """Ray would retry the connection for minutes; the sweep says so at once, writing nothing."""
    cells = expand(_grid(aggregators=["mean"], attacks=["none"]))
    port = _free_port()  # free: nothing listens there
    start = time.monotonic()
    with pytest.raises(ConfigError, match=rf"--ray 127.0.0.1:{port}: nothing answers there"):
        run_ray_sweep(cells, tmp_path / "runs", RayOptions(address=f"127.0.0.1:{port}"))
    assert time.monotonic() - start < 5 and not (tmp_path / "runs").exists()


def test_cli_ray_only_options_need_ray_and_ray_needs_the_extra(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "grid.toml"
    cfg.write_text(tomli_w.dumps(_grid(aggregators=["mean"], attacks=["none"])))
    out = str(tmp_path / "runs")
    assert main(["sweep", str(cfg), "--out", out, "--threads", "2"]) == 2
    assert "error: --threads sets what each run asks a Ray cluster for: add --ray" in (
        capsys.readouterr().err
    )
    assert main(["sweep", str(cfg), "--out", out, "--ray", "auto", "--jobs", "2"]) == 2
    assert "error: --jobs 2: sizes the local instance" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    assert main(["sweep", str(cfg), "--out", out, "--ray"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err == "error: --ray needs Ray, which is not installed: pip install 'diversefl[ray]'"
    assert not (tmp_path / "runs").exists()


# --- (a) and (b): a local Ray instance --------------------------------------------------


@needs_ray
@pytest.mark.slow
def test_ray_sweep_writes_the_files_a_serial_sweep_writes(tmp_path: Path):
    """The sweep starts its own local instance (and stops it): every cell's files equal a
    serial sweep's, sweep.csv lists the cells in grid order, and a second call finds all done."""
    import ray

    raw = _grid(**FOUR)
    _serial(raw, tmp_path / "serial")
    messages: list[str] = []
    options = RayOptions(cpus=2, object_store_bytes=SMALL_STORE)
    result = run_ray_sweep(expand(raw), tmp_path / "ray", options, echo=messages.append)
    assert not ray.is_initialized()  # started here, so stopped here
    assert result.failed == {}
    assert messages[0] == "ray: 4 of 4 runs as tasks, 2 CPUs in the cluster, 1 CPU per run"
    assert (
        messages[-1].endswith(" | running 0, failed 0")
        and "4/4 this sweep, all done" in (messages[-1])
    )
    for cell in expand(raw):
        assert_same_run(tmp_path / "ray" / cell.dirname, tmp_path / "serial" / cell.dirname)
    serial_csv = (tmp_path / "serial" / "sweep.csv").read_text().splitlines()
    ray_csv = (tmp_path / "ray" / "sweep.csv").read_text().splitlines()
    assert [r.split(",")[:3] for r in ray_csv] == [r.split(",")[:3] for r in serial_csv]
    again: list[str] = []
    run_ray_sweep(expand(raw), tmp_path / "ray", options, echo=again.append)
    assert len(again) == 4 and all("done already" in m for m in again)  # Ray not even started


@pytest.fixture(scope="class")
def local_ray():
    """A local Ray instance this process is connected to, for the tests of a class."""
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=SMALL_STORE,
        include_dashboard=False,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


@needs_ray
@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
@pytest.mark.filterwarnings("ignore::FutureWarning")  # Ray's note on its future defaults
class TestOnARunningInstance:
    """Sweeps that find this process connected to Ray already use it and leave it running."""

    def test_finished_cells_are_not_submitted_again(self, tmp_path: Path):
        import ray

        raw = _grid(**FOUR)
        cells = expand(raw)
        _serial(raw, tmp_path)
        for run_dir in tmp_path.glob("diversefl__*"):  # these two still have to run
            for path in run_dir.iterdir():
                path.unlink()
            run_dir.rmdir()
        kept = {p: p.stat().st_mtime_ns for p in tmp_path.glob("mean__*/*")}
        messages: list[str] = []
        result = run_ray_sweep(cells, tmp_path, echo=messages.append)
        assert [m.split(" (acc")[0] for m in messages[:3]] == [
            "[1/4] mean__none__seed0: done already",
            "[2/4] mean__sign_flip__seed0: done already",
            "ray: 2 of 4 runs as tasks, 2 CPUs in the cluster, 1 CPU per run",
        ]
        assert sorted(m.split(":")[0] for m in messages[3:]) == [
            "[3/4] diversefl__none__seed0",
            "[4/4] diversefl__sign_flip__seed0",
        ]
        assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("mean__*/*")} == kept
        assert [r["run_dir"] for r in result.rows] == [c.dirname for c in cells]
        assert ray.is_initialized()  # found running, so left running

    def test_a_failing_cell_is_reported_and_the_others_finish(self, tmp_path: Path, capsys):
        """From the command line: the error of the cell whose model diverges, exit status 1,
        the other cell written and in sweep.csv, nothing written for the failed one."""
        wild = {"label": "wild", "name": "mean"}
        wild["set"] = {"optim.lr": 1e38, "optim.weight_decay": 1e38}  # diverges in round 2
        cfg = tmp_path / "grid.toml"
        cfg.write_text(tomli_w.dumps(_grid(aggregators=["mean", wild], attacks=["none"])))
        out = tmp_path / "runs"
        assert main(["sweep", str(cfg), "--out", str(out), "--ray", "--quiet"]) == 1
        captured = capsys.readouterr()
        err = " ".join(captured.err.split())
        assert "error: wild__none__seed0: ModelDivergedError: round 2: the model's weights" in err
        assert "error: 1 run(s) failed; the others are in sweep.csv" in err
        assert "[2/2] wild__none__seed0: FAILED: ModelDivergedError: round 2" in captured.out
        assert (out / "mean__none__seed0" / "summary.json").is_file()
        assert not (out / "wild__none__seed0").exists()
        rows = (out / "sweep.csv").read_text().splitlines()
        assert len(rows) == 2 and rows[1].startswith("mean,none,0,")


# --- (d) a two-node cluster on this machine, one worker killed mid-run --------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_node(args: list[str], temp_dir: Path, log: Path) -> subprocess.Popen:
    """``ray start ... --block`` in a session of its own (so that every process of the node,
    workers included, can be found and ended by its session id), once it says it started."""
    ray_cli = Path(sys.executable).with_name("ray")
    cmd = [str(ray_cli), "start", *args, "--num-cpus=1", "--node-ip-address=127.0.0.1"]
    cmd += [f"--object-store-memory={SMALL_STORE}", f"--temp-dir={temp_dir}", "--block"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    fh = log.open("w")
    proc = subprocess.Popen(
        cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while "Ray runtime started" not in log.read_text():
        assert proc.poll() is None, f"ray start failed: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "ray start did not finish in 120 s"
        time.sleep(0.3)
    return proc


def _session_processes(sid: int) -> dict[int, str]:
    """pid -> command line of the processes in session ``sid`` (Linux /proc)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[3]) == sid:
            found[int(stat.parent.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def _stop_node(proc: subprocess.Popen) -> None:
    """End a node started by :func:`_start_node`: SIGTERM to its ``ray start`` (which stops
    the node's processes), then SIGKILL to whatever of its session is left."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in _session_processes(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _kill_a_running_cell(sids: list[int], driver: subprocess.Popen) -> str:
    """SIGKILL the first Ray worker process, in any of the node sessions ``sids``, seen running
    a cell's task for half a second; the killed process's title (``ray::diversefl <cell>``).
    Any node will do: which node Ray gives the first tasks to is a race (a node that has just
    joined may not be offered any before the others finish), a task on some node is not."""
    seen: dict[int, float] = {}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and driver.poll() is None:
        tasks = {
            p: c
            for sid in sids
            for p, c in _session_processes(sid).items()
            if c.startswith("ray::diversefl ")
        }
        for pid, title in tasks.items():
            if time.monotonic() - seen.setdefault(pid, time.monotonic()) >= 0.5:
                os.kill(pid, signal.SIGKILL)
                return title.strip()
        time.sleep(0.05)
    raise AssertionError("no cell ran on any node while the sweep ran")


@needs_ray
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_cluster_with_a_worker_killed_mid_run_gives_the_serial_results(tmp_path: Path):
    """A head and one worker node (one CPU each) started with `ray start`, a 12-cell grid run
    by `diversefl sweep --ray 127.0.0.1:PORT`, the Ray worker process running one of the cells
    killed: Ray runs that cell again and all 12 equal a serial sweep's."""
    raw = _grid(
        rounds=600,
        aggregators=["mean", "median", "diversefl"],
        attacks=["none", "sign_flip"],
        seeds=[0, 1],
    )
    raw["eval"] = {"every": 100, "checkpoint_every": 300}
    cfg = tmp_path / "grid.toml"
    cfg.write_text(tomli_w.dumps(raw))
    _serial(raw, tmp_path / "serial")
    # short paths: Ray's socket paths under the temp dir must stay under 108 characters
    root = Path(tempfile.mkdtemp(prefix="dfl-ray-", dir="/tmp"))
    port = _free_port()
    nodes: list[subprocess.Popen] = []
    try:
        head_args = ["--head", f"--port={port}", f"--ray-client-server-port={_free_port()}"]
        head_args += ["--include-dashboard=false", "--disable-usage-stats"]
        nodes.append(_start_node(head_args, root / "head", root / "head.log"))
        worker_args = [f"--address=127.0.0.1:{port}", "--disable-usage-stats"]
        nodes.append(_start_node(worker_args, root / "worker", root / "worker.log"))
        out = tmp_path / "ray"
        driver = subprocess.Popen(
            [sys.executable, "-m", "diversefl.cli", "sweep", str(cfg), "--out", str(out)]
            + ["--ray", f"127.0.0.1:{port}", "--quiet"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        killed = _kill_a_running_cell([node.pid for node in nodes], driver)
        output, _ = driver.communicate(timeout=300)
        assert driver.returncode == 0, output[-3000:]
    finally:
        for node in reversed(nodes):
            _stop_node(node)
        shutil.rmtree(root, ignore_errors=True)
    assert killed.startswith("ray::diversefl ")
    assert "ray: 12 of 12 runs as tasks, 2 CPUs in the cluster, 1 CPU per run" in output
    for cell in expand(raw):
        assert_same_run(out / cell.dirname, tmp_path / "serial" / cell.dirname)
