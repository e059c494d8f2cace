"""What a file reader returns (:class:`FileData`), and the label and feature checks every
reader of a user's own data files shares (labels as class indices or names, finite features)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .datasets import DataError

__all__ = ["FileData", "as_features", "as_labels", "first_nonfinite"]


def _row(i: int) -> str:
    return f"row {i}"


@dataclass(frozen=True, eq=False)
class FileData:
    """One file's (or one image folder's) examples: float32 features [n, ...], raw labels
    (int64 class indices as written, or str class names), and how to name row i in errors."""

    source: Path
    x: np.ndarray
    labels: np.ndarray
    feature_names: tuple[str, ...] | None = None
    locate: Callable[[int], str] = field(default=_row, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def named(self) -> bool:
        """True when the labels are class names (strings), False for integer indices."""
        return self.labels.dtype.kind == "U"


def first_nonfinite(x: np.ndarray) -> tuple[int, ...] | None:
    """Index of the first NaN or infinite entry of ``x`` (C order), or None if all are finite."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return None
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), x.shape))


def as_features(x: np.ndarray, source: Path, name: str = "x") -> np.ndarray:
    """``x`` as float32 with at least two dims [N, ...], refusing non-numeric dtypes and any
    value that is NaN or infinite (also after the float32 cast, e.g. 1e300)."""
    if x.dtype.kind not in "biuf":
        raise DataError(f"{source}: {name} has dtype {x.dtype}; features must be numbers")
    if x.ndim < 2:
        raise DataError(
            f"{source}: {name} has shape {x.shape}; features must be [N, ...] with at least two "
            "dims (reshape a single feature to (N, 1))"
        )
    with np.errstate(over="ignore"):  # too large for float32: inf, refused just below
        out = np.ascontiguousarray(x, dtype=np.float32)
    bad = first_nonfinite(out)
    if bad is not None:
        value = x[bad].item()
        raise DataError(
            f"{source}: {name}[{', '.join(map(str, bad))}] is {value!r} (row {bad[0]}); "
            "features must be finite float32 numbers"
        )
    return out


def _integral(values: np.ndarray, source: Path, locate: Callable[[int], str]) -> np.ndarray:
    """Float labels that are whole numbers, as int64; NaN or fractions are refused."""
    ok = np.isfinite(values) & (values == np.round(values))
    if not ok.all():
        i = int(np.argmax(~ok))
        raise DataError(
            f"{source}: label {values[i].item()!r} at {locate(i)} is not a whole number; labels "
            "must be class indices (integers >= 0) or class names"
        )
    return values.astype(np.int64)


def as_labels(values: np.ndarray, source: Path, locate: Callable[[int], str] = _row) -> np.ndarray:
    """Labels as int64 class indices (>= 0; bools and whole floats too) or as str class names."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise DataError(f"{source}: labels have shape {values.shape}; they must be one-dimensional")
    kind = values.dtype.kind
    if kind in "US":
        names = values.astype(str)
        empty = np.flatnonzero(np.char.str_len(names) == 0)
        if empty.size:
            raise DataError(f"{source}: empty label at {locate(int(empty[0]))}")
        return names
    if kind == "f":
        labels = _integral(values, source, locate)
    elif kind in "biu":
        if kind == "u" and values.size and int(values.max()) > np.iinfo(np.int64).max:
            raise DataError(f"{source}: label {int(values.max())} is too large")
        labels = values.astype(np.int64)
    else:
        raise DataError(
            f"{source}: labels have dtype {values.dtype}; use integers >= 0 or class names"
        )
    negative = np.flatnonzero(labels < 0)
    if negative.size:
        i = int(negative[0])
        raise DataError(
            f"{source}: negative label {int(labels[i])} at {locate(i)}; integer labels are class "
            "indices 0..K-1"
        )
    return labels
