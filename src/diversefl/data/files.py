"""Load a user's own data files into a :class:`~diversefl.data.datasets.Dataset`.

Formats: ``.npz`` (arrays ``x``/``y``, optional ``x_test``/``y_test``), CSV and Parquet tables
(one label column, every other column numeric: one-hot encode categorical columns yourself),
and image folders ``ROOT/CLASS/*.png|jpg|jpeg``. Layouts: ``pool`` (one file or image folder,
split among clients by the configured partition) or ``per-client`` (a folder with one file or
image folder per client, client j = j-th by name). Every check runs before anything is
returned, and each failure is one :class:`DataError` naming the file (and row/column/key).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .datasets import DataError, Dataset
from .filedata import FileData
from .images import check_image_shapes, read_image_folder
from .layout import Sources, find_sources
from .npz import read_npz
from .preprocess import apply_standardization, feature_stats, held_out_split
from .tables import read_csv, read_parquet

__all__ = ["LoadedFiles", "load_files", "read_source"]

Classes = int | Sequence[str] | None


@dataclass(frozen=True, eq=False)
class LoadedFiles:
    """A user's data as a Dataset, plus for per-client data the training (and held-out test)
    row indices of each client, and the table statistics used for standardisation."""

    dataset: Dataset
    client_parts: list[np.ndarray] | None  # per-client layout: client j's rows of x_train
    client_test_parts: list[np.ndarray] | None  # client j's rows of x_test (held out / npz)
    client_names: tuple[str, ...] | None = None  # file stem / folder name of each client
    feature_names: tuple[str, ...] | None = None  # table columns, in feature order
    mean: np.ndarray | None = None  # float64 [F]: standardisation statistics (tables only)
    std: np.ndarray | None = None
    fmt: str = "auto"
    layout: str = "pool"


def read_source(path: Path, fmt: str, label: str = "label") -> tuple[FileData, FileData | None]:
    """One file or image folder of format ``fmt``: its examples and, for an npz holding
    ``x_test``/``y_test``, its test examples (else None)."""
    if fmt == "npz":
        return read_npz(path)
    if fmt == "csv":
        return read_csv(path, label), None
    if fmt == "parquet":
        return read_parquet(path, label), None
    if fmt == "images":
        return read_image_folder(path), None
    raise DataError(f"unknown data format {fmt!r} for {path}")


def _take(part: FileData, rows: np.ndarray) -> FileData:
    """The given rows of ``part`` (row locations in errors still refer to the file)."""
    return FileData(
        part.source, part.x[rows], part.labels[rows], part.feature_names,
        locate=lambda i: part.locate(int(rows[i])),
    )  # fmt: skip


def _align(part: FileData, first: FileData, what: str) -> FileData:
    """``part`` with the feature shape (and table columns, matched by name) of ``first``."""
    names, want = part.feature_names, first.feature_names
    if names is not None and want is not None and names != want:
        missing = [c for c in want if c not in names]
        extra = [c for c in names if c not in want]
        if missing or extra:
            raise DataError(
                f"{part.source}: {what} columns differ from {first.source}'s: missing "
                f"{missing}, extra {extra}"
            )
        order = np.array([names.index(c) for c in want])
        part = FileData(part.source, part.x[:, order], part.labels, want, part.locate)
    if part.x.shape[1:] != first.x.shape[1:]:
        raise DataError(
            f"{part.source}: {what} features have shape {tuple(part.x.shape[1:])} per example, "
            f"but the training features of {first.source} have {tuple(first.x.shape[1:])}"
        )
    if part.named != first.named:
        kind = "class names" if part.named else "integer class indices"
        other = "class names" if first.named else "integer class indices"
        raise DataError(f"{part.source}: labels are {kind}, but {first.source}'s are {other}")
    return part


def _class_names(train: list[FileData], classes: Classes) -> tuple[str, ...]:
    """The classes: ``classes`` when given (a count or names in index order), else the sorted
    union of the training class names, or 0..max for integer labels."""
    named = train[0].named
    if isinstance(classes, int):
        if named:
            raise DataError(
                f"{train[0].source}: labels are class names; give classes as a list of names, "
                "not a count"
            )
        if classes < 1:
            raise DataError(f"classes must be >= 1, got {classes}")
        return tuple(str(i) for i in range(classes))
    if isinstance(classes, str):
        raise DataError(f"classes must be a count or a list of names, got the string {classes!r}")
    if classes is not None:
        names = tuple(str(c) for c in classes)
        if not names or len(set(names)) != len(names):
            raise DataError(f"classes must be distinct names, got {list(names)}")
        return names
    if named:
        return tuple(sorted(set().union(*(set(p.labels.tolist()) for p in train))))
    return tuple(str(i) for i in range(int(max(p.labels.max() for p in train)) + 1))


def _indices(part: FileData, names: tuple[str, ...], declared: bool, what: str) -> np.ndarray:
    """``part``'s labels as int64 indices into ``names``; labels outside them are an error."""
    hint = "" if declared else " (the classes seen in the training data; declare all with classes=)"
    if not part.named:
        bad = np.flatnonzero(part.labels >= len(names))
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"{part.source}: {what} label {int(part.labels[i])} at {part.locate(i)} is outside "
                f"the class range 0..{len(names) - 1}{hint}"
            )
        return part.labels.astype(np.int64)
    index = {name: i for i, name in enumerate(names)}
    unique, inverse = np.unique(part.labels, return_inverse=True)
    unknown = [u for u in unique.tolist() if u not in index]
    if unknown:
        i = int(np.argmax(np.isin(part.labels, unknown)))
        raise DataError(
            f"{part.source}: {what} label {part.labels[i].item()!r} at {part.locate(i)} is not "
            f"one of the classes {list(names)}{hint}"
        )
    return np.array([index[u] for u in unique.tolist()], dtype=np.int64)[inverse.reshape(-1)]


def _read_all(sources: Sources, label: str) -> list[tuple[FileData, FileData | None]]:
    """Read every source; an empty one is an error naming it."""
    parts = [read_source(p, sources.fmt, label) for p in sources.paths]
    for part, _ in parts:
        if len(part) == 0:
            who = "client" if sources.layout == "per-client" else "data"
            raise DataError(f"{part.source}: {who} file or folder is empty (no examples)")
    return parts


def _read_test(test_path: str | Path, fmt: str, sources: Sources, label: str) -> FileData:
    """The separate test set at ``test_path``: one file or image folder of the training format
    (an npz's ``x``/``y`` are its test examples)."""
    found = find_sources(test_path, fmt, "pool")
    if found.fmt != sources.fmt:
        raise DataError(
            f"test data {found.paths[0]} is {found.fmt}, but the training data is {sources.fmt}"
        )
    test, _ = read_source(found.paths[0], found.fmt, label)
    if len(test) == 0:
        raise DataError(f"{test.source}: the test data is empty (no examples)")
    return test


def _split(
    parts: list[tuple[FileData, FileData | None]],
    test: FileData | None,
    test_fraction: float,
    seed: int,
) -> tuple[list[FileData], list[FileData], bool]:
    """Training and test parts, and whether there is one test part per source: the npz's own
    test arrays, else ``test``, else a seeded held-out fraction of each source (the same seed
    for every client, so a node that loads only its own file holds out the same rows as the
    per-client simulation)."""
    trains = [train for train, _ in parts]
    with_test = [train.source for train, own in parts if own is not None]
    if with_test:
        if test is not None:
            raise DataError(
                f"{with_test[0]} holds x_test/y_test and a separate test path was given too; "
                "use one of them"
            )
        if len(with_test) != len(parts):
            lacking = next(train.source for train, own in parts if own is None)
            raise DataError(
                f"{lacking} has no x_test/y_test but {with_test[0]} has: give every client "
                "file its test arrays, or none"
            )
        return trains, [own for _, own in parts if own is not None], True
    if test is not None:
        return trains, [test], False
    splits = [held_out_split(len(train), test_fraction, seed) for train in trains]
    return (
        [_take(train, rows) for train, (rows, _) in zip(trains, splits, strict=True)],
        [_take(train, rows) for train, (_, rows) in zip(trains, splits, strict=True)],
        True,
    )


def _ranges(sizes: list[int]) -> list[np.ndarray]:
    """Consecutive int64 index ranges of the given sizes (client j's rows after 0..j-1's)."""
    ends = np.cumsum([0, *sizes])
    return [np.arange(ends[j], ends[j + 1], dtype=np.int64) for j in range(len(sizes))]


def _labelled(
    trains: list[FileData], tests: list[FileData], classes: Classes
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Class names and the int64 training / test labels, checked against those classes."""
    names = _class_names(trains, classes)
    declared = classes is not None
    y_train = [_indices(p, names, declared, "training") for p in trains]
    y_test = [_indices(p, names, declared, "test") for p in tests]
    return names, np.concatenate(y_train), np.concatenate(y_test)


def _statistics(
    x_train: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray]:
    """The training pool's (mean, std) per feature, or the given ones once checked."""
    if stats is None:
        return feature_stats(x_train)
    mean, std = (np.asarray(s, dtype=np.float64) for s in stats)
    width = x_train.shape[1:]
    if mean.shape != width or std.shape != width:
        raise DataError(
            f"standardisation statistics have shapes {mean.shape} and {std.shape}; the tables "
            f"have {width[0]} features"
        )
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise DataError("standardisation statistics must be finite, with every std > 0")
    return mean, std


def _check_client_standardization(
    trains: list[FileData], tests: list[FileData], per_source: bool, stats: object, path: object
) -> None:
    """Per-client standardisation needs one held-out part per file and no given statistics."""
    if stats is not None:
        raise DataError("standardize='client' computes each file's statistics; give no stats")
    if not per_source or len(tests) != len(trains):
        raise DataError(
            f"{Path(str(path))}: standardize='client' standardises each client's test rows with "
            "its own statistics, so each file needs its own test rows (a held-out fraction or "
            "x_test/y_test), not one separate test path"
        )


def _own_standardization(train: FileData, test: FileData) -> tuple[np.ndarray, np.ndarray]:
    """``train`` and ``test`` features standardised with ``train``'s mean/std."""
    mean, std = feature_stats(train.x)
    return apply_standardization(train.x, mean, std), apply_standardization(test.x, mean, std)


def _features(
    trains: list[FileData],
    tests: list[FileData],
    standardize: bool | str,
    stats: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Training and test features (standardised as ``standardize`` says) and the pool's
    statistics when they were used."""
    if standardize == "client":
        pairs = [_own_standardization(a, b) for a, b in zip(trains, tests, strict=True)]
        return (
            np.concatenate([a for a, _ in pairs]), np.concatenate([b for _, b in pairs]),
            None, None,
        )  # fmt: skip
    x_train = np.concatenate([p.x for p in trains])
    x_test = np.concatenate([p.x for p in tests])
    if standardize is not True:
        return x_train, x_test, None, None
    mean, std = _statistics(x_train, stats)
    return (
        apply_standardization(x_train, mean, std),
        apply_standardization(x_test, mean, std),
        mean,
        std,
    )


def load_files(
    path: str | Path,
    fmt: str = "auto",
    layout: str = "auto",
    label: str = "label",
    test_path: str | Path | None = None,
    test_fraction: float = 0.2,
    standardize: bool | str | None = None,
    seed: int = 0,
    classes: Classes = None,
    stats: tuple[np.ndarray, np.ndarray] | None = None,
) -> LoadedFiles:
    """Load a user's data path (see the module docstring for formats and layouts) with its
    test set: the npz's ``x_test``/``y_test``, else ``test_path``, else a seeded
    ``test_fraction`` held out of each file. Tables are standardised with the training
    pool's per-feature mean/std, or the given ``stats`` (in a deployment every node must use
    the same, agreed statistics: pass them here); ``standardize="client"`` standardises each
    file's training and held-out rows with that file's own training statistics (what a
    deployed node does alone; None means true; "samples" leaves the features as they are:
    the engine standardises them with the one-time samples' statistics). ``classes`` (a
    count, or names in index order) declares classes the files may lack."""
    if standardize not in (None, True, False, "client", "samples"):
        raise DataError(
            f"standardize must be true, false, 'client' or 'samples', got {standardize!r}"
        )
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if seed < 0:
        raise DataError(f"seed must be >= 0, got {seed}")
    sources = find_sources(path, fmt, layout)
    if standardize is None:
        standardize = True
    parts = _read_all(sources, label)
    test = None if test_path is None else _read_test(test_path, fmt, sources, label)
    trains, tests, per_source = _split(parts, test, test_fraction, seed)
    if sources.fmt == "images":
        check_image_shapes([p for p in [*trains, *tests] if len(p)])
    first = trains[0]
    trains = [_align(p, first, "training") for p in trains]
    tests = [_align(p, first, "test") for p in tests]
    if sum(len(p) for p in tests) == 0:
        raise DataError(
            f"{Path(path)}: the test set is empty (too few examples to hold out "
            f"{test_fraction:g} of them); pass a test path or more data"
        )
    names, y_train, y_test = _labelled(trains, tests, classes)
    tables = sources.fmt in ("csv", "parquet")
    if standardize == "client" and tables:
        _check_client_standardization(trains, tests, per_source, stats, path)
    x_train, x_test, mean, std = _features(trains, tests, standardize if tables else False, stats)
    per_client = sources.layout == "per-client"
    dataset = Dataset(
        Path(path).stem if Path(path).is_file() else Path(path).name,
        torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32)),
        torch.from_numpy(y_train),
        torch.from_numpy(np.ascontiguousarray(x_test, dtype=np.float32)),
        torch.from_numpy(y_test),
        num_classes=len(names),
        class_names=names,
    )
    return LoadedFiles(
        dataset,
        client_parts=_ranges([len(p) for p in trains]) if per_client else None,
        client_test_parts=(_ranges([len(p) for p in tests]) if per_client and per_source else None),
        client_names=tuple(p.stem if p.is_file() else p.name for p in sources.paths)
        if per_client
        else None,
        feature_names=first.feature_names,
        mean=mean,
        std=std,
        fmt=sources.fmt,
        layout=sources.layout,
    )
