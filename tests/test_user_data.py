"""A user's own data in memory and their own model: arrays and per-client lists become the
engine's Dataset (the clients' own rows kept as a natural partition), a model factory is
loaded by name, models that mix examples across a batch are refused, and the batched
per-client gradients of user models equal a plain per-client loop."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from diversefl.data.arrays import from_arrays, from_clients
from diversefl.data.datasets import DataError
from diversefl.engine.gradients import batched_grads, loop_grads
from diversefl.engine.params import FlatModel
from diversefl.models import build_model, check_user_model, load_factory, mlp, per_batch_state


def test_arrays_become_a_dataset_with_the_numbers_unchanged():
    x = np.arange(24, dtype=np.float64).reshape(6, 4)
    u = from_arrays(x, [0, 1, 2, 0, 1, 2], x[:2] + 0.5, np.array([2, 0]))
    d = u.dataset
    assert u.client_parts is None and d.num_classes == 3 and d.input_shape == (4,)
    assert d.x_train.dtype == torch.float32 and torch.equal(d.x_train, torch.tensor(x).float())
    assert d.y_test.tolist() == [2, 0]
    assert from_arrays(x, [0] * 6, x, [1] * 6, num_classes=5).dataset.num_classes == 5


def test_per_client_entries_keep_their_own_rows():
    a, b = np.full((3, 2), 1.0), np.full((5, 2), 2.0)
    u = from_clients([(a, [0, 1, 0]), (torch.tensor(b), torch.tensor([1] * 5))], (a, [1, 1, 1]))
    assert [p.tolist() for p in u.client_parts] == [[0, 1, 2], [3, 4, 5, 6, 7]]
    d = u.dataset
    assert torch.equal(d.x_train[u.client_parts[1]], torch.tensor(b).float())
    assert d.y_train[u.client_parts[0]].tolist() == [0, 1, 0]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: from_arrays(np.ones((2, 3)), [0, 1], np.ones((2, 4)), [0, 1]), "x_test rows"),
        (lambda: from_arrays(np.ones((2, 3)), [0], np.ones((1, 3)), [0]), "y_train: labels"),
        (lambda: from_arrays(np.ones((2, 3)), [0, -1], np.ones((1, 3)), [0]), ">= 0"),
        (lambda: from_arrays(np.ones((2, 3)), [0, 0.5], np.ones((1, 3)), [0]), "integers"),
        (
            lambda: from_arrays(np.array([[1.0, np.nan]]), [0], np.ones((1, 2)), [0]),
            "x_train: row 0 has NaN",
        ),
        (lambda: from_arrays(np.ones((2, 3)), [0, 3], np.ones((1, 3)), [0], 3), "num_classes = 3"),
        (lambda: from_clients([], (np.ones((1, 2)), [0])), "no clients"),
        (
            lambda: from_clients([(np.ones((0, 2)), [])], (np.ones((1, 2)), [0])),
            "client 0 has no examples",
        ),
        (
            lambda: from_clients(
                [(np.ones((1, 2)), [0]), (np.ones((1, 3)), [0])], (np.ones((1, 2)), [0])
            ),
            "client 1: rows of shape",
        ),
    ],
)
def test_bad_user_data_is_a_clear_error(call, match):
    with pytest.raises(DataError, match=match):
        call()


def test_mlp_layer_sizes():
    model = mlp((1, 4, 4), 3, hidden=[7, 5, 2])
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(7, 16), (7,), (5, 7), (5,), (2, 5), (2,), (3, 2), (3,)]
    torch.manual_seed(0)
    one = build_model("mlp", (1, 28, 28), 10)
    torch.manual_seed(0)
    listed = build_model("mlp", (1, 28, 28), 10, hidden=[200, 200])
    for p, q in zip(one.parameters(), listed.parameters(), strict=True):  # same init as before
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="widths must be >= 1"):
        mlp((4,), 2, hidden=[3, 0])


def _tiny(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), num_classes))


def test_a_factory_is_loaded_by_name(monkeypatch):
    module = types.ModuleType("user_models_for_test")
    module.tiny = _tiny
    monkeypatch.setitem(sys.modules, "user_models_for_test", module)
    assert load_factory("user_models_for_test:tiny") is _tiny
    for spec, match in (
        ("user_models_for_test", "expected 'package.module:function'"),
        ("no_such_module_x:f", "cannot import"),
        ("user_models_for_test:missing", "no function 'missing'"),
    ):
        with pytest.raises(ValueError, match=match):
            load_factory(spec)


def test_models_that_normalise_over_the_batch_are_refused():
    bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    assert per_batch_state(bn) == ["1"]
    with pytest.raises(ValueError, match=r"layers \['1'\] normalise over the batch"):
        check_user_model(bn, "model.factory")
    with pytest.raises(ValueError, match="must return a torch.nn.Module"):
        check_user_model(lambda x: x, "model.factory")
    gn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4))
    assert check_user_model(gn, "model.factory") is gn


class SmallConv(nn.Module):
    """A user's small conv net (GroupNorm, no batch statistics)."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        c = input_shape[0]
        self.body = nn.Sequential(
            nn.Conv2d(c, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.head = nn.Linear(4 * (input_shape[1] // 2) * (input_shape[2] // 2), num_classes)

    def forward(self, x):
        return self.head(self.body(x).flatten(1))


def tabular_mlp(input_shape, num_classes, p=0.3):
    return nn.Sequential(
        nn.Linear(input_shape[0], 16), nn.ReLU(), nn.Dropout(p), nn.Linear(16, num_classes)
    )


@pytest.mark.parametrize(
    ("factory", "shape"), [(SmallConv, (2, 6, 6)), (tabular_mlp, (9,))], ids=["conv", "tabular"]
)
def test_batched_gradients_of_user_models_equal_a_plain_loop(factory, shape):
    torch.manual_seed(0)
    module = factory(shape, 3)
    module.eval()  # dropout off: the loop and the batched call then see the same network
    fm = FlatModel(module)
    theta = fm.flatten() + 0.01 * torch.randn(fm.dim)
    x, y = torch.randn(4, 5, *shape), torch.randint(0, 3, (4, 5))
    w = torch.ones(4, 5)
    w[2, 3:] = 0  # a client with a smaller batch
    fast = batched_grads(fm, theta, x, y, w)
    torch.testing.assert_close(fast, loop_grads(fm, theta, x, y, w), atol=1e-5, rtol=1e-4)


def test_a_factory_module_in_the_current_folder_gets_the_pythonpath_hint(tmp_path, monkeypatch):
    """The `diversefl` command's import path does not hold the current folder: a mynet.py
    beside the user is not importable, and the error says how to make it so."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mynet_not_on_path_x.py").write_text("def net(s, c):\n    return None\n")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    with pytest.raises(
        ValueError, match=r"mynet_not_on_path_x.py is in this folder.*PYTHONPATH=\."
    ):
        load_factory("mynet_not_on_path_x:net")
    with pytest.raises(ValueError, match="must be installed or in a folder on PYTHONPATH"):
        load_factory("no_such_module_y:net")


def test_mlp_widths_with_a_factory_say_to_remove_them():
    from conftest import tiny_config

    from diversefl.config import ConfigError, make_config

    raw = tiny_config(model={"name": "mlp", "hidden": [8], "factory": "m:f"})
    with pytest.raises(ConfigError, match=r"model.hidden: .*model.factory = 'm:f'.*remove"):
        make_config(raw)
