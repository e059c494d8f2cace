"""The processes of a local Flower federation: a SuperLink, SuperNodes and a compute worker on
127.0.0.1, and the ``flwr`` CLI that talks to them.

:class:`LocalFederation` starts each process in its own process group with its output in
``WORKDIR/logs/<name>.log`` (``superlink``, ``supernode-<i>``, ``worker``), waits until it
answers, submits a run with ``flwr run``, polls its status with ``flwr ls`` (``flwr run`` exits
0 even when the run fails), saves the ServerApp's own output with ``flwr log`` into
``logs/serverapp.log`` (Flower runs the ServerApp with its output discarded and keeps it only
on the SuperLink) and always stops every process it started, including the SuperExec and app
processes Flower spawns below them: each carries a session marker in its environment, so even
processes re-parented to init are found and stopped.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from diversefl.flower.deploy_errors import DeployError, DeployInputError
from diversefl.flower.keys import TlsFiles, make_node_key
from diversefl.flower.workdir import make_workdir, open_log, private_dir, write_file

#: Environment variable carrying the launcher's session id (inherited by every child).
SESSION_ENV = "DIVERSEFL_FLOWER_SESSION"
#: Where :meth:`LocalFederation.save_serverapp_log` writes the ServerApp's output.
SERVERAPP_LOG = "serverapp.log"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(value: Any) -> str:
    """``value`` written as a TOML value (for ``--run-config`` and ``--node-config``).

    Flower splits these options with a pattern that reads a quoted value up to the next quote
    of its kind, so a string holding ``"`` (e.g. ``--set 'name="my run"'``) is written as a TOML
    literal string in single quotes; one holding both kinds of quote, or a line break, cannot
    pass and is refused with the value named."""
    if isinstance(value, str) and '"' in value:
        if "'" in value or "\n" in value or "\r" in value:
            raise DeployInputError(
                f"{value!r}: Flower's --run-config / --node-config cannot carry a value with "
                "both kinds of quote or a line break; drop one kind of quote"
            )
        return f"'{value}'"
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def config_args(values: Mapping[str, Any]) -> str:
    """``k1=v1 k2=v2`` with TOML values, as Flower's ``--*-config`` options expect."""
    return " ".join(f"{k}={toml_value(v)}" for k, v in values.items())


def _session_pids(session: str) -> list[int]:
    """Every live process whose environment carries ``SESSION_ENV=session``."""
    marker = f"{SESSION_ENV}={session}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in env.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class LocalFederation:
    """A SuperLink (and SuperNodes) on 127.0.0.1, stopped on exit: use as a context manager.

    ``workdir`` must be the user's alone (created with mode 0700 when missing; an existing
    one owned by another user or writable by others is refused); the logs, the Flower home,
    the node keys and the worker's key are kept in private directories inside it."""

    def __init__(
        self,
        workdir: Path,
        *,
        simulation: bool = False,
        threads: int = 1,
        tls: TlsFiles | None = None,
        node_auth: bool = False,
    ) -> None:
        if node_auth and tls is None:
            raise ValueError("node_auth needs tls: Flower authenticates SuperNodes only over TLS")
        self.workdir = make_workdir(workdir)
        self.simulation = simulation
        self.tls = tls
        self.node_auth = node_auth
        self.optional: set[int] = set()  # pids whose exit is expected (killed, refused)
        self.session = uuid.uuid4().hex
        self.logs = private_dir(self.workdir / "logs")
        self.flwr_home = private_dir(self.workdir / "flwr-home")
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="dfray", dir="/tmp"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.seen: set[int] = set()
        self.names: dict[int, str] = {}
        self.port = 0
        self.threads = threads
        self.details: dict[int, str] = {}  # run id -> Flower's status details (why it failed)

    # -- environment -----------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The environment of every process started here (and of the ``flwr`` CLI)."""
        env = dict(os.environ)
        bindir = str(Path(sys.executable).parent)
        env.update(
            {
                SESSION_ENV: self.session,
                "PATH": bindir + os.pathsep + env.get("PATH", ""),
                "FLWR_HOME": str(self.flwr_home),
                "FLWR_TELEMETRY_ENABLED": "0",
                "FLWR_DISABLE_UPDATE_CHECK": "1",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_TMPDIR": str(self.ray_tmp),
                "OMP_NUM_THREADS": str(self.threads),
                "DIVERSEFL_FLOWER_THREADS": str(self.threads),
                "PYTHONUNBUFFERED": "1",
                # SuperExec asks for new tasks every 1 s by default: a per-message latency.
                "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.5",
            }
        )
        return env

    def _spawn(self, name: str, cmd: list[str], nice: int = 0) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in its own process group, its output in ``logs/<name>.log``."""
        if nice:
            cmd = ["nice", "-n", str(nice), *cmd]  # exec's the command: same pid
        with open_log(self.logs / f"{name}.log") as log:  # the child keeps its own copy
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=self.workdir,
                start_new_session=True,  # its own process group
            )
        self.procs.append(proc)
        self.names[proc.pid] = name
        self.seen.add(proc.pid)
        return proc

    # -- processes -------------------------------------------------------------------------
    def start_superlink(self, timeout: float = 120.0) -> int:
        """Start the SuperLink on a free port and wait until it answers."""
        import httpx

        self.port = free_port()
        security = self.tls.superlink_args() if self.tls else ["--insecure"]
        if self.node_auth:
            security.append("--enable-supernode-auth")
        cmd = [
            "flower-superlink",
            *security,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
        ]  # no --database: the in-memory state (SQLite locks up under many nodes)
        if self.simulation:
            cmd.append("--simulation")
        proc = self._spawn("superlink", cmd)
        scheme = "https" if self.tls else "http"
        verify: ssl.SSLContext | bool = self.tls.context() if self.tls else True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DeployError(f"flower-superlink exited with {proc.returncode}: {self.logs}")
            try:
                url = f"{scheme}://127.0.0.1:{self.port}/health"
                if httpx.get(url, timeout=2, verify=verify).is_success:
                    self._write_connection()
                    return self.port
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise DeployError(f"flower-superlink did not answer within {timeout:.0f} s")

    def _write_connection(self) -> None:
        """The ``flwr`` CLI's connection to this SuperLink (``FLWR_HOME/config.toml``)."""
        local: dict[str, Any] = {"address": f"127.0.0.1:{self.port}"}
        if self.tls:
            local["root-certificates"] = str(self.tls.ca)
        else:
            local["insecure"] = True
        conf = {"superlink": {"default": "local", "local": local}}
        write_file(self.flwr_home / "config.toml", tomli_w.dumps(conf).encode(), 0o600)

    def start_worker(self) -> str:
        """Start one :mod:`diversefl.flower.worker` for all SuperNodes; return its socket.

        Its key (which lets a process hand the worker requests) is made new for every start
        (mode 0600, never through a symbolic link), so a key file left in the workdir is
        never reused."""
        from diversefl.flower.worker import key_path

        sock = self.workdir / "worker.sock"
        write_file(key_path(sock), secrets.token_bytes(32), 0o600, what="the worker's key")
        cmd = [sys.executable, "-m", "diversefl.flower.worker", "--socket", str(sock)]
        cmd += ["--parent-pid", str(os.getpid()), "--threads", str(self.threads)]
        self._spawn("worker", cmd, nice=5)
        return str(sock)

    def start_supernodes(
        self,
        node_configs: Sequence[Mapping[str, Any]],
        worker: str | None = None,
        timeout: float = 300.0,
        *,
        keys: Sequence[str | os.PathLike[str] | None] | None = None,
        first: int = 0,
        wait: bool = True,
    ) -> list[str]:
        """Start one SuperNode per node config (each with its own Runtime API port) and wait
        until all are connected; with ``worker`` (a worker socket) their ClientApps hand the
        computation to that worker. Returns their names (``supernode-<i>``, i from ``first``).

        ``keys`` gives each node its private key (``--auth-supernode-private-key``) for a
        SuperLink with node authentication. With ``wait=False`` the nodes are not waited for
        and may exit (e.g. a node the SuperLink is expected to refuse).

        Nodes start a few at a time (a burst of Python start-ups on a small machine makes
        Flower's heartbeats time out) and run at a lower priority (``nice`` 5) than the
        SuperLink and the ServerApp, whose heartbeats must not starve either.
        """
        batch = max(2, os.cpu_count() or 2)
        deadline = time.monotonic() + timeout
        security = ["--root-certificates", str(self.tls.ca)] if self.tls else ["--insecure"]
        started = []
        for start in range(0, len(node_configs), batch):
            names = []
            for i in range(start, min(len(node_configs), start + batch)):
                node = dict(node_configs[i])
                if worker:
                    node["worker"] = worker
                cmd = [
                    "flower-supernode",
                    *security,
                    "--superlink",
                    f"127.0.0.1:{self.port}",
                    "--port",
                    str(free_port()),
                    "--node-config",
                    config_args(node),
                ]
                if keys is not None and keys[i] is not None:
                    cmd += ["--auth-supernode-private-key", str(keys[i])]
                name = f"supernode-{first + i}"
                proc = self._spawn(name, cmd, nice=5)
                if not wait:
                    self.optional.add(proc.pid)
                names.append(name)
            if wait:
                self._wait_connected(names, deadline)
            started += names
        return started

    def register_supernode(self, public_key: str | os.PathLike[str]) -> int:
        """``flwr supernode register KEY.pub local``: allow the node holding the matching
        private key to connect (node authentication); returns its node id."""
        out = self.flwr("supernode", "register", str(public_key), "local", "--format", "json")
        payload = json.loads(out[out.index("{") :])
        if not payload.get("success"):
            raise DeployError(f"flwr supernode register failed: {payload}")
        return int(payload["node-id"])

    def node_keys(self, count: int) -> list[Path]:
        """Make and register ``count`` SuperNode key pairs (in ``WORKDIR/keys``, mode 0700);
        return the private keys."""
        folder = private_dir(self.workdir / "keys")
        keys = []
        self.registered_ids = []  # node id of key i, as the SuperLink registered it
        for i in range(count):
            private, public = make_node_key(folder / f"node{i}")
            self.registered_ids.append(self.register_supernode(public))
            keys.append(private)
        return keys

    def supernode_pid(self, index: int) -> int:
        """The pid of SuperNode ``index`` (``supernode-<index>``)."""
        for pid, name in self.names.items():
            if name == f"supernode-{index}":
                return pid
        raise KeyError(f"no supernode-{index}")

    def kill_supernode(self, index: int, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to SuperNode ``index`` alone (not its ClientApp processes, which
        :meth:`stop` still cleans up) and expect it to be gone from now on; returns its pid."""
        pid = self.supernode_pid(index)
        self.optional.add(pid)
        os.kill(pid, sig)
        for proc in self.procs:
            if proc.pid == pid:
                proc.wait(timeout=10)
        return pid

    def _wait_connected(self, names: list[str], deadline: float) -> None:
        """Wait until each named SuperNode logged its node id (it is connected)."""
        pending = set(names)
        while pending:
            self.check_alive()
            for name in list(pending):
                if b"SuperNode ID:" in (self.logs / f"{name}.log").read_bytes():
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                raise DeployError(f"SuperNodes {sorted(pending)} did not connect: {self.logs}")
            time.sleep(0.3)

    # -- the flwr CLI ------------------------------------------------------------------------
    def flwr(self, *args: str, timeout: float = 120.0) -> str:
        """Run the ``flwr`` CLI against this SuperLink; return its stdout."""
        proc = subprocess.run(
            ["flwr", *args],
            capture_output=True,
            text=True,
            env=self.env(),
            cwd=self.workdir,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise DeployError(f"flwr {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def submit(
        self,
        app_dir: Path,
        run_config: Mapping[str, Any],
        federation_config: Mapping[str, Any] | None = None,
    ) -> int:
        """``flwr run APP local --run-config ...``: the new run's id."""
        args = ["run", str(app_dir), "local", "--format", "json"]
        args += ["--run-config", config_args(run_config)]
        if federation_config:
            args += ["--federation-config", config_args(federation_config)]
        out = self.flwr(*args)
        payload = json.loads(out[out.index("{") :])
        if not payload.get("success") or payload.get("run-id") is None:
            raise DeployError(f"flwr run did not start a run: {payload}")
        return int(payload["run-id"])

    def status(self, run_id: int, timeout: float = 120.0) -> str:
        """The run's status from ``flwr ls --run-id ID --format json`` (e.g.
        ``finished:completed``, ``finished:failed``, ``running``); Flower's status details
        (a failed ServerApp's exception) are kept in ``details[run_id]``."""
        out = self.flwr("ls", "local", "--run-id", str(run_id), "--format", "json", timeout=timeout)
        payload = json.loads(out[out.index("{") :])
        runs = payload.get("runs", [])
        if not runs:
            return "unknown"
        self.details[run_id] = str(runs[0].get("status-details", "") or "")
        return str(runs[0].get("status", "unknown"))

    def save_serverapp_log(self, run_id: int, timeout: float = 30.0) -> Path:
        """Write the ServerApp's output for ``run_id`` (``flwr log RUN_ID --show``: Flower
        discards the ServerApp process's own stdout and keeps it on the SuperLink) into
        ``logs/serverapp.log``. Never raises for a SuperLink that is gone or slow: the file
        then says why the log is missing."""
        path = self.logs / SERVERAPP_LOG
        args = ["flwr", "log", str(run_id), "local", "--show"]
        try:
            proc = subprocess.run(
                args, capture_output=True, env=self.env(), cwd=self.workdir, timeout=timeout
            )
            text = proc.stdout
            if proc.returncode != 0:
                text += b"\n[deploy-local] flwr log failed:\n" + proc.stderr
        except (OSError, subprocess.TimeoutExpired) as err:
            text = f"[deploy-local] flwr log {run_id} failed: {type(err).__name__} {err}\n".encode()
        write_file(path, text, 0o600, what="the ServerApp's log")
        return path

    def wait(self, run_id: int, timeout: float, done: Path | None = None) -> str:
        """Wait until the run is finished (or ``timeout`` passes) and return its status.

        Each ``flwr ls`` costs a Python start-up, so the status is polled sparsely (every
        5 s growing to 30 s) while the file ``done`` (the run's summary.json) is watched
        every 0.5 s; once it appears the status is read until Flower reports the end.
        """
        deadline = time.monotonic() + timeout
        status = "unknown"
        interval, next_poll = 5.0, time.monotonic() + 5.0
        while time.monotonic() < deadline:
            self.check_alive()
            finished_file = done is not None and done.exists()
            if finished_file or time.monotonic() >= next_poll:
                try:  # one failed or slow poll says nothing about the run: try again later
                    left = max(5.0, deadline - time.monotonic())
                    status = self.status(run_id, timeout=min(120.0, left))
                except (DeployError, subprocess.TimeoutExpired, ValueError) as err:
                    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                    status = f"unknown (status poll failed: {type(err).__name__} {first})"
                if status.startswith("finished"):
                    return status
                interval = 1.0 if finished_file else min(30.0, interval * 1.5)
                next_poll = time.monotonic() + interval
            time.sleep(0.5)
        raise DeployError(f"run {run_id} still {status!r} after {timeout:.0f} s")

    def check_alive(self) -> None:
        """Raise :class:`DeployError` when a process that should run has exited."""
        for proc in self.procs:
            if proc.poll() is not None and proc.pid not in self.optional:
                name = self.names.get(proc.pid, "?")
                raise DeployError(
                    f"{name} (pid {proc.pid}) exited with {proc.returncode}: {self.logs}"
                )
        self.seen.update(_session_pids(self.session))

    # -- shutdown --------------------------------------------------------------------------
    def _targets(self) -> set[int]:
        """The pids that are this session's now: processes carrying its environment marker,
        and started processes not yet reaped. A reaped process's pid is left out: the system
        may already have given that number to an unrelated process."""
        return set(_session_pids(self.session)) | {p.pid for p in self.procs if p.poll() is None}

    def stop(self, grace: float = 10.0) -> list[int]:
        """Stop every process of this session: SIGTERM, then SIGKILL after ``grace`` seconds.

        Returns the pids still alive afterwards (empty on success).
        """
        pids = self._targets()
        self.seen.update(pids)
        for pid in sorted(pids):
            for kill in (lambda p: os.killpg(p, signal.SIGTERM), lambda p: os.kill(p, 15)):
                try:
                    kill(pid)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not [p for p in self._targets() if _alive(p)]:
                break
            time.sleep(0.2)
        for pid in self._targets():
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        time.sleep(0.2)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)
        return [p for p in self._targets() if _alive(p)]

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
