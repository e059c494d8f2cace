"""Run a diversefl config as a real Flower federation on this machine (``deploy-local``).

:func:`deploy_local` checks every input before it starts anything, then starts a SuperLink and
N SuperNodes on 127.0.0.1 (free ports, one process group each), submits the app with ``flwr
run``, waits for the run to end, checks its status with ``flwr ls --format json`` (``flwr run``
itself exits 0 even when the run failed), saves the ServerApp's output, and always stops every
process it started. With ``runtime="simulation"`` the same SuperLink runs Flower's simulation
runtime (Ray) instead of SuperNodes.

With ``tls`` (:class:`TlsFiles`: a CA certificate, and a server certificate and key signed by
it) the SuperLink serves HTTPS and the SuperNodes and the ``flwr`` CLI verify it against the CA;
``node_auth`` adds SuperNode authentication: each node gets its own EC key pair, its public key
is registered with ``flwr supernode register`` and the node signs its requests with the private
key (the SuperLink refuses unregistered nodes; Flower allows this only over TLS).

This module is the command line and the stable import path; the work is done in
:mod:`.preflight` (input checks), :mod:`.launch` (the federation: shards, roles, the run),
:mod:`.processes` (starting, watching and stopping processes), :mod:`.keys` (TLS files and
node keys) and :mod:`.workdir` (private directories, files never written through a link)::

    python -m diversefl.flower.deploy CONFIG --nodes N [--out DIR] [--byzantine 3=sign_flip]
        [--certificates CA,CERT,KEY [--node-auth]] [--round-timeout S]

Exit status: 0 when the run completed, 2 for an input refused before any process started
(one ``error:`` line), 1 when the run failed or did not finish (the line names Flower's reason
and the logs).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from diversefl.flower import launch as _launch
from diversefl.flower import processes as _processes
from diversefl.flower.deploy_errors import DeployError, DeployInputError
from diversefl.flower.keys import TlsFiles, make_node_key
from diversefl.flower.launch import DeployResult, deploy_local
from diversefl.flower.preflight import REPO_ROOT, byzantine_nodes
from diversefl.flower.processes import (
    SESSION_ENV,
    LocalFederation,
    config_args,
    free_port,
    toml_value,
)
from diversefl.presets import resolve_config_arg

__all__ = [
    "REPO_ROOT",
    "SESSION_ENV",
    "DeployError",
    "DeployInputError",
    "DeployResult",
    "LocalFederation",
    "TlsFiles",
    "build_parser",
    "byzantine_nodes",
    "config_args",
    "deploy_local",
    "free_port",
    "main",
    "make_node_key",
    "toml_value",
]
# Private helpers that callers and tests import from here (the old single-module layout).
_catch_stop_signals = _launch._catch_stop_signals
_interrupt = _launch._interrupt
_read_summary = _launch._read_summary
_alive = _processes._alive
_session_pids = _processes._session_pids


def _parse_byzantine(items: list[str] | None) -> dict[int, str] | list[int] | None:
    """``--byzantine`` values: bare ids (the config's attack) or ``ID=ATTACK`` entries."""
    if not items:
        return None

    def node_id(text: str, item: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise DeployInputError(
                f"--byzantine {item!r}: expected a partition id or ID=ATTACK, e.g. 3=sign_flip"
            ) from None

    if all("=" not in it for it in items):
        return [node_id(it, it) for it in items]
    out: dict[int, str] = {}
    for it in items:
        j, _, name = it.partition("=")
        out[node_id(j, it)] = name  # "" (a bare id): the config's attack, as with bare ids only
    return out


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """What to run and where its files go."""
    p.add_argument("config", help="diversefl TOML config or preset name ('' for the demo)")
    p.add_argument(
        "--nodes",
        type=int,
        default=None,
        help="number of SuperNodes (clients); with data.dataset = 'files': one per data path",
    )
    p.add_argument(
        "--node-data",
        action="append",
        default=None,
        metavar="PATH",
        help="data.dataset = 'files': node j's own file or image folder (repeat, one per node), "
        "or one folder with one per node (default: the config's data.path)",
    )
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


def _add_process_arguments(p: argparse.ArgumentParser) -> None:
    """How the federation runs: runtime, time limits, the working directory."""
    p.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds for the whole run (default 1800)"
    )
    p.add_argument(
        "--runtime",
        choices=("deployment", "simulation"),
        default="deployment",
        help="real SuperLink + SuperNode processes (default) or Flower's simulation engine",
    )
    p.add_argument(
        "--workdir",
        default=None,
        help="where logs (one per process, the ServerApp's in logs/serverapp.log), keys, "
        "shards and FLWR_HOME go; yours alone (default: a new temporary directory)",
    )
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


def _add_security_arguments(p: argparse.ArgumentParser) -> None:
    """TLS for the SuperLink and SuperNode authentication."""
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


def build_parser() -> argparse.ArgumentParser:
    """The ``diversefl deploy-local`` command line."""
    p = argparse.ArgumentParser(prog="diversefl deploy-local", description=__doc__.split("\n")[0])
    _add_run_arguments(p)
    _add_process_arguments(p)
    _add_security_arguments(p)
    return p


def _print_result(res: DeployResult) -> None:
    """The run's figures, and its faults when nodes were dropped or excluded."""
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m diversefl.flower.deploy CONFIG --nodes N``: run it, print the summary.
    Returns 0 (completed), 2 (an input refused before anything started) or 1 (failed)."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.node_auth and not args.certificates:
        p.error("--node-auth needs --certificates (Flower authenticates nodes only over TLS)")
    try:
        tls = TlsFiles.parse(args.certificates) if args.certificates else None
    except ValueError as err:
        p.error(str(err))
    try:  # a file, else a preset name (paper/mnist-softmax)
        args.config = resolve_config_arg(args.config)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    stem = Path(args.config).stem or "demo"
    try:
        res = deploy_local(
            args.config,
            args.nodes,
            args.out or str(Path("runs") / f"flower-{stem}"),
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
            node_data=args.node_data,
        )
    except DeployError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, DeployInputError) else 1
    _print_result(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
