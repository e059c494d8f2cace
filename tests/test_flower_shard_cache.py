"""A node's shard cache (security issue #30, items 2 and 4): nothing read from it is executed,
and what is written to it is private. No Flower needed: the node-side code only."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from diversefl.config import make_config
from diversefl.flower import common
from diversefl.flower.common import load_shard, prepare_shards


class _Payload:
    """Unpickling this runs code: it writes ``marker`` (what a planted cache file would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _cfg():
    return make_config(tiny_config(clients={"n": 4}))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture(autouse=True)
def _fresh_cache():
    common._cached_shard.cache_clear()  # every test reads its cache directory afresh
    yield
    common._cached_shard.cache_clear()


def _assert_same_shard(got: common.ClientShard, want: common.ClientShard) -> None:
    assert (got.partition_id, got.num_partitions) == (want.partition_id, want.num_partitions)
    for name in ("indices", "x", "y", "shard_lens"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_planted_pickle_payload_does_not_run_and_the_shard_is_rebuilt(tmp_path, wrapped):
    """A cache file holding a pickle payload (bare, or inside a dict shaped like a shard) is
    read with weights_only=True: the payload never runs, the file is replaced by the real
    shard, which later reads load."""
    cfg, cache, marker = _cfg(), tmp_path / "cache", tmp_path / "pwned"
    want = load_shard(cfg, 2, 4)  # no cache: from the dataset
    common._cached_shard.cache_clear()
    path = common._shard_path(cfg, 2, cache)
    cache.mkdir()
    payload = _Payload(marker)
    if wrapped:
        payload = {**want.__dict__, "x": payload}
    path.write_bytes(pickle.dumps(payload))
    got = load_shard(cfg, 2, 4, cache_dir=str(cache))
    assert not marker.exists(), "the planted payload ran"
    _assert_same_shard(got, want)
    state = torch.load(path, weights_only=True)  # rebuilt: plain tensors and numbers
    assert state["partition_id"] == 2 and torch.equal(state["x"], want.x)


def test_a_symlinked_cache_file_is_not_followed(tmp_path):
    """A link at the shard path to a payload elsewhere: not read, not written through."""
    cfg, cache, marker = _cfg(), tmp_path / "cache", tmp_path / "pwned"
    cache.mkdir()
    target = tmp_path / "elsewhere.pt"
    target.write_bytes(pickle.dumps(_Payload(marker)))
    before = target.read_bytes()
    path = common._shard_path(cfg, 1, cache)
    path.symlink_to(target)
    got = load_shard(cfg, 1, 4, cache_dir=str(cache))
    assert not marker.exists() and target.read_bytes() == before
    assert not path.is_symlink() and _mode(path) == 0o600
    _assert_same_shard(got, load_shard(cfg, 1, 4))


def test_another_partitions_shard_under_this_name_is_rebuilt(tmp_path):
    """A readable shard file that is not this partition's (copied over it) is not used."""
    cfg, cache = _cfg(), tmp_path / "cache"
    prepare_shards(cfg, cache)
    common._shard_path(cfg, 0, cache).write_bytes(common._shard_path(cfg, 3, cache).read_bytes())
    common._cached_shard.cache_clear()
    _assert_same_shard(load_shard(cfg, 0, 4, cache_dir=str(cache)), load_shard(cfg, 0, 4))


def test_shards_are_written_private(tmp_path):
    """The cache directory a node or deploy-local creates is 0700 and every shard file 0600,
    whatever the umask."""
    cfg = _cfg()
    old = os.umask(0)
    try:
        paths = prepare_shards(cfg, tmp_path / "work" / "cache")
        common._cached_shard.cache_clear()
        load_shard(cfg, 1, 4, cache_dir=str(tmp_path / "node-cache"))
    finally:
        os.umask(old)
    assert _mode(tmp_path / "work" / "cache") == 0o700
    assert len(paths) == 4 and all(_mode(p) == 0o600 for p in paths)
    node_files = list((tmp_path / "node-cache").iterdir())
    assert _mode(tmp_path / "node-cache") == 0o700
    assert len(node_files) == 1 and _mode(node_files[0]) == 0o600
    assert not [p for p in (tmp_path / "work" / "cache").iterdir() if p.name.endswith(".tmp")]
