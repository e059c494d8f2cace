"""Building a run's federation with the checks that must come before any file is written: the
data loads and the model fits it (one forward pass on one example), so a model that does not
fit the data is a one-line config error, not a traceback from the first round."""

from __future__ import annotations

import torch

from diversefl.config import Config, ConfigError
from diversefl.data.arrays import UserData
from diversefl.data.datasets import Dataset
from diversefl.engine.inputs import ModelFactory, build_module, load_data
from diversefl.engine.simulator import Simulation


def build_federation(
    cfg: Config,
    data_dir: str | None = None,
    dataset: Dataset | UserData | None = None,
    model: ModelFactory | None = None,
) -> Simulation:
    """The simulated federation of ``cfg`` (on ``dataset`` and ``model`` when given, as
    :class:`Simulation` takes them), after checking that its model fits its data."""
    given = UserData(dataset) if isinstance(dataset, Dataset) else dataset
    given = given or load_data(cfg, data_dir)
    check_model_fits(cfg, given.dataset, model)
    return Simulation(cfg, data_dir=data_dir, dataset=given, model=model)


def check_model_fits(cfg: Config, data: Dataset, model: ModelFactory | None = None) -> None:
    """Run the run's model on one test example of ``data`` (on the CPU, in eval mode, torch's
    random state restored after); a model that cannot take the examples or does not give one
    logit per class is a :class:`ConfigError` naming the model and the data. Errors building
    the model are its own (they name their setting)."""
    shape = tuple(data.input_shape)
    which = f"model.factory = {cfg.model.factory!r}" if cfg.model.factory else None
    which = "the model factory" if model is not None else which
    where = (
        f"{which or f'model.name = {cfg.model.name!r}'} does not fit data.dataset = "
        f"{cfg.data.dataset!r} (examples of shape {'x'.join(map(str, shape))}, "
        f"{data.num_classes} classes)"
    )
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        module = build_module(cfg, data, model).eval()
        try:
            out = module(data.x_test[:1] if len(data.x_test) else data.x_train[:1])
        except (RuntimeError, ValueError, IndexError, TypeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"{where}: {first}") from None
    if tuple(out.shape) != (1, data.num_classes):
        raise ConfigError(f"{where}: it gives outputs of shape {tuple(out.shape)} per example")
