"""Tests for ``fetch``: download from a local HTTP mirror, md5 checks, no corrupt leftovers."""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from conftest import real_data_dir

from diversefl.data import CHECKSUMS, DataError, fetch, load_dataset


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Keep test output clean."""


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1 (free port) and yield its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


@pytest.mark.slow
def test_fetch_mnist_from_local_mirror(tmp_path: Path) -> None:
    with serve(real_data_dir() / "mnist") as url:
        paths = fetch("mnist", tmp_path, base_url=url + "/", progress=False)
        assert sorted(p.name for p in paths) == sorted(CHECKSUMS["mnist"])
        for p in paths:
            assert p.parent == tmp_path / "mnist"
            assert _md5(p) == CHECKSUMS["mnist"][p.name]
        assert sorted(os.listdir(tmp_path / "mnist")) == sorted(CHECKSUMS["mnist"])
        mtimes = {p: p.stat().st_mtime_ns for p in paths}
        again = fetch("mnist", tmp_path, base_url=url, progress=False)  # all present: skipped
        assert {p: p.stat().st_mtime_ns for p in again} == mtimes
    ds = load_dataset("mnist", tmp_path)
    assert ds.x_train.shape == (60000, 1, 28, 28)
    assert int(torch.bincount(ds.y_test).sum()) == 10000


def test_fetch_corrupt_file_rejected(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    bad_name = "t10k-labels-idx1-ubyte.gz"
    for name in CHECKSUMS["mnist"]:
        if name == bad_name:
            data = bytearray((real_data_dir() / "mnist" / name).read_bytes())
            data[len(data) // 2] ^= 0x01
            (mirror / name).write_bytes(bytes(data))
        else:
            (mirror / name).symlink_to(real_data_dir() / "mnist" / name)
    dest = tmp_path / "out"
    with serve(mirror) as url, pytest.raises(DataError) as err:
        fetch("mnist", dest, base_url=url, progress=False)
    msg = str(err.value)
    assert bad_name in msg
    assert CHECKSUMS["mnist"][bad_name] in msg
    assert _md5(mirror / bad_name) in msg
    leftovers = sorted(os.listdir(dest / "mnist"))
    assert bad_name not in leftovers
    assert not [n for n in leftovers if n.endswith(".part")]
    for name in leftovers:  # whatever was fetched before the failure is intact
        assert _md5(dest / "mnist" / name) == CHECKSUMS["mnist"][name]


def test_fetch_unreachable_and_unknown(tmp_path: Path) -> None:
    with serve(tmp_path / "empty-does-not-exist") as url, pytest.raises(DataError, match="404"):
        fetch("fashion-mnist", tmp_path, base_url=url, progress=False)
    assert not [n for n in os.listdir(tmp_path / "fashion-mnist") if n.endswith(".part")]
    with pytest.raises(DataError, match="allowed"):
        fetch("svhn", tmp_path)
    assert fetch("digits", tmp_path) == []


def test_fetch_from_a_plain_folder(tmp_path: Path) -> None:
    """--base-url may be a folder path (the help calls it a mirror folder), not only a URL."""
    paths = fetch("mnist", tmp_path, base_url=str(real_data_dir() / "mnist"), progress=False)
    assert {p.name: _md5(p) for p in paths} == CHECKSUMS["mnist"]
    with pytest.raises(DataError, match="no such folder"):
        fetch("mnist", tmp_path / "x", base_url=str(tmp_path / "missing"), progress=False)


def test_a_local_folder_without_the_files_says_which_folder_to_give(tmp_path: Path) -> None:
    """A data root laid out as $DIVERSEFL_DATA (the files one level down) is a local folder,
    not a network problem: the error says to give the dataset's own folder."""
    (tmp_path / "root" / "mnist").mkdir(parents=True)
    with pytest.raises(DataError, match=r"must be the folder that holds the files themselves") as e:
        fetch("mnist", tmp_path / "dest", base_url=str(tmp_path / "root"), progress=False)
    assert "check the network" not in str(e.value)
    assert not list((tmp_path / "dest").rglob("*.gz"))  # nothing half-written is left
