"""What one Flower client computes, and the settings both apps share, without importing Flower.

A real client holds only its own partition, yet it reproduces exactly what the in-process
simulator computes for it: its partition (the same split of the same training set), its one-time
sample (drawn from ``generator(seed, "sample", j)``), its round-r mini-batch (row j of the
simulator's ``[n, Lmax]`` draw from ``generator(seed, "batch", r)``, which only needs the public
shard lengths), the aggregator's client-side transform and the attack (replayed on tensors shaped
like the simulator's so that every random draw lands on the same numbers).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import secrets
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
import torch
from torch import Tensor

from diversefl import attacks
from diversefl.aggregators.base import Aggregator, RoundContext
from diversefl.attacks.base import Attack
from diversefl.config import Config, apply_overrides, load_config, make_config, to_toml_dict
from diversefl.engine.gradients import batched_grads
from diversefl.engine.inputs import build_network
from diversefl.engine.local_training import (
    batch_generator,
    local_lr,
    local_pseudo_gradients,
    step_counts,
    uses_local_training,
)
from diversefl.engine.params import FlatModel
from diversefl.engine.schedules import make_schedule
from diversefl.engine.seeding import generator, seed_dropout, seed_for
from diversefl.engine.simulator import _count, draw_without_replacement, eval_pass
from diversefl.flower.node_data import NodeData, load_node_data, standardized, with_shard_lens
from diversefl.flower.shard import ClientShard, check_partition
from diversefl.methods import build_method

_log = logging.getLogger(__name__)

#: Message type of the one-time "share your sample" query (``@app.query("sample")``).
MSG_SAMPLE = "query.sample"
#: Keys inside every message's RecordDict.
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"


# -- the run config ([tool.flwr.app.config]) -------------------------------------------------
@dataclass(frozen=True)
class RunSettings:
    """The Flower run config: which diversefl TOML to run and where to write its run directory.

    ``config_path`` empty means the built-in demo federation (digits, 23 clients, 5 sign
    flippers, DiverseFL); ``overrides`` is a ``;``-separated list of ``section.key=value``
    settings applied on top (the same syntax as ``diversefl run --set``).
    """

    config_path: str = ""
    overrides: str = ""
    data_dir: str = ""
    out: str = ""
    adversary: str = "config"  # "config": the TOML's [attack] picks the Byzantine nodes
    timeout: float = 600.0  # seconds to wait for one round's replies
    overwrite: bool = False
    max_inflight: int = 0  # messages outstanding at once (0: all)
    min_nodes: int = 0  # fewest usable nodes (0: a majority of clients.n)
    node_partitions: str = ""  # "NODE_ID:J,NODE_ID:J": the operator's node -> partition binding
    round_grace: float = 0.0  # seconds a round still waits once min-nodes replied (0: off)
    resume: bool = False  # continue the run in `out` from its last checkpoint
    # check each uploaded sample against a server-side copy of the public dataset (benchmark
    # federations only: the server then loads and partitions the training set)
    verify_samples: bool = False
    test_set: str = ""  # "": the dataset's test split from data-dir; a .npz path; "none"
    node_auth: bool = False  # nodes are authenticated: node-partitions must bind them
    require_approval: bool = False  # wait for the sample review's approval before training

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> RunSettings:
        """Read the settings from a Flower ``context.run_config`` (unknown keys are ignored)."""
        get = run_config.get
        adversary = str(get("adversary", "config"))
        if adversary not in ("config", "nodes"):
            raise ValueError(f"run config adversary={adversary!r}: allowed: config, nodes")
        return cls(
            config_path=str(get("config-path", "")),
            overrides=str(get("overrides", "")),
            data_dir=str(get("data-dir", "")),
            out=str(get("out", "")),
            adversary=adversary,
            timeout=float(get("timeout", 600.0)),
            overwrite=bool(get("overwrite", False)),
            max_inflight=int(get("max-inflight", 0)),
            min_nodes=int(get("min-nodes", 0)),
            node_partitions=str(get("node-partitions", "")),
            round_grace=float(get("round-grace", 0.0)),
            resume=bool(get("resume", False)),
            verify_samples=_flag(get("verify-samples", False), "verify-samples"),
            test_set=str(get("test-set", "")),
            node_auth=_flag(get("node-auth", False), "node-auth"),
            require_approval=_flag(get("require-approval", False), "require-approval"),
        )

    def partition_map(self) -> dict[int, int] | None:
        """``node-partitions`` as ``{node id: partition}`` (None when unset)."""
        text = self.node_partitions.strip()
        if not text:
            return None
        out: dict[int, int] = {}
        for item in text.split(","):
            node, sep, part = item.strip().partition(":")
            try:
                if not sep:
                    raise ValueError
                key, value = int(node), int(part)
            except ValueError:
                raise ValueError(
                    f"run config node-partitions: {item.strip()!r} is not NODE_ID:PARTITION"
                ) from None
            if key in out:
                raise ValueError(f"run config node-partitions: node {key} is listed twice")
            out[key] = value
        return out

    def override_list(self) -> list[str]:
        """The overrides as a list of ``key=value`` strings."""
        return [s.strip() for s in self.overrides.split(";") if s.strip()]

    def load_config(self) -> Config:
        """The validated diversefl config this run trains."""
        return load_run_config(self.config_path, self.override_list())


def _flag(value: Any, key: str) -> bool:
    """A run-config switch: only true or false (a string such as "false" is not a switch)."""
    if not isinstance(value, bool):
        raise ValueError(f"run config {key}={value!r}: expected true or false")
    return value


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """An absolute path: as given, else relative to the cwd, else to the repository root."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    repo = Path(__file__).resolve().parents[3]
    return (repo / p).resolve() if (repo / p).exists() else p.resolve()


def load_run_config(config_path: str | os.PathLike[str] | None, overrides: list[str]) -> Config:
    """Load a diversefl TOML config (or the built-in demo when empty) with overrides."""
    if config_path is None or str(config_path) == "":
        from diversefl.demo import demo_config

        return make_config(apply_overrides(demo_config("diversefl"), overrides))
    return load_config(resolve_path(config_path), overrides)


def config_to_text(cfg: Config) -> str:
    """The resolved config as TOML text (what travels to the clients)."""
    return tomli_w.dumps(to_toml_dict(cfg))


@functools.lru_cache(maxsize=8)
def config_from_text(text: str) -> Config:
    """Parse and validate config TOML text (cached: every message carries the same text)."""
    return make_config(tomllib.loads(text))


# -- one client's data ---------------------------------------------------------------------
def _shard_key(cfg: Config, partition_id: int) -> str:
    raw = json.dumps(
        [cfg.data.dataset, cfg.data.partition, cfg.data.alpha, cfg.seed, cfg.clients.n],
        sort_keys=True,
    )
    digest = hashlib.sha256(raw.encode()).hexdigest()[:16]
    return f"{cfg.data.dataset}-{digest}-{partition_id}"


def _all_shards(cfg: Config, data_dir: str | None) -> Iterator[ClientShard]:
    """Every client's shard, in partition order (the dataset is loaded once)."""
    from diversefl.data.datasets import load_dataset
    from diversefl.data.partition import partition

    data = load_dataset(cfg.data.dataset, data_dir)
    parts = partition(
        data.y_train, cfg.clients.n, cfg.data.partition, seed=cfg.seed, alpha=cfg.data.alpha
    )
    lens = torch.tensor([len(p) for p in parts], dtype=torch.long)
    for j, part in enumerate(parts):
        idx = torch.as_tensor(part, dtype=torch.long)
        yield ClientShard(
            partition_id=j,
            num_partitions=cfg.clients.n,
            indices=idx,
            x=data.x_train[idx].clone(),
            y=data.y_train[idx].clone(),
            shard_lens=lens,
            num_classes=data.num_classes,
            input_shape=tuple(data.input_shape),
        )


def _shard_path(cfg: Config, partition_id: int, cache_dir: str | os.PathLike[str]) -> Path:
    return Path(cache_dir) / f"shard-{_shard_key(cfg, partition_id)}.pt"


def _private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) when it does not exist; an existing directory is kept as
    it is (the shard files in it are 0600 whatever its mode)."""
    if not path.is_dir():
        path.mkdir(parents=True, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)


def _save_shard(shard: ClientShard, path: Path) -> None:
    """Write ``shard`` to ``path`` as plain tensors and numbers, readable by its owner only
    (0600): a fresh temporary file, never opened through a link, renamed over the path."""
    _private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)
            torch.save({**shard.__dict__, "input_shape": list(shard.input_shape)}, fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _shard_from_state(state: Any, partition_id: int, num_partitions: int) -> ClientShard:
    """The shard a cache file's contents describe, or ValueError when they are not exactly
    partition ``partition_id``'s shard (wrong keys, types or sizes)."""
    fields = [f.name for f in dataclasses.fields(ClientShard)]
    if not isinstance(state, dict) or sorted(state) != sorted(fields):
        raise ValueError("not a shard file")
    shard = ClientShard(**{**state, "input_shape": tuple(state["input_shape"])})
    tensors = (shard.indices, shard.x, shard.y, shard.shard_lens)
    if not all(isinstance(t, Tensor) for t in tensors):
        raise ValueError("a shard field is not a tensor")
    L = shard.indices.numel()
    if (shard.partition_id, shard.num_partitions) != (partition_id, num_partitions) or not (
        shard.x.shape[0] == shard.y.numel() == L
        and tuple(shard.x.shape[1:]) == shard.input_shape
        and shard.shard_lens.numel() == num_partitions
        and int(shard.shard_lens[partition_id]) == L
    ):
        raise ValueError(f"not partition {partition_id}'s shard of {num_partitions}")
    return shard


def _read_shard(path: Path, partition_id: int, num_partitions: int) -> ClientShard | None:
    """The cached shard at ``path``, or None (the file is deleted, to be rebuilt) when it is
    unreadable, a symbolic link, holds anything but plain tensors and numbers (nothing in it
    is executed: ``weights_only=True``), or is not this partition's shard."""
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as fh:  # not a link
            state = torch.load(fh, map_location="cpu", weights_only=True)
        return _shard_from_state(state, partition_id, num_partitions)
    except Exception as err:  # noqa: BLE001 - whatever is wrong with it, the shard is rebuilt
        why = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        _log.warning("shard cache %s is not a valid shard (%s); rebuilding it", path, why)
        path.unlink(missing_ok=True)
        return None


@functools.lru_cache(maxsize=64)
def _cached_shard(
    cfg_text: str, partition_id: int, data_dir: str | None, cache_dir: str | None
) -> ClientShard:
    cfg = config_from_text(cfg_text)
    path = _shard_path(cfg, partition_id, cache_dir) if cache_dir else None
    if path is not None and (path.exists() or path.is_symlink()):
        cached = _read_shard(path, partition_id, cfg.clients.n)
        if cached is not None:
            return cached
    for shard in _all_shards(cfg, data_dir):
        if shard.partition_id == partition_id:
            if path is not None:
                _save_shard(shard, path)
            return shard
    raise AssertionError("unreachable: partition ids cover 0..n-1")


def prepare_shards(
    cfg: Config, cache_dir: str | os.PathLike[str], data_dir: str | None = None
) -> list[Path]:
    """Write every client's shard into ``cache_dir`` (loading the dataset once), so that the
    nodes of a local federation read only their own shard file."""
    paths = []
    for shard in _all_shards(cfg, data_dir):
        path = _shard_path(cfg, shard.partition_id, cache_dir)
        _save_shard(shard, path)
        paths.append(path)
    return paths


def load_shard(
    cfg: Config,
    partition_id: int,
    num_partitions: int,
    data_dir: str | None = None,
    cache_dir: str | None = None,
) -> ClientShard:
    """Client ``partition_id``'s shard of the training set, split as the simulator splits it.

    The node loads the whole dataset once and keeps only its own examples; with ``cache_dir``
    the shard is stored there, so later messages (a fresh ClientApp process each in a
    deployment) skip loading and partitioning the dataset.
    """
    check_partition(partition_id, num_partitions, cfg.clients.n)
    return _cached_shard(config_to_text(cfg), partition_id, data_dir or None, cache_dir or None)


# -- what a client sends ---------------------------------------------------------------------
def sample_count(cfg: Config, shard_len: int) -> int:
    """s: how many examples a client with ``shard_len`` examples shares once."""
    return _count(cfg.clients.sample, shard_len)


def batch_counts(cfg: Config, shard_lens: Tensor) -> Tensor:
    """Every client's mini-batch size ``[n]``."""
    return torch.tensor([_count(cfg.clients.batch, int(L)) for L in shard_lens])


def sample_positions(cfg: Config, partition_id: int, shard_len: int) -> Tensor:
    """Positions ``[s]`` in partition ``partition_id``'s shard of its one-time sample: the
    first s of a permutation drawn from ``(seed, "sample", j)``, as the simulator draws it."""
    perm = torch.randperm(shard_len, generator=generator(cfg.seed, "sample", partition_id))
    return perm[: sample_count(cfg, shard_len)]


def shared_sample(cfg: Config, shard: ClientShard) -> tuple[Tensor, Tensor, Tensor]:
    """The one-time sample: training-set indices ``[s]``, examples ``[s, ...]``, labels ``[s]``.

    The same draw as the simulator's ``Simulation.sample_idx`` row for this client.
    """
    pos = sample_positions(cfg, shard.partition_id, int(shard.indices.numel()))
    return shard.indices[pos], shard.x[pos], shard.y[pos]


def batch_positions(
    cfg: Config, shard: ClientShard, r: int, step: int = 0
) -> tuple[Tensor, Tensor]:
    """Positions in the shard ``[K]`` and weights ``[K]`` of round r's mini-batch of local step
    ``step``: row j of the simulator's draw, K the largest batch size, the weights masking this
    client's padding, so that the node computes the simulator's padded row exactly. Padding
    positions beyond this client's shard (a shard shorter than K) point at row 0: their
    weight is 0, so their values never reach the gradient."""
    gen = batch_generator(cfg.seed, r, step)
    lens = shard.shard_lens
    pos, w = draw_without_replacement(lens, batch_counts(cfg, lens), gen, int(lens.max()))
    j = shard.partition_id
    row = pos[j]
    return torch.where(row < lens[j], row, torch.zeros_like(row)), w[j]


@dataclass(frozen=True)
class Role:
    """How a client behaves in one round: honest, or Byzantine with an attack."""

    attack: str = "none"
    params: dict[str, Any] | None = None
    rank: int = 0  # position among the Byzantine clients (aligns shared random draws)
    f: int = 1  # number of Byzantine clients (the shape of the attack's draws)

    @property
    def byzantine(self) -> bool:
        """True when the client attacks."""
        return self.attack != "none"


@functools.lru_cache(maxsize=8)
def _model(cfg_text: str, input_shape: tuple[int, ...], num_classes: int) -> FlatModel:
    """The node's copy of the network (built once per config: its weights come with theta)."""
    return FlatModel(build_network(config_from_text(cfg_text), input_shape, num_classes))


@functools.lru_cache(maxsize=16)
def _attack(name: str, params_json: str) -> Attack:
    return attacks.get(name, **json.loads(params_json))


def check_deployable_attack(name: str) -> None:
    """Refuse an attack a deployed node cannot carry out: one built from the other clients'
    updates (ALIE, Min-Max, Min-Sum), which a node never sees; with its own gradient alone it
    would send that gradient unchanged, an honest node under an attack's name."""
    if name in ("", "none") or name not in attacks.REGISTRY:
        return  # no attack, or an unknown name that attacks.get reports
    if attacks.REGISTRY[name].needs_other_clients:
        raise ValueError(
            f"attack {name!r} is built from the honest clients' updates (their mean and spread), "
            "which a deployed node never sees; over Flower it would send the node's own "
            "gradient unchanged. Run it in the simulator (diversefl run / sweep), or deploy "
            "an attack a node can carry out alone (sign_flip, gaussian, same_value, "
            "label_flip, backdoor, ipm, adaptive)"
        )


def node_guiding(
    cfg: Config, shard: ClientShard, fm: FlatModel, theta: Tensor, k: Tensor, r: int = 1
) -> Tensor:
    """The guiding gradient ``[d]`` the server computes for this node in round r (eq. 6; with
    local training the same local steps on the whole sample), computed by the node on the
    sample it shared (what an attacker who knows the rule does)."""
    _, x, y = shared_sample(cfg, shard)
    scale = k.float()[None] if cfg.clients.loss == "sum" else torch.ones(1)
    w = torch.ones(1, len(y))
    return node_gradient(cfg, shard, fm, theta, r, lambda s: (x[None], y[None], w), scale)


def round_lr(cfg: Config, r: int) -> float:
    """The server's learning rate of round r (``optim.lr`` after the schedule)."""
    o = cfg.optim
    return make_schedule(o.schedule, o.lr, o.milestones, o.gamma, o.warmup_rounds,
                         o.warmup_start_lr)(r)  # fmt: skip


def node_gradient(
    cfg: Config,
    shard: ClientShard,
    fm: FlatModel,
    theta: Tensor,
    r: int,
    batch: Callable[[int], tuple[Tensor, Tensor, Tensor]],
    scale: Tensor,
) -> Tensor:
    """This node's gradient ``[d]`` in round r on ``batch(0)`` (x, y, w with a client axis of
    1), or with local training its pseudo-gradient after its local steps, step s on
    ``batch(s)``: the simulator's row for this client (:func:`local_pseudo_gradients`)."""
    theta = theta.float()
    if not uses_local_training(cfg):
        x, y, w = batch(0)
        return batched_grads(fm, theta, x, y, w, None, scale, method=cfg.engine.grads)[0]
    j = shard.partition_id
    lens = shard.shard_lens
    steps = step_counts(cfg, lens, batch_counts(cfg, lens))[j : j + 1]
    per_client = "auto" if cfg.engine.grads == "dense" else cfg.engine.grads

    def grads_at(models: Tensor, s: int, rows: Tensor | None) -> Tensor:
        if s > 0:
            seed_dropout(seed_for(cfg.seed, "dropout", r, j, s))
        x, y, w = batch(s)
        method = cfg.engine.grads if s == 0 else per_client
        return batched_grads(fm, models, x, y, w, None, scale, method=method)

    return local_pseudo_gradients(theta, grads_at, steps, local_lr(cfg, round_lr(cfg, r)))[0]


def _overrides(obj: object, base: type, method: str) -> bool:
    return getattr(type(obj), method) is not getattr(base, method)


def client_update(cfg: Config, shard: ClientShard, theta: Tensor, r: int, role: Role) -> Tensor:
    """What client j sends in round r for the global model ``theta`` (``[d]``).

    Honest: the gradient of its mini-batch loss (eq. 3), after the aggregator's client-side
    transform. Byzantine: the attack's poisoned batch and/or message. A message attack sees only
    this client's own gradient as the "honest" gradients (a real node cannot see the others);
    one that reads guiding gradients (adaptive) gets the node's own, computed on its sample.
    """
    n, j = shard.num_partitions, shard.partition_id
    fm = _model(config_to_text(cfg), shard.input_shape, shard.num_classes)
    ctx = RoundContext(
        round=r,
        n=n,
        f=max(role.f, role.rank + 1) if role.byzantine else 0,
        generator=generator(cfg.seed, "round", r),
        num_classes=shard.num_classes,
    )
    attack = _attack(role.attack, json.dumps(role.params or {}, sort_keys=True))

    def batch(s: int) -> tuple[Tensor, Tensor, Tensor]:  # local step s's batch
        pos, w = batch_positions(cfg, shard, r, s)
        x, y = shard.x[pos][None], shard.y[pos][None]
        if role.byzantine:  # as row `rank` of the f Byzantine rows: seeded draws, DBA's part
            xs, ys = attack.poison(x.expand(ctx.f, *x.shape[1:]), y.expand(ctx.f, -1), ctx)
            x, y = xs[role.rank : role.rank + 1], ys[role.rank : role.rank + 1]
        return x, y, w[None]

    k = batch_counts(cfg, shard.shard_lens)[j]
    scale = k.float()[None] if cfg.clients.loss == "sum" else torch.ones(1)
    seed_dropout(seed_for(cfg.seed, "dropout", r, j))
    grad = node_gradient(cfg, shard, fm, theta, r, batch, scale)
    agg = build_method(cfg.aggregator.name, cfg.aggregator.params(), cfg.aggregator.pre)
    if isinstance(agg, Aggregator) and _overrides(agg, Aggregator, "prepare"):
        full = torch.zeros(n, grad.numel(), dtype=grad.dtype)
        full[j] = grad
        grad = agg.prepare(full, ctx)[j]
    if role.byzantine and _overrides(attack, Attack, "__call__"):
        if attack.reads_guiding:  # its own guide stands for each Byzantine row
            guide = node_guiding(cfg, shard, fm, theta, k, r)[None].expand(ctx.f, -1)
            ctx = dataclasses.replace(
                ctx, byzantine=torch.ones(ctx.f, dtype=torch.bool), guiding_fn=lambda: guide
            )
        own = grad[None].expand(ctx.f, -1).clone()
        grad = attack(grad[None].clone(), own, ctx)[role.rank].to(grad.dtype)
    return grad


# -- message handlers (shared by the ClientApp and the node worker) ---------------------------
def node_role(cfg: Config, node_config: dict[str, Any], message_config: dict[str, Any]) -> Role:
    """This node's role in a round. Its node config's ``attack`` wins over the server's
    assignment (``adversary="config"``); the attack's settings default to the run config's
    when the names match, ``attack-<setting>`` keys override them."""
    name = str(node_config.get("attack", "") or "")
    if name and name != "none":
        params = dict(cfg.attack.params()) if name == cfg.attack.name else {}
        for key, value in node_config.items():
            if key.startswith("attack-"):
                params[key.removeprefix("attack-").replace("-", "_")] = value
        check_deployable_attack(name)
        rank = int(node_config.get("byzantine-rank", 0))
        f = int(node_config.get("byzantine-f", max(cfg.byzantine_count(), rank + 1)))
        return Role(name, params, rank, f)
    if message_config.get("attack"):
        return Role(
            str(message_config["attack"]),
            json.loads(str(message_config.get("attack-params", "{}"))),
            int(message_config.get("byzantine-rank", 0)),
            int(message_config.get("byzantine-f", 1)),
        )
    return Role()


def _node_shard(cfg: Config, node_config: dict[str, Any], data_dir: str) -> ClientShard:
    if cfg.data.dataset == "files":
        return _own_data(cfg, node_config).shard
    return load_shard(
        cfg,
        int(node_config["partition-id"]),
        int(node_config["num-partitions"]),
        data_dir=str(node_config.get("data-dir", "") or data_dir or "") or None,
        cache_dir=str(node_config.get("cache-dir", "") or "") or None,
    )


def _own_data(cfg: Config, node_config: dict[str, Any]) -> NodeData:
    """The node's own files (``data.dataset = "files"``: its node config's ``data-path``)."""
    return load_node_data(
        cfg,
        config_to_text(cfg),
        int(node_config["partition-id"]),
        int(node_config["num-partitions"]),
        node_config,
    )


def _schema(cfg: Config, node_config: dict[str, Any], shard: ClientShard) -> dict[str, Any]:
    """What the node reports of its data for the server's schema agreement."""
    if cfg.data.dataset != "files":
        return {"input-shape": list(shard.input_shape), "num-classes": shard.num_classes}
    own = _own_data(cfg, node_config)
    return {
        "input-shape": list(shard.input_shape),
        "num-classes": shard.num_classes,
        "classes": list(own.classes),
        "features": list(own.features),
        "dtype": str(shard.x.dtype).removeprefix("torch."),
        "test-len": len(own.y_test),
    }


def handle_sample(cfg_text: str, node_config: dict[str, Any], data_dir: str = "") -> dict[str, Any]:
    """The answer to ``query.sample``: numpy ``idx``, ``x``, ``y`` and a ``meta`` dict."""
    cfg = config_from_text(cfg_text)
    shard = _node_shard(cfg, node_config, data_dir)
    cap = node_config.get("max-sample")
    if cap is not None:  # the node's own limit on what it shares, whatever the server asks
        asked = sample_count(cfg, int(shard.indices.numel()))
        if isinstance(cap, bool) or not isinstance(cap, int | float) or cap <= 0:
            raise ValueError(f"node config max-sample={cap!r}: a count >= 1 or a fraction")
        allowed = _count(cap, int(shard.indices.numel()))  # as clients.sample counts
        if asked > allowed:
            raise ValueError(
                f"the run asks for a sample of {asked} examples (clients.sample = "
                f"{cfg.clients.sample}); this node's max-sample allows {allowed}"
            )
    idx, x, y = shared_sample(cfg, shard)
    j = shard.partition_id
    return {
        "idx": idx.numpy().astype("int64"),
        "x": x.numpy().astype("float32"),
        "y": y.numpy().astype("int64"),
        "meta": {
            "partition-id": j,
            "num-partitions": shard.num_partitions,
            "shard-len": int(shard.indices.numel()),
            "batch-size": int(batch_counts(cfg, shard.shard_lens)[j]),
            "attack": node_role(cfg, node_config, {}).attack,
            **_schema(cfg, node_config, shard),
        },
    }


def handle_train(
    cfg_text: str,
    node_config: dict[str, Any],
    message_config: dict[str, Any],
    theta: Any,
    data_dir: str = "",
) -> dict[str, Any]:
    """The answer to a train message: the numpy ``update`` and a ``metrics`` dict."""
    import time

    t0 = time.perf_counter()
    cfg = config_from_text(cfg_text)
    if cfg.data.dataset == "files":  # own files, standardised as the server says
        shard = standardized(_own_data(cfg, node_config), message_config).shard
        shard = with_shard_lens(shard, str(message_config.get("shard-lens", "")))
    else:
        shard = _node_shard(cfg, node_config, data_dir)
    role = node_role(cfg, node_config, message_config)
    r = int(message_config["server-round"])
    update = client_update(cfg, shard, torch.as_tensor(theta, dtype=torch.float32), r, role)
    return {
        "update": update.detach().numpy().astype("float32"),
        "metrics": {
            "partition-id": shard.partition_id,
            "byzantine": int(role.byzantine),  # ground truth for the run's TPR/FPR only
            "num-examples": int(batch_counts(cfg, shard.shard_lens)[shard.partition_id]),
            "seconds": time.perf_counter() - t0,
        },
    }


def handle_evaluate(
    cfg_text: str,
    node_config: dict[str, Any],
    theta: Any,
    data_dir: str = "",
    message_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The answer to an evaluate message (federated evaluation): the node's own held-out rows'
    example count, correct predictions and summed cross-entropy for the model ``theta``."""
    cfg = config_from_text(cfg_text)
    if cfg.data.dataset != "files":
        raise ValueError(
            "federated evaluation needs each node's own files (data.dataset = 'files'); "
            "a built-in dataset is evaluated on the server's test-set"
        )
    own = standardized(_own_data(cfg, node_config), message_config or {})
    fm = _model(cfg_text, own.shard.input_shape, own.shard.num_classes)
    theta_t = torch.as_tensor(theta, dtype=torch.float32)
    preds, loss = eval_pass(fm, theta_t, own.x_test, own.y_test, cfg.eval.batch)
    count = len(own.y_test)
    return {
        "metrics": {
            "partition-id": own.shard.partition_id,
            "num-examples": count,
            "correct": int((preds == own.y_test).sum()),
            "loss-sum": float(loss) * count,
        }
    }
