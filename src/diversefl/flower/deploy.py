"""Run a diversefl config as a real Flower federation on this machine.

:func:`deploy_local` starts a SuperLink and N SuperNodes on 127.0.0.1 (free ports, one process
group each), submits the app with ``flwr run``, waits for the run to end, checks its status with
``flwr ls --format json`` (``flwr run`` itself exits 0 even when the run failed) and always stops
every process it started, including the SuperExec and app processes Flower spawns below them:
each carries a session marker in its environment, so even processes re-parented to init are
found and stopped. With ``runtime="simulation"`` the same SuperLink runs Flower's simulation
runtime (Ray) instead of SuperNodes.

With ``tls`` (:class:`TlsFiles`: a CA certificate, and a server certificate and key signed by
it) the SuperLink serves HTTPS and the SuperNodes and the ``flwr`` CLI verify it against the CA;
``node_auth`` adds SuperNode authentication: each node gets its own EC key pair, its public key
is registered with ``flwr supernode register`` and the node signs its requests with the private
key (the SuperLink refuses unregistered nodes; Flower allows this only over TLS).

Command line (the ``diversefl deploy-local`` command calls the same function)::

    python -m diversefl.flower.deploy CONFIG --nodes N [--out DIR] [--byzantine 3=sign_flip]
        [--certificates CA,CERT,KEY [--node-auth]] [--round-timeout S]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

#: Environment variable carrying the launcher's session id (inherited by every child).
SESSION_ENV = "DIVERSEFL_FLOWER_SESSION"
REPO_ROOT = Path(__file__).resolve().parents[3]


class DeployError(RuntimeError):
    """The federation could not be started, or the run did not finish successfully."""


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
            raise DeployError(
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
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # zombies are dead


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS SuperLink: the CA certificate that nodes and the CLI trust, and the
    server's certificate (with a SAN for the address the nodes dial) and private key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def parse(cls, spec: str) -> TlsFiles:
        """``CA,CERT,KEY`` (three paths), or a directory holding ``ca.crt``, ``server.pem``
        and ``server.key``."""
        parts = [Path(p).expanduser().resolve() for p in spec.split(",")]
        if len(parts) == 1:
            d = parts[0]
            parts = [d / "ca.crt", d / "server.pem", d / "server.key"]
        if len(parts) != 3:
            raise ValueError(f"certificates {spec!r}: expected CA,CERT,KEY or a directory")
        missing = [str(p) for p in parts if not p.is_file()]
        if missing:
            raise ValueError(f"certificate files not found: {', '.join(missing)}")
        return cls(*parts)

    def context(self) -> ssl.SSLContext:
        """A client SSL context that trusts only ``ca`` (to check the SuperLink)."""
        return ssl.create_default_context(cafile=str(self.ca))

    def superlink_args(self) -> list[str]:
        """The ``flower-superlink`` options that turn TLS on."""
        return [
            "--ssl-ca-certfile",
            str(self.ca),
            "--ssl-certfile",
            str(self.cert),
            "--ssl-keyfile",
            str(self.key),
        ]


def make_node_key(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write a SuperNode key pair (EC P-384, OpenSSH format, as ``ssh-keygen -t ecdsa -b 384``
    makes): the private key at ``path`` (mode 0600), the public key at ``path.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    private = Path(path)
    private.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
    public = private.with_name(private.name + ".pub")
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b"\n"
    )
    return private, public


@dataclass
class DeployResult:
    """What :func:`deploy_local` did."""

    run_id: int | None
    status: str  # e.g. "finished:completed"
    out: Path
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)
    logs: Path | None = None
    pids: list[int] = field(default_factory=list)  # every process seen in the session

    @property
    def ok(self) -> bool:
        """True when the run finished successfully and wrote its summary."""
        return self.status.endswith("completed") and bool(self.summary)


class LocalFederation:
    """A SuperLink (and SuperNodes) on 127.0.0.1, stopped on exit: use as a context manager."""

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
        self.workdir = Path(workdir)
        self.simulation = simulation
        self.tls = tls
        self.node_auth = node_auth
        self.optional: set[int] = set()  # pids whose exit is expected (killed, refused)
        self.session = uuid.uuid4().hex
        self.logs = self.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.flwr_home = self.workdir / "flwr-home"
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="dfray", dir="/tmp"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.seen: set[int] = set()
        self.names: dict[int, str] = {}
        self.port = 0
        self.threads = threads

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
        log = (self.logs / f"{name}.log").open("wb")
        if nice:
            cmd = ["nice", "-n", str(nice), *cmd]  # exec's the command: same pid
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(),
            cwd=self.workdir,
            start_new_session=True,  # its own process group
        )
        log.close()
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
        local: dict[str, Any] = {"address": f"127.0.0.1:{self.port}"}
        if self.tls:
            local["root-certificates"] = str(self.tls.ca)
        else:
            local["insecure"] = True
        conf = {"superlink": {"default": "local", "local": local}}
        (self.flwr_home / "config.toml").write_text(tomli_w.dumps(conf))

    def start_worker(self) -> str:
        """Start one :mod:`diversefl.flower.worker` for all SuperNodes; return its socket."""
        from diversefl.flower.worker import ensure_key

        sock = self.workdir / "worker.sock"
        ensure_key(sock)
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
        """Make and register ``count`` SuperNode key pairs; return the private keys."""
        keys = []
        for i in range(count):
            private, public = make_node_key(self.workdir / "keys" / f"node{i}")
            self.register_supernode(public)
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
        ``finished:completed``, ``finished:failed``, ``running``)."""
        out = self.flwr("ls", "local", "--run-id", str(run_id), "--format", "json", timeout=timeout)
        payload = json.loads(out[out.index("{") :])
        runs = payload.get("runs", [])
        return str(runs[0].get("status", "unknown")) if runs else "unknown"

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
        import shutil

        shutil.rmtree(self.ray_tmp, ignore_errors=True)
        return [p for p in self._targets() if _alive(p)]

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def byzantine_nodes(
    config_path: str | os.PathLike[str],
    overrides: Sequence[str],
    data_dir: str | None,
) -> dict[int, dict[str, Any]]:
    """Node-config attack settings for the config's fixed Byzantine clients (partition id ->
    ``{"attack": ..., "byzantine-rank": ..., "byzantine-f": ...}``, plus its settings)."""
    from diversefl.engine.simulator import Simulation
    from diversefl.flower.common import check_deployable_attack, load_run_config

    cfg = load_run_config(config_path, list(overrides))
    if cfg.attack.name == "none":
        return {}
    try:
        check_deployable_attack(cfg.attack.name)
    except ValueError as err:
        raise DeployError(str(err)) from None
    if cfg.attack.byzantine == "per_round":
        raise DeployError(
            'attack.byzantine = "per_round" cannot be set per node; use adversary="config"'
        )
    sim = Simulation(cfg, data_dir=data_dir)
    ids = sim.byzantine_ids()
    assert isinstance(ids, list)
    nodes: dict[int, dict[str, Any]] = {}
    for rank, j in enumerate(ids):
        nodes[j] = {"attack": cfg.attack.name, "byzantine-rank": rank, "byzantine-f": len(ids)}
        for key, value in cfg.attack.params().items():
            nodes[j][f"attack-{key.replace('_', '-')}"] = value
    return nodes


def _app_config_keys(app: Path) -> set[str]:
    """The run-config keys the app at ``app`` declares (``[tool.flwr.app.config]``)."""
    import tomllib

    data = tomllib.loads((app / "pyproject.toml").read_text())
    return set(data.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}))


def _read_summary(out: Path) -> dict[str, Any]:
    path = out / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def deploy_local(
    config_path: str | os.PathLike[str],
    nodes: int,
    out: str | os.PathLike[str],
    byzantine: Mapping[int, str] | Sequence[int] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    timeout: float = 1800.0,
    *,
    overrides: Sequence[str] = (),
    runtime: str = "deployment",
    adversary: str | None = None,
    workdir: str | os.PathLike[str] | None = None,
    app_dir: str | os.PathLike[str] | None = None,
    threads: int = 1,
    round_timeout: float = 600.0,
    workers: bool = True,
    max_inflight: int | None = None,
    tls: TlsFiles | None = None,
    node_auth: bool = False,
    min_nodes: int | None = None,
    on_started: Callable[[LocalFederation, int], None] | None = None,
    overwrite: bool = False,
) -> DeployResult:
    """Run ``config_path`` on a SuperLink plus ``nodes`` SuperNodes on 127.0.0.1.

    ``byzantine`` picks the attacking nodes: a mapping partition id -> attack name, or a list
    of partition ids using the config's attack; by default the config's fixed Byzantine
    clients (``attack.byzantine`` list or seeded) get the config's attack in their node config
    (``adversary="nodes"``). ``runtime="simulation"`` uses Flower's simulation runtime instead
    of SuperNodes (the config's ``[attack]`` then assigns the roles: ``adversary="config"``).
    The config's ``clients.n`` is set to ``nodes``. With ``workers`` the SuperNodes hand their
    computation to one :mod:`diversefl.flower.worker` that keeps torch and the shards loaded
    between messages (Flower starts a fresh ClientApp process for every message).
    ``max_inflight`` bounds the messages outstanding at once (default for a deployment: three
    per CPU, so that this machine never starts every ClientApp process at once; 0: no
    bound). ``round_timeout`` is the seconds the server waits for one round's replies (a node
    that does not answer in time is dropped for that round).

    ``tls`` runs the SuperLink with those certificates (nodes and the CLI verify it against
    ``tls.ca``); ``node_auth`` also gives every node a registered key pair and makes the
    SuperLink refuse unregistered nodes. ``min_nodes`` is the run config's ``min-nodes`` (the
    app's ``[tool.flwr.app.config]`` must list that key; by default the server requires a
    majority). ``on_started(federation, run_id)`` is called once the run is submitted (e.g. to
    kill a node mid-run; it runs before the wait for the run's end and may block).
    An ``out`` that already holds a run is refused (:class:`DeployError`, before anything
    starts) unless ``overwrite``, as ``diversefl run`` does.
    Every process started is stopped before this returns or raises; :class:`DeployError` when
    the run did not complete.
    """
    if runtime not in ("deployment", "simulation"):
        raise ValueError(f"runtime={runtime!r}: allowed: deployment, simulation")
    out_dir = Path(out).expanduser().resolve()
    from diversefl.results import RUN_FILES

    held = [f for f in RUN_FILES if (out_dir / f).exists()]
    if held and not overwrite:
        raise DeployError(
            f"{out_dir} already holds a run ({', '.join(held)}); pass --overwrite to replace it "
            "or choose another --out"
        )
    app = Path(app_dir).resolve() if app_dir else REPO_ROOT
    if not (app / "pyproject.toml").exists():
        raise DeployError(f"no pyproject.toml with [tool.flwr.app] in {app}")
    if min_nodes is not None and "min-nodes" not in _app_config_keys(app):
        raise DeployError(
            f"min_nodes needs a `min-nodes = 0` entry in [tool.flwr.app.config] of "
            f"{app / 'pyproject.toml'} (flwr refuses run-config keys the app does not list)"
        )
    config_abs = str(Path(config_path).expanduser().resolve()) if str(config_path) else ""
    overrides = [*overrides, f"clients.n={int(nodes)}"]
    data = str(Path(data_dir).expanduser().resolve()) if data_dir else ""
    if adversary is None:
        adversary = "config" if runtime == "simulation" else "nodes"
    node_extra: dict[int, dict[str, Any]] = {}
    if runtime == "deployment" and adversary == "nodes":
        if byzantine is None:
            node_extra = byzantine_nodes(config_abs, overrides, data or None)
        else:
            from diversefl import attacks
            from diversefl.flower.common import check_deployable_attack, load_run_config

            cfg = load_run_config(config_abs, overrides)
            items = (
                byzantine.items()
                if isinstance(byzantine, Mapping)
                else [(j, cfg.attack.name) for j in byzantine]
            )
            for rank, (j, name) in enumerate(sorted(items)):
                name = name or cfg.attack.name
                if not 0 <= int(j) < nodes:
                    raise DeployError(f"byzantine node {j}: partition ids are 0..{nodes - 1}")
                if name == "none":
                    raise DeployError(
                        f"byzantine node {j}: no attack to run (the config's attack is 'none'); "
                        f"name one, e.g. {j}=sign_flip"
                    )
                if name not in attacks.REGISTRY:  # checked here, not in a node's log later
                    raise DeployError(
                        f"byzantine node {j}: unknown attack {name!r}; allowed: "
                        f"{', '.join(sorted(attacks.REGISTRY))}"
                    )
                try:
                    check_deployable_attack(name)
                except ValueError as err:
                    raise DeployError(f"byzantine node {j}: {err}") from None
                node_extra[int(j)] = {"attack": name, "byzantine-rank": rank}
                if name == cfg.attack.name:
                    for key, value in cfg.attack.params().items():
                        node_extra[int(j)][f"attack-{key.replace('_', '-')}"] = value
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="diversefl-flower-"))
    work.mkdir(parents=True, exist_ok=True)
    run_config = {
        "config-path": config_abs,
        "overrides": ";".join(overrides),
        "data-dir": data,
        "out": str(out_dir),
        "adversary": adversary,
        "timeout": float(round_timeout),
        "overwrite": True,
        "max-inflight": int(
            max_inflight
            if max_inflight is not None
            else (max(2, 3 * (os.cpu_count() or 1)) if runtime == "deployment" else 0)
        ),
    }
    if min_nodes is not None:
        run_config["min-nodes"] = int(min_nodes)
    t0 = time.perf_counter()
    fed = LocalFederation(
        work,
        simulation=runtime == "simulation",
        threads=threads,
        tls=tls,
        node_auth=node_auth and runtime == "deployment",
    )
    run_id: int | None = None
    status = "not started"
    restore_signals = _catch_stop_signals()
    try:
        fed.start_superlink()
        federation_config = None
        if runtime == "deployment":
            from diversefl.flower.common import load_run_config, prepare_shards

            # One dataset load here instead of one per node: each node reads its shard file.
            prepare_shards(load_run_config(config_abs, overrides), work / "cache", data or None)
            configs = []
            for j in range(nodes):
                node: dict[str, Any] = {"partition-id": j, "num-partitions": nodes}
                node["cache-dir"] = str(work / "cache")
                if data:
                    node["data-dir"] = data
                node.update(node_extra.get(j, {}))
                configs.append(node)
            keys = fed.node_keys(nodes) if fed.node_auth else None
            worker = fed.start_worker() if workers else None
            fed.start_supernodes(configs, worker=worker, keys=keys)
        else:
            federation_config = {"num-supernodes": nodes}
        (out_dir / "summary.json").unlink(missing_ok=True)
        run_id = fed.submit(app, run_config, federation_config)
        if on_started is not None:
            on_started(fed, run_id)
        status = fed.wait(run_id, timeout, done=out_dir / "summary.json")
    finally:
        left = fed.stop()
        restore_signals()
    result = DeployResult(
        run_id=run_id,
        status=status,
        out=out_dir,
        seconds=time.perf_counter() - t0,
        summary=_read_summary(out_dir),
        logs=fed.logs,
        pids=sorted(fed.seen),
    )
    if left:
        raise DeployError(f"processes {left} survived shutdown")
    if not result.ok:
        raise DeployError(f"run {run_id} ended {status!r}; logs in {fed.logs}")
    return result


def _parse_byzantine(items: list[str] | None) -> dict[int, str] | list[int] | None:
    if not items:
        return None
    if all("=" not in it for it in items):
        return [int(it) for it in items]
    out: dict[int, str] = {}
    for it in items:
        j, _, name = it.partition("=")
        out[int(j)] = name  # "" (a bare id): the config's attack, as with bare ids only
    return out


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _catch_stop_signals() -> Callable[[], None]:
    """Make SIGTERM and SIGHUP unwind like Ctrl-C while a deployment runs, so its ``finally``
    stops every process it started (their default action would end this process without it).
    Only from the main thread, and only where no handler of the caller's is set; returns the
    function that restores the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_DFL:
            previous[sig] = signal.signal(sig, _interrupt)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def build_parser() -> argparse.ArgumentParser:
    """The ``diversefl deploy-local`` command line."""
    p = argparse.ArgumentParser(prog="diversefl deploy-local", description=__doc__.split("\n")[0])
    p.add_argument("config", help="diversefl TOML config ('' for the built-in demo)")
    p.add_argument("--nodes", type=int, required=True, help="number of SuperNodes (clients)")
    p.add_argument("--out", default=None, help="run directory (default runs/flower-<stem>)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a run already in --out (else refused)"
    )
    p.add_argument(
        "--byzantine",
        nargs="*",
        metavar="ID[=ATTACK]",
        help="attacking partition ids, e.g. 3=sign_flip (default: the config's [attack])",
    )
    p.add_argument("--data-dir", default=None, help="dataset directory (default: $DIVERSEFL_DATA)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    p.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds for the whole run (default 1800)"
    )
    p.add_argument(
        "--runtime",
        choices=("deployment", "simulation"),
        default="deployment",
        help="real SuperLink + SuperNode processes (default) or Flower's simulation engine",
    )
    p.add_argument("--workdir", default=None, help="where logs and FLWR_HOME go")
    p.add_argument(
        "--no-workers",
        action="store_true",
        help="compute inside each message's ClientApp process (no per-node worker)",
    )
    p.add_argument(
        "--round-timeout",
        type=float,
        default=600.0,
        help="seconds the server waits for one round's replies (late nodes are dropped)",
    )
    p.add_argument(
        "--certificates",
        default=None,
        metavar="CA,CERT,KEY",
        help="run the SuperLink with TLS: CA certificate, server certificate (SAN IP:127.0.0.1)"
        " and key, or a directory holding ca.crt, server.pem and server.key",
    )
    p.add_argument(
        "--node-auth",
        action="store_true",
        help="SuperNode authentication (needs --certificates): each node gets a registered key",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m diversefl.flower.deploy CONFIG --nodes N``: run it, print the summary."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.node_auth and not args.certificates:
        p.error("--node-auth needs --certificates (Flower authenticates nodes only over TLS)")
    try:
        tls = TlsFiles.parse(args.certificates) if args.certificates else None
    except ValueError as err:
        p.error(str(err))
    stem = Path(args.config).stem or "demo"
    out = args.out or str(Path("runs") / f"flower-{stem}")
    try:
        res = deploy_local(
            args.config,
            args.nodes,
            out,
            byzantine=_parse_byzantine(args.byzantine),
            data_dir=args.data_dir,
            timeout=args.timeout,
            overrides=args.set,
            runtime=args.runtime,
            workdir=args.workdir,
            workers=not args.no_workers,
            round_timeout=args.round_timeout,
            tls=tls,
            node_auth=args.node_auth,
            overwrite=args.overwrite,
        )
    except DeployError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    s = res.summary
    fl = s.get("flower", {})
    rounds = fl.get("mean_round_seconds")
    print(
        f"run {res.run_id} {res.status}: final test accuracy {s['final_test_accuracy']:.4f}, "
        f"TPR {s.get('mean_tpr')}, FPR {s.get('mean_fpr')}, {rounds} s/round, "
        f"{res.seconds:.0f} s in all; run files in {res.out}; logs in {res.logs}"
    )
    if fl.get("excluded") or fl.get("faults"):
        print(
            f"faults: excluded partitions {sorted(fl.get('excluded', {}), key=int)}, "
            f"{fl.get('dropped_total', 0)} dropped and {fl.get('rejected_total', 0)} rejected "
            "updates (summary.json: flower.excluded, flower.faults)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
