"""What a run trains on and with: the dataset (a built-in by name, the user's files from
``data.path``, or data handed to :func:`diversefl.run`), each client's training indices (the
configured partition, or the clients' own data for ``partition = "natural"``) and the model
(a built-in, an ``mlp`` with configured widths, ``model.factory`` or a factory passed in)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch import nn

from diversefl.config import Config, ConfigError
from diversefl.data.arrays import UserData
from diversefl.data.datasets import Dataset, load_dataset
from diversefl.data.partition import partition
from diversefl.models import build_model, check_user_model, load_factory

ModelFactory = Callable[[tuple[int, ...], int], nn.Module]


def load_data(cfg: Config, data_dir: str | None = None) -> UserData:
    """The config's dataset: a built-in one by name, or ``dataset = "files"`` from
    ``data.path`` (per-client files keep their clients as a natural partition)."""
    d = cfg.data
    if d.dataset != "files":
        return UserData(load_dataset(d.dataset, data_dir))
    from diversefl.data.files import load_files

    assert d.path is not None  # DataConfig requires data.path for dataset = "files"
    loaded = load_files(
        d.path,
        fmt=d.format or "auto",
        layout=d.layout or "auto",
        label=d.label or "label",
        test_path=d.test_path or None,
        test_fraction=0.2 if d.test_fraction is None else d.test_fraction,
        standardize=d.standardize,
        seed=cfg.seed,
        classes=d.classes,
    )
    return UserData(loaded.dataset, loaded.client_parts)


def client_parts(cfg: Config, data: Dataset, own: list[np.ndarray] | None) -> list[np.ndarray]:
    """Each client's training indices: the clients' own data when there is one entry per
    client (``partition = "natural"``), else the configured partition of the pool."""
    n = cfg.clients.n
    if own is not None:
        if cfg.data.partition != "natural":
            raise ConfigError(
                f"data.partition: the data comes as {len(own)} clients' own sets: set "
                f"data.partition = 'natural' (got {cfg.data.partition!r})"
            )
        if len(own) != n:
            raise ConfigError(
                f"clients.n = {n}, but the data holds {len(own)} clients' sets: set "
                f"clients.n = {len(own)}"
            )
        return [np.asarray(p, dtype=np.int64) for p in own]
    return partition(data.y_train, n, cfg.data.partition, seed=cfg.seed, alpha=cfg.data.alpha)


def build_module(cfg: Config, data: Dataset, factory: ModelFactory | None = None) -> nn.Module:
    """The network for ``data`` (see :func:`build_network`)."""
    return build_network(cfg, tuple(data.input_shape), data.num_classes, factory)


def build_network(
    cfg: Config,
    input_shape: tuple[int, ...],
    num_classes: int,
    factory: ModelFactory | None = None,
) -> nn.Module:
    """The network: ``factory`` (from the Python API), else ``model.factory``, else the
    registered ``model.name`` (``mlp`` with ``model.hidden`` widths when set). The Flower
    server and nodes build theirs from the agreed input shape and classes alone."""
    shape, classes = tuple(input_shape), int(num_classes)
    if factory is None and cfg.model.factory:
        factory = load_factory(cfg.model.factory)
    if factory is not None:
        where = "model" if cfg.model.factory is None else f"model.factory {cfg.model.factory!r}"
        return check_user_model(factory(shape, classes), where)
    settings = {} if cfg.model.hidden is None else {"hidden": list(cfg.model.hidden)}
    return build_model(cfg.model.name, shape, classes, **settings)
