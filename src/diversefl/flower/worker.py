"""A long-lived compute worker for the SuperNodes of one machine (optional, a speed-up).

Flower 1.42 starts a fresh ``flwr-clientapp`` process for every message, so each round would
pay for importing torch and loading the node's data again. With a worker next to the
SuperNode, the ClientApp only forwards the message's payload over a local socket to this
process, which keeps torch, the model and the node's shard in memory::

    python -m diversefl.flower.worker --socket /run/dfl/node3.sock [--parent-pid PID]

and give the SuperNode ``--node-config '... worker="/run/dfl/node3.sock"'``. One worker may
serve several SuperNodes on the same machine (requests carry the node config; they are answered
one at a time). The socket's key (``<socket>.key``, created here with mode 0600 when missing)
authenticates the ClientApp; messages are JSON plus raw array bytes (:mod:`diversefl.flower.wire`),
never pickles. Without a ``worker`` entry the ClientApp computes in its own
process; the results are equal.
"""

from __future__ import annotations

import argparse
import os
import secrets
import threading
import time
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import Any

from diversefl.flower.wire import decode, encode

MAX_MESSAGE = 1 << 31  # bytes: a request larger than this is refused unread


def key_path(socket_path: str | os.PathLike[str]) -> Path:
    """Where the worker's authentication key lives (next to its socket)."""
    return Path(f"{socket_path}.key")


def ensure_key(socket_path: str | os.PathLike[str]) -> bytes:
    """The worker's key, created (mode 0600) when it does not exist yet."""
    path = key_path(socket_path)
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link: refusing to use it as the worker's key")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        if os.fstat(fh.fileno()).st_mode & 0o077:
            os.fchmod(fh.fileno(), 0o600)  # a key others could read authenticates them too
        return fh.read()


def call(socket_path: str, request: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
    """Send one request to the worker at ``socket_path`` and return its answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = Client(socket_path, family="AF_UNIX", authkey=key_path(socket_path).read_bytes())
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # the worker is still starting
    with conn:
        conn.send_bytes(encode(request))
        answer = decode(conn.recv_bytes())
    if "error" in answer:
        raise RuntimeError(f"worker {socket_path}: {answer['error']}")
    return answer


def handle(request: dict[str, Any]) -> dict[str, Any]:
    """Answer one request (``op`` = ``sample``, ``train`` or ``evaluate``) with the shared
    handlers."""
    from diversefl.flower.common import handle_evaluate, handle_sample, handle_train

    op = request["op"]
    if op == "sample":
        return handle_sample(request["config"], request["node_config"], request["data_dir"])
    if op == "train":
        return handle_train(
            request["config"],
            request["node_config"],
            request["message_config"],
            request["theta"],
            request["data_dir"],
        )
    if op == "evaluate":
        return handle_evaluate(
            request["config"],
            request["node_config"],
            request["theta"],
            request["data_dir"],
            request.get("message_config"),
        )
    if op == "ping":
        return {"pong": True}
    raise ValueError(f"unknown op {op!r}")


def _watch_parent(pid: int) -> None:
    while True:
        time.sleep(0.5)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(0)


def serve(socket_path: str, parent_pid: int | None = None, threads: int = 1) -> None:
    """Serve requests on ``socket_path`` until killed (or until ``parent_pid`` exits)."""
    import torch

    torch.set_num_threads(threads)
    import diversefl.flower.common  # noqa: F401 - pay the imports before the first message

    authkey = ensure_key(socket_path)
    Path(socket_path).unlink(missing_ok=True)
    if parent_pid:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    with Listener(socket_path, family="AF_UNIX", backlog=256, authkey=authkey) as listener:
        os.chmod(socket_path, 0o600)
        while True:
            try:
                conn = listener.accept()
            except Exception:  # noqa: BLE001 - a failed handshake must not stop the worker
                continue
            with conn:
                try:
                    request = decode(conn.recv_bytes(MAX_MESSAGE))
                    answer = handle(request)
                except Exception as err:  # noqa: BLE001 - report to the ClientApp instead
                    answer = {"error": f"{type(err).__name__}: {err}\n{traceback.format_exc()}"}
                try:
                    conn.send_bytes(encode(answer))
                except (BrokenPipeError, ConnectionResetError):
                    pass


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m diversefl.flower.worker --socket PATH``."""
    p = argparse.ArgumentParser(prog="python -m diversefl.flower.worker")
    p.add_argument("--socket", required=True, help="Unix socket path to listen on")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process exits")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    serve(args.socket, args.parent_pid, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
