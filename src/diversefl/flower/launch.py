"""Run a diversefl config as a Flower federation on this machine: :func:`deploy_local`.

The federation side of ``deploy-local``: check every input (:mod:`.preflight`), write each
node's data shard, give each node its partition and role, start the processes
(:class:`~diversefl.flower.processes.LocalFederation`), submit the run, wait for its end and
read its result, keeping every process's log and the ServerApp's own output under
``WORKDIR/logs``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diversefl.flower.deploy_errors import DeployError, DeployInputError
from diversefl.flower.keys import TlsFiles
from diversefl.flower.preflight import DeployPlan, one_line, plan_deployment
from diversefl.flower.processes import SERVERAPP_LOG, LocalFederation
from diversefl.flower.workdir import make_workdir, private_dir


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


def _write_shards(plan: DeployPlan, cache: Path) -> None:
    """Every node's shard file in ``cache`` (mode 0700): one dataset load here instead of one
    per node."""
    from diversefl.data.datasets import DataError
    from diversefl.flower.common import prepare_shards

    try:
        prepare_shards(plan.cfg, private_dir(cache), plan.data_dir or None)
    except (DataError, ValueError) as err:  # before any process: an input error
        raise DeployInputError(one_line(err)) from None


def _read_summary(out: Path) -> dict[str, Any]:
    path = out / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _failure(fed: LocalFederation, run_id: int | None, status: str) -> str:
    """One line saying how the run ended and why (Flower's status details), and where the
    ServerApp's log and the processes' logs are."""
    details = fed.details.get(run_id, "").strip() if run_id is not None else ""
    why = f" ({details.splitlines()[0]})" if details else ""
    return (
        f"run {run_id} ended {status!r}{why}; the ServerApp's log: {fed.logs / SERVERAPP_LOG}, "
        f"every process's log in {fed.logs}"
    )


def _run(
    fed: LocalFederation,
    plan: DeployPlan,
    configs: Sequence[Mapping[str, Any]],
    *,
    workers: bool,
    timeout: float,
    on_started: Callable[[LocalFederation, int], None] | None,
) -> tuple[int | None, str]:
    """Start the federation, submit the run and wait for its end; the ServerApp's log is
    saved and every process stopped whatever happens. Returns (run id, status)."""
    run_id: int | None = None
    status = "not started"
    restore_signals = _catch_stop_signals()
    try:
        try:
            fed.start_superlink()
            if plan.runtime == "deployment":
                keys = fed.node_keys(len(configs)) if fed.node_auth else None
                worker = fed.start_worker() if workers else None
                fed.start_supernodes(configs, worker=worker, keys=keys)
            federation = None if plan.runtime == "deployment" else {"num-supernodes": plan.nodes}
            (plan.out / "summary.json").unlink(missing_ok=True)
            run_id = fed.submit(plan.app, _bound(plan.run_config, fed, configs), federation)
            if on_started is not None:
                on_started(fed, run_id)
            status = fed.wait(run_id, timeout, done=plan.out / "summary.json")
        finally:
            if run_id is not None:
                fed.save_serverapp_log(run_id)
    finally:
        left = fed.stop()
        restore_signals()
    if left:
        raise DeployError(f"processes {left} survived shutdown")
    return run_id, status


def _bound(
    run_config: Mapping[str, Any], fed: LocalFederation, configs: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """With node authentication, the run config binds each registered node id to its
    partition (``node-partitions``), so no node can claim another's partition."""
    ids = getattr(fed, "registered_ids", None) if fed.node_auth else None
    if not ids:
        return dict(run_config)
    pairs = ",".join(f"{nid}:{c['partition-id']}" for nid, c in zip(ids, configs, strict=True))
    return {**run_config, "node-auth": True, "node-partitions": pairs}


def deploy_local(
    config_path: str | os.PathLike[str],
    nodes: int | None,
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
    node_data: Sequence[str] | None = None,
) -> DeployResult:
    """Run ``config_path`` on a SuperLink plus ``nodes`` SuperNodes on 127.0.0.1.

    ``byzantine`` picks the attacking nodes: a mapping partition id -> attack name, or a list
    of partition ids using the config's attack; by default the config's fixed Byzantine
    clients get the config's attack in their node config (``adversary="nodes"``).
    ``runtime="simulation"`` uses Flower's simulation runtime instead of SuperNodes (the
    config's ``[attack]`` then assigns the roles: ``adversary="config"``). ``clients.n`` is
    set to ``nodes``. With ``workers`` the nodes hand their computation to one
    :mod:`diversefl.flower.worker` that keeps torch and the shards loaded between messages.
    ``max_inflight`` bounds the messages outstanding at once (default for a deployment: three
    per CPU; 0: no bound); ``round_timeout`` is the seconds the server waits for one round's
    replies. ``tls`` runs the SuperLink with those certificates; ``node_auth`` also gives
    every node a registered key pair. ``min_nodes`` is the run config's ``min-nodes`` (the
    app must declare it). ``on_started(federation, run_id)`` is called once the run is
    submitted (e.g. to kill a node mid-run; it may block). With ``data.dataset = "files"``
    each node reads only its own data: ``node_data`` (one path per node, or one folder with
    one file or image folder per node; default the config's ``data.path``), and ``nodes``
    may be None (one node per path).

    Every input is checked before anything starts (:class:`DeployInputError`, see
    :mod:`diversefl.flower.preflight`), including an ``out`` that already holds a run
    (refused unless ``overwrite``). Every process started is stopped before this returns or
    raises; every log, the ServerApp's (``logs/serverapp.log``) among them, stays in
    ``workdir`` (default: a new temporary directory). :class:`DeployError` when the run did
    not complete, naming Flower's reason.
    """
    plan = plan_deployment(
        config_path,
        nodes,
        out,
        byzantine=byzantine,
        data_dir=data_dir,
        overrides=overrides,
        runtime=runtime,
        adversary=adversary,
        workdir=workdir,
        app_dir=app_dir,
        timeout=timeout,
        round_timeout=round_timeout,
        threads=threads,
        max_inflight=max_inflight,
        min_nodes=min_nodes,
        overwrite=overwrite,
        node_auth=node_auth,
        tls=tls,
        node_data=node_data,
    )
    fed = _prepare(plan, threads=threads, tls=tls, node_auth=node_auth)
    return _execute(fed, plan, workers=workers, timeout=timeout, on_started=on_started)


def _prepare(
    plan: DeployPlan, *, threads: int, tls: TlsFiles | None, node_auth: bool
) -> LocalFederation:
    """The working directory (a new temporary one unless the plan names one), every node's
    shard in it, and the federation that will run there (nothing started yet)."""
    temporary = plan.workdir is None
    work = (
        Path(tempfile.mkdtemp(prefix="diversefl-flower-")) if plan.workdir is None else plan.workdir
    )
    deployment = plan.runtime == "deployment"
    try:
        make_workdir(work)
        if deployment and not plan.node_data:  # own files: each node reads its own
            _write_shards(plan, work / "cache")
    except BaseException:
        if temporary:  # nothing of use in it yet
            shutil.rmtree(work, ignore_errors=True)
        raise
    return LocalFederation(
        work,
        simulation=not deployment,
        threads=threads,
        tls=tls,
        node_auth=node_auth and deployment,
    )


def _execute(
    fed: LocalFederation,
    plan: DeployPlan,
    *,
    workers: bool,
    timeout: float,
    on_started: Callable[[LocalFederation, int], None] | None,
) -> DeployResult:
    """Run the plan on ``fed`` and read the result; :class:`DeployError` unless completed."""
    t0 = time.perf_counter()
    configs = plan.node_configs(fed.workdir / "cache") if plan.runtime == "deployment" else []
    run_id, status = _run(
        fed, plan, configs, workers=workers, timeout=timeout, on_started=on_started
    )
    result = DeployResult(
        run_id=run_id,
        status=status,
        out=plan.out,
        seconds=time.perf_counter() - t0,
        summary=_read_summary(plan.out),
        logs=fed.logs,
        pids=sorted(fed.seen),
    )
    if not result.ok:
        raise DeployError(_failure(fed, run_id, status))
    return result


__all__ = ["DeployError", "DeployInputError", "DeployResult", "deploy_local"]
