"""The Flower server's test set: the only data the server reads itself (optional).

The run config's ``test-set`` says where it comes from:

``""`` (the default)
    The dataset's test split from the data directory (``data-dir``, else ``$DIVERSEFL_DATA``):
    for MNIST and Fashion-MNIST only the two ``t10k`` files are read; digits is bundled with
    scikit-learn; CIFAR's test batch comes out of the one archive that holds both splits. When
    it is not there the run goes on without evaluation (a WARNING says so; the test columns of
    ``metrics.csv`` are then NaN).
a path to an ``.npz`` file
    Arrays ``x`` (float32 ``[N, ...]``, normalised as the nodes' data) and ``y`` (integer
    labels ``[N]``), read without pickle (``allow_pickle=False``): any test set, no data
    directory needed.
``"none"``
    No evaluation.
``"federated"``
    Each node evaluates the model on its own held-out rows and reports its counts; the
    server logs the example-weighted mean (own files only: ``data.dataset = "files"``, where
    it is the default). A Byzantine node can misreport its own counts.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diversefl.flower.task import TaskFacts

_log = logging.getLogger("flwr")  # the ServerApp's log


@dataclass(frozen=True)
class TestSet:
    """Test examples ``x [N, ...]`` (float32) and labels ``y [N]`` (int64), and their source."""

    __test__ = False  # not a pytest test class

    x: Tensor
    y: Tensor
    source: str

    def check(self, facts: TaskFacts) -> TestSet:
        """This test set when it fits the task (example shape, labels in range), else
        ValueError naming the mismatch."""
        if self.x.dtype != torch.float32 or self.y.dtype != torch.int64:
            raise ValueError(
                f"test set {self.source}: x is {self.x.dtype} and y {self.y.dtype}; "
                "expected float32 and int64"
            )
        if self.x.ndim < 2 or self.y.ndim != 1 or len(self.x) != len(self.y) or not len(self.y):
            raise ValueError(
                f"test set {self.source}: x {tuple(self.x.shape)} and y {tuple(self.y.shape)} "
                "are not [N, ...] and [N] with N >= 1"
            )
        if tuple(self.x.shape[1:]) != facts.input_shape:
            raise ValueError(
                f"test set {self.source}: examples of shape {tuple(self.x.shape[1:])}, the "
                f"dataset's are {facts.input_shape}"
            )
        if int(self.y.min()) < 0 or int(self.y.max()) >= facts.num_classes:
            raise ValueError(
                f"test set {self.source}: labels {int(self.y.min())}..{int(self.y.max())} "
                f"outside 0..{facts.num_classes - 1}"
            )
        if not bool(torch.isfinite(self.x).all()):
            raise ValueError(f"test set {self.source}: x has NaN or infinite entries")
        return self


def read_test_set(path: str | os.PathLike[str]) -> TestSet:
    """A test set from an ``.npz`` file holding ``x`` and ``y`` (no pickled objects)."""
    path = Path(path).expanduser()
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = {"x", "y"} - set(npz.files)
            if missing:
                raise ValueError(f"test set {path}: no array {sorted(missing)[0]!r}")
            x, y = npz["x"], npz["y"]
    except (OSError, ValueError) as err:
        raise ValueError(f"test set {path}: {err}") from None
    if x.dtype != np.float32 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"test set {path}: x is {x.dtype} and y {y.dtype}; expected float32, int")
    return TestSet(torch.from_numpy(np.array(x)), torch.from_numpy(y.astype(np.int64)), str(path))


def _idx_test_split(name: str, data_dir: str | None) -> TestSet:
    """MNIST / Fashion-MNIST's test split from its two ``t10k`` IDX files only, normalised as
    :func:`~diversefl.data.datasets.load_dataset` does (pixels / 255)."""
    from diversefl.data.datasets import CHECKSUMS, DataError, file_md5, read_idx, resolve_data_dir

    folder = resolve_data_dir(data_dir) / name
    arrays = []
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        gz, plain = folder / f"{stem}.gz", folder / stem
        path = gz if gz.is_file() else plain
        if not path.is_file():
            raise DataError(f"missing {gz} (or {plain}): the {name} test split")
        want = CHECKSUMS[name].get(path.name)
        if want is not None and file_md5(path) != want:
            raise DataError(f"checksum mismatch for {path}: expected md5 {want}")
        arrays.append(read_idx(path))
    x, y = arrays
    if x.dtype != np.uint8 or x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{folder}: t10k images {x.shape} and labels {y.shape} do not match")
    images = np.ascontiguousarray((x.astype(np.float32) / np.float32(255.0))[:, None])
    return TestSet(
        torch.from_numpy(images), torch.from_numpy(np.array(y, dtype=np.int64)), str(folder)
    )


def dataset_test_split(name: str, data_dir: str | None) -> TestSet:
    """The built-in dataset ``name``'s test split (see the module docstring for what is read)."""
    if name in ("mnist", "fashion-mnist"):
        return _idx_test_split(name, data_dir)
    from diversefl.data.datasets import load_dataset

    data = load_dataset(name, data_dir)  # digits: bundled; CIFAR: one archive, both splits
    return TestSet(data.x_test, data.y_test, f"{name} test split")


def own_files_test_set(spec: str) -> tuple[TestSet | None, bool]:
    """For a federation of nodes with their own files: the server's test set (an ``.npz``,
    checked once the task's shape is agreed) or None, and whether evaluation is federated
    (``""`` or ``"federated"``: yes; ``"none"``: no evaluation)."""
    word = spec.strip().lower()
    if word in ("", "federated"):
        return None, True
    if word == "none":
        _log.info("no test set (test-set = none): the run has no evaluation metrics")
        return None, False
    return read_test_set(spec), False


def load_test_set(
    spec: str, dataset: str, data_dir: str | None, facts: TaskFacts
) -> TestSet | None:
    """The test set the run config's ``test-set`` names (None: no evaluation), checked
    against the task."""
    if spec.strip().lower() == "federated":
        raise ValueError(
            "test-set = federated: the nodes evaluate on their own held-out rows only when "
            f"they hold their own files (data.dataset = 'files'), not {dataset!r}"
        )
    if spec.strip().lower() == "none":
        _log.info("no test set (test-set = none): the run has no evaluation metrics")
        return None
    if spec:
        return read_test_set(spec).check(facts)
    from diversefl.data.datasets import DataError

    try:
        test = dataset_test_split(dataset, data_dir)
    except DataError as err:
        _log.warning(
            "no test set: %s; the run goes on without evaluation (metrics are NaN); "
            "set test-set to an .npz file or data-dir to the dataset's directory",
            " ".join(str(err).split())[:300],
        )
        return None
    return test.check(facts)
