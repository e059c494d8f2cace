"""Read a user's CSV or Parquet table: one named label column, every other column a numeric
feature. Categorical (text) feature columns are refused: one-hot encode them yourself first.
CSV needs nothing beyond the standard library and numpy; Parquet needs ``pip install pyarrow``."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .datasets import DataError
from .filedata import FileData, as_labels, first_nonfinite

__all__ = ["read_csv", "read_parquet"]

_CATEGORICAL_HINT = (
    "every column except the label must be numeric: one-hot encode categorical columns "
    "yourself (one 0/1 column per category)"
)


def _label_index(path: Path, columns: list[str], label: str) -> int:
    """Position of the label column; refuses duplicate names and a missing label column."""
    seen: set[str] = set()
    for j, name in enumerate(columns):
        if not name or name.startswith("__index_level_"):
            raise DataError(
                f"{path}: column {j + 1} ({name!r}) has no name: a pandas index saved with the "
                "table? Save it with index=False, or name the column"
            )
        if name in seen:
            raise DataError(f"{path}: column {name!r} appears twice in the header")
        seen.add(name)
    if label not in seen:
        raise DataError(
            f"{path} has no label column {label!r}; its columns are {columns} (name the label "
            "column with label=... / data.label)"
        )
    return columns.index(label)


def _features(
    path: Path, columns: list[np.ndarray], names: tuple[str, ...], locate: Callable[[int], str]
) -> np.ndarray:
    """Stack float64 feature columns into float32 [N, F], refusing a table with no feature
    column and NaN or infinite values (also a value too large for float32), naming the first
    bad row and column."""
    if not columns:
        raise DataError(f"{path} has no feature columns besides the label")
    x = np.stack(columns, axis=1)
    with np.errstate(over="ignore"):  # too large for float32: inf, refused just below
        x32 = x.astype(np.float32)
    bad = first_nonfinite(x32)
    if bad is not None:
        row, col = bad
        raise DataError(
            f"{path}: {locate(row)}, column {names[col]!r} is {x[row, col].item()!r}; features "
            "must be finite float32 numbers (fill or drop missing values first)"
        )
    return x32


def _csv_rows(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, data rows and each row's line number; refuses ragged rows and empty files."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path} is empty: expected a header row naming the columns")
            rows: list[list[str]] = []
            lines: list[int] = []
            for row in reader:
                if not row:
                    continue  # blank line
                if len(row) != len(header):
                    raise DataError(
                        f"{path}: line {reader.line_num} has {len(row)} fields, the header has "
                        f"{len(header)}"
                    )
                rows.append(row)
                lines.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path} as a CSV table: {exc}") from exc
    return [name.strip() for name in header], rows, lines


def _csv_column(path: Path, name: str, cells: list[str], lines: list[int]) -> np.ndarray:
    """One feature column as float64; a cell that is not a number is a clear error."""
    try:
        return np.array(cells, dtype=np.float64)
    except ValueError:
        pass
    values = np.empty(len(cells), dtype=np.float64)
    for i, (cell, line) in enumerate(zip(cells, lines, strict=True)):
        try:
            values[i] = float(cell)
        except ValueError:
            what = "is empty" if not cell.strip() else f"holds {cell!r}, not a number"
            raise DataError(
                f"{path}: column {name!r} at line {line} {what}; {_CATEGORICAL_HINT}"
            ) from None
    return values


def _csv_labels(path: Path, cells: list[str], lines: list[int]) -> np.ndarray:
    """Label cells as integers when every one is an integer, else as class names."""
    stripped = [cell.strip() for cell in cells]
    locate = lines.__getitem__
    try:
        values = np.array([int(cell) for cell in stripped], dtype=np.int64)
    except (ValueError, OverflowError):
        values = np.array(stripped, dtype=str)
    return as_labels(values, path, lambda i: f"line {locate(i)}")


def read_csv(path: str | Path, label: str = "label") -> FileData:
    """A CSV table (header row first) as float32 features of every column but ``label``, in
    header order, and its labels (integers as class indices, other text as class names)."""
    path = Path(path)
    header, rows, lines = _csv_rows(path)
    target = _label_index(path, header, label)
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in header]
    names = tuple(name for j, name in enumerate(header) if j != target)
    features = [
        _csv_column(path, header[j], list(columns[j]), lines)
        for j in range(len(header))
        if j != target
    ]
    locate = lines.__getitem__
    x = _features(path, features, names, lambda i: f"line {locate(i)}")
    labels = _csv_labels(path, list(columns[target]), lines)
    return FileData(path, x, labels, names, locate=lambda i: f"line {locate(i)}")


def _pyarrow():
    """The pyarrow modules, or a DataError saying how to install them."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DataError(
            f"reading Parquet files needs pyarrow, which is not installed ({exc}): "
            "pip install pyarrow"
        ) from exc
    return pa, pc, pq


def _parquet_feature(path: Path, name: str, column, pa) -> np.ndarray:
    """One numeric Parquet column as float64; other types and nulls are refused."""
    kind = column.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise DataError(f"{path}: column {name!r} has type {kind}; {_CATEGORICAL_HINT}")
    if column.null_count:
        row = int(np.argmax(np.asarray(column.is_null())))
        raise DataError(
            f"{path}: column {name!r} is missing (null) at row {row}; features must be finite "
            "numbers (fill or drop missing values first)"
        )
    return np.asarray(column.to_numpy(), dtype=np.float64)


def _parquet_labels(path: Path, column, pa, pc) -> np.ndarray:
    """The label column: integers, bools, whole floats, or text (plain or dictionary-encoded)."""
    if column.null_count:
        row = int(np.argmax(np.asarray(column.is_null())))
        raise DataError(f"{path}: the label is missing (null) at row {row}")
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = pc.cast(column, kind.value_type)
        kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        values = np.array([str(v).strip() for v in column.to_pylist()], dtype=str)
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        values = np.asarray(column.to_numpy())
    else:
        raise DataError(f"{path}: the label column has type {kind}; use integers or text")
    return as_labels(values, path)


def read_parquet(path: str | Path, label: str = "label") -> FileData:
    """A Parquet table as float32 features of every column but ``label``, in schema order, and
    its labels (integers as class indices, text as class names). Needs pyarrow."""
    path = Path(path)
    pa, pc, pq = _pyarrow()
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise DataError(f"cannot read {path} as a Parquet table: {exc}") from exc
    header = list(table.column_names)
    target = _label_index(path, header, label)
    names = tuple(name for j, name in enumerate(header) if j != target)
    features = [
        _parquet_feature(path, header[j], table.column(j), pa)
        for j in range(len(header))
        if j != target
    ]
    x = _features(path, features, names, lambda i: f"row {i}")
    labels = _parquet_labels(path, table.column(target), pa, pc)
    return FileData(path, x, labels, names)
