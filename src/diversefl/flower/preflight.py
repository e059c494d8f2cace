"""Everything ``deploy-local`` checks before it starts a process, and the plan it then runs.

:func:`plan_deployment` refuses (:class:`DeployInputError`, the command's exit status 2) a
number that is not positive and finite, a run directory that already holds a run, an app
without the run-config keys it needs, a config that does not load (or a dataset that is not
there), a rule a deployment cannot run (a protocol such as RSA, whose clients keep model
copies), an attack a node cannot carry out alone, and a bad ``--byzantine`` choice, so that
a mistake costs no SuperLink start and leaves no process or file behind.
"""

from __future__ import annotations

import math
import os
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from diversefl.config import Config
from diversefl.flower.deploy_errors import DeployInputError
from diversefl.flower.processes import config_args
from diversefl.flower.workdir import check_workdir
from diversefl.registry import unknown_name

#: The repository whose ``pyproject.toml`` declares the Flower app (the default ``app_dir``).
REPO_ROOT = Path(__file__).resolve().parents[3]
RUNTIMES = ("deployment", "simulation")
ADVERSARIES = ("config", "nodes")


@dataclass(frozen=True)
class DeployPlan:
    """A checked deployment: what to run, where, and each node's attack settings."""

    cfg: Config
    config_path: str  # absolute; "" for the built-in demo
    overrides: tuple[str, ...]  # the user's overrides plus clients.n = nodes
    data_dir: str  # absolute; "" for $DIVERSEFL_DATA
    out: Path
    app: Path
    workdir: Path | None  # None: a new temporary directory
    runtime: str
    nodes: int
    run_config: dict[str, Any] = field(default_factory=dict)
    node_extra: dict[int, dict[str, Any]] = field(default_factory=dict)
    node_data: tuple[str, ...] = ()  # own files: node j's data-path (absolute)

    def node_configs(self, cache: Path) -> list[dict[str, Any]]:
        """Each SuperNode's node config: its partition, the shard cache, the data directory
        and, for an attacking node, its attack settings; checked to pass Flower's parser."""
        configs = []
        for j in range(self.nodes):
            node: dict[str, Any] = {"partition-id": j, "num-partitions": self.nodes}
            if self.node_data:  # its own files, nothing else
                node["data-path"] = self.node_data[j]
            else:
                node["cache-dir"] = str(cache)
            if self.data_dir and not self.node_data:
                node["data-dir"] = self.data_dir
            node.update(self.node_extra.get(j, {}))
            config_args(node)
            configs.append(node)
        return configs


def one_line(err: BaseException) -> str:
    """An error's text on one line (a config error lists its problems on indented lines)."""
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())


def check_positive(name: str, value: object, *, integer: bool = False, zero: bool = False) -> None:
    """Refuse ``value`` unless it is a finite number > 0 (>= 0 with ``zero``; an int with
    ``integer``), naming the option."""
    kind = "an integer" if integer else "a finite number"
    allowed = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise DeployInputError(f"{name}={value!r}: must be {kind}")
    number = float(value)
    if not math.isfinite(number):
        raise DeployInputError(f"{name}={value!r}: must be {kind}")
    if number < 0 or (number == 0 and not zero):
        raise DeployInputError(f"{name}={value!r}: must be {'>= 0' if zero else '> 0'}")


def check_settings(
    *,
    nodes: int,
    timeout: float,
    round_timeout: float,
    threads: int,
    max_inflight: int | None,
    min_nodes: int | None,
    runtime: str,
    adversary: str | None,
    node_auth: bool = False,
    tls: object | None = None,
) -> None:
    """The launcher's own numbers and choices (before any file is read)."""
    check_positive("nodes", nodes, integer=True)
    check_positive("timeout", timeout)
    check_positive("round_timeout", round_timeout)
    check_positive("threads", threads, integer=True)
    if max_inflight is not None:
        check_positive("max_inflight", max_inflight, integer=True, zero=True)
    if min_nodes is not None:
        check_positive("min_nodes", min_nodes, integer=True)
        if min_nodes > nodes:
            raise DeployInputError(f"min_nodes={min_nodes}: must lie in 1..nodes={nodes}")
    if runtime not in RUNTIMES:
        raise DeployInputError(f"runtime={runtime!r}: allowed: {', '.join(RUNTIMES)}")
    if adversary is not None and adversary not in ADVERSARIES:
        raise DeployInputError(f"adversary={adversary!r}: allowed: {', '.join(ADVERSARIES)}")
    if node_auth and tls is None and runtime == "deployment":
        raise DeployInputError("node_auth needs tls: Flower authenticates SuperNodes only over TLS")


def check_out(out: str | os.PathLike[str], overwrite: bool) -> Path:
    """The run directory, refused when it already holds a run and ``overwrite`` is off."""
    from diversefl.results import RUN_FILES

    out_dir = Path(out).expanduser().resolve()
    held = [f for f in RUN_FILES if (out_dir / f).exists()]
    if held and not overwrite:
        raise DeployInputError(
            f"{out_dir} already holds a run ({', '.join(held)}); pass --overwrite to replace it "
            "or choose another --out"
        )
    return out_dir


def check_app(app_dir: str | os.PathLike[str] | None, min_nodes: int | None) -> Path:
    """The Flower app's directory (``pyproject.toml`` with ``[tool.flwr.app]``); with
    ``min_nodes`` its run config must declare ``min-nodes`` (flwr refuses unknown keys)."""
    app = Path(app_dir).resolve() if app_dir else REPO_ROOT
    if not (app / "pyproject.toml").exists():
        raise DeployInputError(f"no pyproject.toml with [tool.flwr.app] in {app}")
    if min_nodes is not None and "min-nodes" not in _app_config_keys(app):
        raise DeployInputError(
            f"min_nodes needs a `min-nodes = 0` entry in [tool.flwr.app.config] of "
            f"{app / 'pyproject.toml'} (flwr refuses run-config keys the app does not list)"
        )
    return app


def _app_config_keys(app: Path) -> set[str]:
    """The run-config keys the app at ``app`` declares (``[tool.flwr.app.config]``)."""
    data = tomllib.loads((app / "pyproject.toml").read_text())
    return set(data.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}))


def load_deployable_config(
    config_path: str, overrides: Sequence[str], data_dir: str | None
) -> Config:
    """Load the config (``""``: the built-in demo) and check that a deployment can run it: its
    rule is a gradient aggregation rule, its attack one a node carries out alone, and its
    dataset is there. Every refusal is a one-line :class:`DeployInputError`."""
    from diversefl.aggregators import AggregatorError
    from diversefl.config import ConfigError
    from diversefl.data.datasets import DataError, load_dataset
    from diversefl.flower.common import check_deployable_attack, load_run_config
    from diversefl.methods import build_method
    from diversefl.protocols import Protocol

    try:
        cfg = load_run_config(config_path, list(overrides))
        method = build_method(cfg.aggregator.name, cfg.aggregator.params(), cfg.aggregator.pre)
        check_deployable_attack(cfg.attack.name)
        if cfg.data.dataset != "files":  # own files: each node's are checked on their own
            load_dataset(cfg.data.dataset, data_dir)
    except (ConfigError, DataError, AggregatorError, ValueError, FileNotFoundError) as err:
        raise DeployInputError(one_line(err)) from None
    if isinstance(method, Protocol):
        raise DeployInputError(
            f"aggregator.name={cfg.aggregator.name!r} is a protocol whose clients keep model "
            "copies; it runs in the simulator only (diversefl run), not over Flower: deploy "
            "a gradient aggregation rule"
        )
    return cfg


def own_node_paths(cfg: Config, node_data: Sequence[str] | None) -> tuple[str, ...]:
    """Each node's own data path for ``data.dataset = "files"``: the ``--node-data`` paths in
    order, or one folder holding one file or image folder per node (sorted by name; by
    default the config's ``data.path``, as the simulator reads it per client)."""
    from diversefl.data.datasets import DataError
    from diversefl.data.layout import find_sources

    items = [str(p) for p in node_data or []] or [str(cfg.data.path)]
    paths: Sequence[Path] = [Path(p).expanduser().resolve() for p in items]
    for p in paths:
        if not p.exists():
            raise DeployInputError(f"node data {p}: no such file or folder")
    if len(paths) == 1 and paths[0].is_dir():
        try:
            paths = find_sources(paths[0], cfg.data.format or "auto", "per-client").paths
        except DataError as err:
            raise DeployInputError(
                f"node data {paths[0]}: not one file or image folder per node ({one_line(err)}); "
                "give one --node-data path per node"
            ) from None
    return tuple(str(p) for p in paths)


def _node_count(nodes: int | None, own: tuple[str, ...] | None) -> int:
    """``--nodes``, or with own files the number of node data paths (which it must match)."""
    if own is None:
        if nodes is None:
            raise DeployInputError("--nodes: how many SuperNodes (required for a built-in dataset)")
        return nodes
    if nodes is not None and int(nodes) != len(own):
        raise DeployInputError(
            f"--nodes {nodes}, but there are {len(own)} nodes' data paths: drop --nodes or "
            "give one path per node"
        )
    return len(own)


def check_node_files(cfg: Config, paths: Sequence[str], runtime: str = "deployment") -> None:
    """Read every node's files as that node will (before anything starts): a DataError
    becomes a one-line :class:`DeployInputError` naming the node and the file."""
    from diversefl.data.datasets import DataError
    from diversefl.flower.node_data import read_own_files

    if runtime != "deployment":
        raise DeployInputError(
            "--runtime simulation: Flower's simulation engine gives every node the same "
            "node config, so nodes cannot read their own files; use the deployment runtime"
        )

    for j, path in enumerate(paths):
        try:
            read_own_files(cfg, path)
        except (DataError, ValueError) as err:
            raise DeployInputError(f"node {j} ({path}): {one_line(err)}") from None


def byzantine_nodes(
    config_path: str | os.PathLike[str],
    overrides: Sequence[str],
    data_dir: str | None,
) -> dict[int, dict[str, Any]]:
    """Node-config attack settings for the config's fixed Byzantine clients (partition id ->
    ``{"attack": ..., "byzantine-rank": ..., "byzantine-f": ...}``, plus its settings)."""
    from diversefl.flower.common import load_run_config

    return config_byzantine_nodes(load_run_config(config_path, list(overrides)), data_dir)


def config_byzantine_nodes(cfg: Config, data_dir: str | None) -> dict[int, dict[str, Any]]:
    """:func:`byzantine_nodes` for a loaded config: its seeded or listed Byzantine clients,
    drawn as the simulator draws them."""
    from diversefl.engine.simulator import Simulation
    from diversefl.flower.common import check_deployable_attack

    if cfg.attack.name == "none":
        return {}
    try:
        check_deployable_attack(cfg.attack.name)
    except ValueError as err:
        raise DeployInputError(one_line(err)) from None
    if cfg.attack.byzantine == "per_round":
        raise DeployInputError(
            'attack.byzantine = "per_round" cannot be set per node; use adversary="config"'
        )
    sim = Simulation(cfg, data_dir=data_dir)
    ids = sim.byzantine_ids()
    assert isinstance(ids, list)
    nodes: dict[int, dict[str, Any]] = {}
    for rank, j in enumerate(ids):
        nodes[j] = {"attack": cfg.attack.name, "byzantine-rank": rank, "byzantine-f": len(ids)}
        nodes[j].update(_attack_settings(cfg))
    return nodes


def _attack_settings(cfg: Config) -> dict[str, Any]:
    """The config's attack settings as node-config entries (``attack-<key>``)."""
    return {f"attack-{k.replace('_', '-')}": v for k, v in cfg.attack.params().items()}


def chosen_byzantine_nodes(
    cfg: Config, byzantine: Mapping[int, str] | Sequence[int], nodes: int
) -> dict[int, dict[str, Any]]:
    """Node-config attack settings for ``--byzantine``: a mapping partition id -> attack name
    (``""``: the config's attack), or a list of ids using the config's attack."""
    from diversefl import attacks
    from diversefl.flower.common import check_deployable_attack

    items = (
        byzantine.items()
        if isinstance(byzantine, Mapping)
        else [(j, cfg.attack.name) for j in byzantine]
    )
    out: dict[int, dict[str, Any]] = {}
    for rank, (j, name) in enumerate(sorted(items)):
        name = name or cfg.attack.name
        if not 0 <= int(j) < nodes:
            raise DeployInputError(f"byzantine node {j}: partition ids are 0..{nodes - 1}")
        if name == "none":
            raise DeployInputError(
                f"byzantine node {j}: no attack to run (the config's attack is 'none'); "
                f"name one, e.g. {j}=sign_flip"
            )
        if name not in attacks.REGISTRY:
            raise DeployInputError(
                unknown_name(f"byzantine node {j}", "attack", name, attacks.REGISTRY)
            )
        try:
            check_deployable_attack(name)
        except ValueError as err:
            raise DeployInputError(f"byzantine node {j}: {err}") from None
        out[int(j)] = {"attack": name, "byzantine-rank": rank}
        if name == cfg.attack.name:
            out[int(j)].update(_attack_settings(cfg))
    return out


def _run_config(
    plan: DeployPlan,
    adversary: str,
    round_timeout: float,
    max_inflight: int | None,
    min_nodes: int | None,
) -> dict[str, Any]:
    """The ServerApp's run config (``flwr run --run-config``), checked to pass Flower's
    parser (a value with both kinds of quote cannot)."""
    if max_inflight is None:  # a deployment: three messages per CPU at most; simulation: all
        max_inflight = max(2, 3 * (os.cpu_count() or 1)) if plan.runtime == "deployment" else 0
    run_config = {
        "config-path": plan.config_path,
        "overrides": ";".join(plan.overrides),
        "data-dir": plan.data_dir,
        "out": str(plan.out),
        "adversary": adversary,
        "timeout": float(round_timeout),
        "overwrite": True,
        "max-inflight": int(max_inflight),
    }
    if min_nodes is not None:
        run_config["min-nodes"] = int(min_nodes)
    config_args(run_config)
    return run_config


def plan_deployment(
    config_path: str | os.PathLike[str],
    nodes: int | None,
    out: str | os.PathLike[str],
    *,
    byzantine: Mapping[int, str] | Sequence[int] | None,
    data_dir: str | os.PathLike[str] | None,
    overrides: Sequence[str],
    runtime: str,
    adversary: str | None,
    workdir: str | os.PathLike[str] | None,
    app_dir: str | os.PathLike[str] | None,
    timeout: float,
    round_timeout: float,
    threads: int,
    max_inflight: int | None,
    min_nodes: int | None,
    overwrite: bool,
    node_auth: bool = False,
    tls: object | None = None,
    node_data: Sequence[str] | None = None,
) -> DeployPlan:
    """Check every input of :func:`~diversefl.flower.launch.deploy_local` (see the module
    docstring) and return the plan; nothing is started or written."""
    own = _own_files_nodes(config_path, overrides, node_data)
    nodes = _node_count(nodes, own)
    check_settings(
        nodes=nodes,
        timeout=timeout,
        round_timeout=round_timeout,
        threads=threads,
        max_inflight=max_inflight,
        min_nodes=min_nodes,
        runtime=runtime,
        adversary=adversary,
        node_auth=node_auth,
        tls=tls,
    )
    out_dir = check_out(out, overwrite)
    app = check_app(app_dir, min_nodes)
    config_abs = str(Path(config_path).expanduser().resolve()) if str(config_path) else ""
    data = str(Path(data_dir).expanduser().resolve()) if data_dir else ""
    all_overrides = (*overrides, f"clients.n={int(nodes)}")
    try:
        cfg = load_deployable_config(config_abs, all_overrides, data or None)
    except DeployInputError as err:  # too many Byzantine clients for so few nodes: say the fix
        hint = byzantine_hint(config_abs, overrides, int(nodes))
        raise DeployInputError(f"{hint}; {err}" if hint else str(err)) from None
    if own is not None:
        check_node_files(cfg, own, runtime)
    adversary = adversary or ("config" if runtime == "simulation" else "nodes")
    node_extra: dict[int, dict[str, Any]] = {}
    if runtime == "deployment" and adversary == "nodes":
        if byzantine is not None:
            node_extra = chosen_byzantine_nodes(cfg, byzantine, nodes)
        else:
            node_extra = config_byzantine_nodes(cfg, data or None)
    plan = DeployPlan(
        cfg=cfg,
        config_path=config_abs,
        overrides=all_overrides,
        data_dir=data,
        out=out_dir,
        app=app,
        workdir=check_workdir(workdir) if workdir else None,
        runtime=runtime,
        nodes=int(nodes),
        node_extra=node_extra,
        node_data=own or (),
    )
    run_config = _run_config(plan, adversary, round_timeout, max_inflight, min_nodes)
    plan.node_configs((plan.workdir or Path(tempfile.gettempdir())) / "cache")  # Flower parses
    return replace(plan, run_config=run_config)


def byzantine_hint(config_path: str, overrides: Sequence[str], nodes: int) -> str:
    """For a config refused at ``clients.n = nodes`` over its Byzantine count, what to add:
    ``attack.f = 5 Byzantine of 4 nodes: add --set attack.f=3 (or fewer)``, the largest count
    the config (its rule's client-count limit included) accepts with that many nodes; '' when
    the config is refused for another reason, or lists its Byzantine ids."""
    from diversefl.flower.common import load_run_config

    def loads(extra: list[str]) -> Config | None:
        try:
            return load_run_config(config_path, [*overrides, *extra])
        except ValueError:  # ConfigError included
            return None

    cfg = loads([])
    at_nodes = [f"clients.n={nodes}"]
    if cfg is None or loads(at_nodes) is not None or isinstance(cfg.attack.byzantine, list):
        return ""
    f = cfg.attack.f
    for k in range(min(f, nodes) - 1, -1, -1):
        if loads([*at_nodes, f"attack.f={k}"]) is not None:
            fewer = " (or fewer)" if k else ""
            return f"attack.f = {f} Byzantine of {nodes} nodes: add --set attack.f={k}{fewer}"
    return ""


def _own_files_nodes(
    config_path: str | os.PathLike[str], overrides: Sequence[str], node_data: Sequence[str] | None
) -> tuple[str, ...] | None:
    """The nodes' own data paths when the config reads files (else None; ``--node-data`` is
    then refused)."""
    from diversefl.config import ConfigError
    from diversefl.flower.common import load_run_config

    path = str(Path(config_path).expanduser().resolve()) if str(config_path) else ""
    try:
        cfg = load_run_config(path, list(overrides))
    except (ConfigError, ValueError, FileNotFoundError) as err:
        raise DeployInputError(one_line(err)) from None
    if cfg.data.dataset != "files":
        if node_data:
            raise DeployInputError(
                f"--node-data: data.dataset = {cfg.data.dataset!r} is a built-in dataset the "
                "nodes share; --node-data is for data.dataset = 'files'"
            )
        return None
    return own_node_paths(cfg, node_data)


__all__ = [
    "REPO_ROOT",
    "DeployPlan",
    "byzantine_hint",
    "byzantine_nodes",
    "check_positive",
    "chosen_byzantine_nodes",
    "config_byzantine_nodes",
    "plan_deployment",
]
