"""Read a user's ``.npz`` file: arrays ``x``/``y`` and, optionally, ``x_test``/``y_test``.
Loaded with ``allow_pickle=False``: an object array (which would need unpickling) is refused."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .datasets import DataError
from .filedata import FileData, as_features, as_labels

__all__ = ["read_npz"]

# An .npz is a zip archive: a local file header, or the end record of an empty archive.
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def _arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of the archive, read without unpickling; failures become DataError."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if magic not in _ZIP_MAGIC:
        what = "a single .npy array" if magic.startswith(b"\x93NUM") else "not a zip archive"
        raise DataError(
            f"{path} is not an .npz archive ({what}); save one with np.savez(path, x=..., y=...)"
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path} as an .npz archive: {exc}") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path} is a single .npy array, not an .npz archive with x and y")
    arrays: dict[str, np.ndarray] = {}
    with archive:
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except ValueError as exc:
                raise DataError(
                    f"{path}: array {key!r} cannot be read without unpickling ({exc}); save "
                    "plain numeric (or string-label) arrays"
                ) from exc
            except (OSError, EOFError, zipfile.BadZipFile) as exc:
                raise DataError(f"cannot read array {key!r} of {path}: {exc}") from exc
    return arrays


def _pair(path: Path, x: np.ndarray, y: np.ndarray, names: tuple[str, str]) -> FileData:
    """Validate one x/y pair (numeric finite features, labels, same length) as FileData."""
    features = as_features(x, path, names[0])
    if y.ndim != 1 or len(y) != len(features):
        raise DataError(
            f"{path}: {names[0]} has {len(features)} rows (shape {x.shape}) but {names[1]} has "
            f"shape {y.shape}; they must have the same length N, with {names[1]} one-dimensional"
        )
    labels = as_labels(y, path, lambda i: f"{names[1]}[{i}]")
    return FileData(path, features, labels, locate=lambda i: f"{names[1]}[{i}]")


def read_npz(path: str | Path) -> tuple[FileData, FileData | None]:
    """The training examples (``x``, ``y``) of an ``.npz`` file and its test examples
    (``x_test``, ``y_test``) when it has both, else None."""
    path = Path(path)
    arrays = _arrays(path)
    missing = [key for key in ("x", "y") if key not in arrays]
    if missing:
        raise DataError(
            f"{path} has no array {' or '.join(map(repr, missing))}; it has "
            f"{sorted(arrays) or 'no arrays'} (save it with np.savez(path, x=..., y=...))"
        )
    has_test = [key for key in ("x_test", "y_test") if key in arrays]
    if len(has_test) == 1:
        other = "y_test" if has_test[0] == "x_test" else "x_test"
        raise DataError(f"{path} has {has_test[0]!r} but no {other!r}; give both or neither")
    train = _pair(path, arrays["x"], arrays["y"], ("x", "y"))
    if not has_test:
        return train, None
    return train, _pair(path, arrays["x_test"], arrays["y_test"], ("x_test", "y_test"))
