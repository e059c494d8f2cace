"""The node worker's socket carries JSON plus raw array bytes, never pickles: a peer holding the
key cannot make the worker (or the ClientApp) run code, and the key file is private."""

from __future__ import annotations

import os
import pickle
import threading
import time
from multiprocessing.connection import Client

import numpy as np
import pytest
import torch

from diversefl.flower import worker
from diversefl.flower.wire import WireError, decode, encode

MARKER = "/tmp/diversefl-worker-payload-ran"


class _Payload:
    def __reduce__(self):
        return (open, (MARKER, "w"))


def test_messages_round_trip_exactly():
    msg = {
        "update": np.linspace(-1, 1, 7, dtype=np.float32),
        "idx": torch.arange(5),
        "meta": {"partition": 3, "attack": "none", "loss": float("nan"), "ok": True, "x": None},
        "nested": [np.zeros((2, 3), dtype=np.uint8), 1.5],
    }
    got = decode(encode(msg))
    assert got["update"].dtype == np.float32 and np.array_equal(got["update"], msg["update"])
    assert got["idx"].dtype == np.int64 and got["idx"].tolist() == [0, 1, 2, 3, 4]
    assert got["meta"]["partition"] == 3 and np.isnan(got["meta"]["loss"])
    assert got["nested"][0].shape == (2, 3) and got["nested"][1] == 1.5


@pytest.mark.parametrize(
    "data",
    [b"", pickle.dumps(_Payload()), encode({"a": np.ones(3)})[:-4], b"\x05" + b"\x00" * 7 + b"{}"],
)
def test_anything_else_is_refused_unrun(data):
    if os.path.exists(MARKER):
        os.remove(MARKER)
    with pytest.raises(WireError):
        decode(data)
    assert not os.path.exists(MARKER)


def test_objects_and_object_arrays_cannot_be_sent():
    with pytest.raises(WireError):
        encode({"a": _Payload()})
    with pytest.raises(WireError, match="dtype object"):
        encode({"a": np.array([object()])})


def test_a_live_worker_answers_and_never_unpickles(tmp_path):
    if os.path.exists(MARKER):
        os.remove(MARKER)
    sock = str(tmp_path / "w.sock")
    threading.Thread(target=worker.serve, args=(sock,), daemon=True).start()
    assert worker.call(sock, {"op": "ping"}, timeout=60) == {"pong": True}
    key = worker.key_path(sock).read_bytes()
    with Client(sock, family="AF_UNIX", authkey=key) as conn:  # a peer holding the key
        conn.send(_Payload())  # pickled by multiprocessing
        answer = decode(conn.recv_bytes())
    assert "WireError" in answer["error"]
    time.sleep(0.2)
    assert not os.path.exists(MARKER)


def test_the_worker_key_is_private_and_never_read_through_a_link(tmp_path):
    sock = tmp_path / "k.sock"
    key = worker.key_path(sock)
    key.write_bytes(b"k" * 32)
    key.chmod(0o644)
    assert worker.ensure_key(sock) == b"k" * 32
    assert key.stat().st_mode & 0o777 == 0o600
    other = tmp_path / "victim"
    other.write_bytes(b"secret")
    link = tmp_path / "l.sock"
    worker.key_path(link).symlink_to(other)
    with pytest.raises(ValueError, match="symbolic link"):
        worker.ensure_key(link)
