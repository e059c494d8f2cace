"""The files deploy-local writes under its workdir: node keys and the worker's key are private
(0600) and new, and nothing is written through a symbolic link planted at a key, log or
connection path (fast: no federation is started)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from diversefl.flower import FLOWER_AVAILABLE

pytestmark = pytest.mark.skipif(
    not FLOWER_AVAILABLE, reason='flwr is not installed: pip install -e ".[flower]"'
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _key_pair_matches(private: Path, public: Path) -> bool:
    """The private key loads (OpenSSH format) and derives exactly the public key file."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    derived = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return public.read_bytes().strip() == derived


def test_a_fresh_node_key_is_0600_and_its_pair_matches(tmp_path):
    from diversefl.flower.deploy import make_node_key

    old_umask = os.umask(0)  # the mode must not depend on a permissive umask
    try:
        private, public = make_node_key(tmp_path / "keys" / "node0")
    finally:
        os.umask(old_umask)
    assert (private, public) == (tmp_path / "keys" / "node0", tmp_path / "keys" / "node0.pub")
    assert _mode(private) == 0o600 and _mode(public) == 0o644
    assert _key_pair_matches(private, public)
    assert sorted(p.name for p in private.parent.iterdir()) == ["node0", "node0.pub"]  # no temp


def test_an_existing_0644_key_is_replaced_by_a_private_one(tmp_path):
    """A key file left with mode 0644 (readable by every local user) does not keep that mode,
    and a second name for the old file (a hard link) does not receive the new key."""
    from diversefl.flower.deploy import make_node_key

    path = tmp_path / "node0"
    path.write_bytes(b"old key\n")
    path.chmod(0o644)
    os.link(path, tmp_path / "copy")  # someone kept another name for the readable file
    private, public = make_node_key(path)
    assert _mode(private) == 0o600
    assert _key_pair_matches(private, public)
    assert (tmp_path / "copy").read_bytes() == b"old key\n"  # the new key did not reach it


@pytest.mark.parametrize("which", ["node0", "node0.pub"])
def test_a_symlink_at_a_key_path_is_refused_not_followed(tmp_path, which):
    from diversefl.flower.deploy import DeployError, make_node_key

    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / which).symlink_to(victim)
    with pytest.raises(DeployError, match=rf"{keys / which} is a symbolic link: refusing"):
        make_node_key(keys / "node0")
    assert victim.read_bytes() == b"precious\n" and _mode(victim) != 0o600
    assert sorted(p.name for p in keys.iterdir()) == [which]  # neither key was written


def test_workdir_must_be_private_to_the_user(tmp_path):
    from diversefl.flower.deploy import DeployError, LocalFederation

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(DeployError, match=r"writable by other users \(mode 777\).*chmod go-w"):
        LocalFederation(shared)
    assert list(shared.iterdir()) == []
    fed = LocalFederation(tmp_path / "new" / "work")  # created for the user alone
    assert _mode(fed.workdir) == 0o700
    assert _mode(fed.logs) == 0o700 and _mode(fed.flwr_home) == 0o700


def test_logs_and_the_cli_connection_are_not_written_through_symlinks(tmp_path):
    """A link planted at a log or at FLWR_HOME/config.toml would make deploy-local truncate
    and overwrite whatever it points to; it is refused instead, the target untouched."""
    from diversefl.flower.deploy import DeployError, LocalFederation

    fed = LocalFederation(tmp_path / "work")
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    (fed.logs / "superlink.log").symlink_to(victim)
    with pytest.raises(DeployError, match="superlink.log is a symbolic link"):
        fed._spawn("superlink", ["true"])
    (fed.flwr_home / "config.toml").symlink_to(victim)
    fed.port = 9
    with pytest.raises(DeployError, match="config.toml is a symbolic link"):
        fed._write_connection()
    assert victim.read_bytes() == b"precious\n"
    assert fed.procs == []


def test_the_worker_key_is_new_and_private_for_every_start(tmp_path, monkeypatch):
    """A worker key found in the workdir (e.g. planted, readable) is never reused: whoever
    knows the key can send the worker requests."""
    from diversefl.flower.deploy import LocalFederation
    from diversefl.flower.worker import key_path

    fed = LocalFederation(tmp_path / "work")
    started: list[list[str]] = []
    monkeypatch.setattr(fed, "_spawn", lambda name, cmd, nice=0: started.append(cmd))
    planted = key_path(fed.workdir / "worker.sock")
    planted.write_bytes(b"k" * 32)
    planted.chmod(0o644)
    sock = fed.start_worker()
    key = key_path(sock)
    assert started and key == planted
    first = key.read_bytes()
    assert first != b"k" * 32 and len(first) == 32 and _mode(key) == 0o600
    fed.start_worker()
    assert key.read_bytes() != first  # a new key for every start


def test_shards_are_written_private_before_any_process_starts(tmp_path, monkeypatch):
    """The nodes' data shards go into WORKDIR/cache (mode 0700, so other users cannot read
    them whatever the files' own mode), and they are written before the first process."""
    import subprocess

    import tomli_w
    from conftest import tiny_config

    from diversefl.flower.deploy import deploy_local

    def refuse(*args: object, **kwargs: object) -> None:
        raise ChildProcessError("first process")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    config = tmp_path / "cfg.toml"
    config.write_text(tomli_w.dumps(tiny_config()))
    work = tmp_path / "work"
    old_umask = os.umask(0o022)
    try:
        with pytest.raises(ChildProcessError, match="first process"):
            deploy_local(config, 4, tmp_path / "out", workdir=work)
    finally:
        os.umask(old_umask)
    cache = work / "cache"
    assert _mode(work) == 0o700 and _mode(cache) == 0o700
    assert len(list(cache.glob("shard-*.pt"))) == 4


def test_node_auth_binds_each_registered_node_to_its_partition():
    """deploy-local --node-auth passes node-partitions built from the ids the SuperLink gave
    each key, so a node cannot claim another's partition (the server enforces the binding)."""
    from types import SimpleNamespace

    from diversefl.flower.launch import _bound

    configs = [{"partition-id": j, "num-partitions": 3} for j in range(3)]
    fed = SimpleNamespace(node_auth=True, registered_ids=[901, 77, 4242])
    bound = _bound({"timeout": 5.0}, fed, configs)
    assert bound == {"timeout": 5.0, "node-auth": True, "node-partitions": "901:0,77:1,4242:2"}
    assert _bound({"timeout": 5.0}, SimpleNamespace(node_auth=False), configs) == {"timeout": 5.0}
