"""Write and read the uploaded samples: ``RUN_DIR/samples/partition-J.npz`` (arrays ``x``
float32 [s, *input_shape] and ``y`` int64 [s]) and the manifest that lists them with their
sha256. Reading validates every file against the manifest before returning anything."""

from __future__ import annotations

import hashlib
import io
import operator
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diversefl.review.files import (
    MANIFEST,
    MAX_JSON_BYTES,
    MAX_NPZ_BYTES,
    ReviewError,
    atomic_write,
    ensure_samples_dir,
    read_bytes,
    samples_dir,
)
from diversefl.review.manifest import (
    Manifest,
    NodeEntry,
    check_layout,
    parse_manifest,
    sample_file,
    sample_kind,
)


@dataclass(frozen=True, eq=False)
class StoredSample:
    """One node's uploaded sample: ``x`` float32 [s, *input_shape], ``y`` int64 [s] class
    indices, and the behaviour the node was told to simulate (``attack``, "none" if honest).
    Arrays make ``==`` ambiguous, so compare fields with ``np.array_equal``."""

    partition: int
    node_id: str
    x: np.ndarray
    y: np.ndarray
    attack: str = "none"


@dataclass(frozen=True, eq=False)
class SampleSet:
    """Every node's validated sample and the layout they share; ``manifest_sha256`` is the
    digest of the manifest bytes these were read from (what an approval must name)."""

    folder: Path
    manifest_sha256: str
    kind: str
    input_shape: tuple[int, ...]
    classes: tuple[str, ...]
    features: tuple[str, ...] | None
    samples: tuple[StoredSample, ...]

    @property
    def partitions(self) -> tuple[int, ...]:
        """The partitions that uploaded a sample, in manifest order."""
        return tuple(s.partition for s in self.samples)


def write_samples(
    run_dir: str | os.PathLike[str],
    samples: Sequence[StoredSample],
    *,
    classes: Sequence[str],
    features: Sequence[str] | None,
    input_shape: Sequence[int],
) -> Path:
    """Write one ``partition-J.npz`` per sample and then the manifest (each atomically, mode
    0600) into ``RUN_DIR/samples``; returns the manifest's path. Everything is checked as
    :func:`read_samples` checks it, before any file is written."""
    where = "write_samples"
    try:
        dims = [operator.index(v) for v in input_shape]
    except TypeError:
        raise ReviewError(
            f"{where}: input_shape: {input_shape!r} is not a list of integers"
        ) from None
    shape, names, cols = check_layout(where, dims, list(classes), features)
    prepared = sorted((_prepared(where, s, shape, len(names)) for s in samples), key=_partition)
    for a, b in zip(prepared, prepared[1:], strict=False):
        if a.partition == b.partition:
            raise ReviewError(f"{where}: partition {a.partition} given twice")
    folder = ensure_samples_dir(run_dir)
    entries = []
    for s in prepared:
        data = _npz_bytes(s.x, s.y)
        atomic_write(folder / sample_file(s.partition), data)
        digest = hashlib.sha256(data).hexdigest()
        file = sample_file(s.partition)
        entries.append(NodeEntry(s.partition, s.node_id, file, len(s.y), digest, s.attack))
    manifest = Manifest(sample_kind(shape, cols), shape, names, cols, tuple(entries))
    path = folder / MANIFEST
    atomic_write(path, manifest.to_bytes())
    return path


def read_samples(run_dir: str | os.PathLike[str]) -> SampleSet:
    """Read and validate ``RUN_DIR/samples``: the manifest's keys and types, each file's name,
    sha256, arrays, dtypes, shapes, labels and finiteness. Raises :class:`ReviewError`."""
    folder = samples_dir(run_dir)
    data = _manifest_bytes(folder)
    manifest = parse_manifest(data, str(folder / MANIFEST))
    samples = tuple(_read_node(folder, node, manifest) for node in manifest.nodes)
    return SampleSet(
        folder=folder,
        manifest_sha256=hashlib.sha256(data).hexdigest(),
        kind=manifest.kind,
        input_shape=manifest.input_shape,
        classes=manifest.classes,
        features=manifest.features,
        samples=samples,
    )


def read_manifest(run_dir: str | os.PathLike[str]) -> tuple[Manifest, str]:
    """The parsed manifest and the sha256 of its bytes (the sample files are not read)."""
    folder = samples_dir(run_dir)
    data = _manifest_bytes(folder)
    return parse_manifest(data, str(folder / MANIFEST)), hashlib.sha256(data).hexdigest()


def manifest_digest(run_dir: str | os.PathLike[str]) -> str:
    """The sha256 (hex) of ``RUN_DIR/samples/manifest.json``'s bytes."""
    return hashlib.sha256(_manifest_bytes(samples_dir(run_dir))).hexdigest()


def check_arrays(
    where: str, x: np.ndarray, y: np.ndarray, input_shape: tuple[int, ...], n_classes: int
) -> None:
    """``x`` float32 [s, *input_shape] and finite, ``y`` int64 [s] within ``n_classes``."""
    if x.dtype != np.float32:
        raise ReviewError(f"{where}: x: dtype {x.dtype}, expected float32")
    if y.dtype != np.int64:
        raise ReviewError(f"{where}: y: dtype {y.dtype}, expected int64")
    if x.ndim < 1 or x.shape[1:] != input_shape or len(x) == 0:
        want = ["s", *input_shape]
        raise ReviewError(f"{where}: x: shape {list(x.shape)}, expected {want} with s >= 1")
    if y.shape != (len(x),):
        raise ReviewError(f"{where}: y: shape {list(y.shape)}, expected [{len(x)}] (one per row)")
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise ReviewError(f"{where}: x: {bad} values are NaN or infinite")
    outside = y[(y < 0) | (y >= n_classes)]
    if outside.size:
        raise ReviewError(
            f"{where}: y: label {int(outside[0])} outside the {n_classes} classes "
            f"(0..{n_classes - 1})"
        )


def _partition(s: StoredSample) -> int:
    return s.partition


def _prepared(where: str, s: StoredSample, shape: tuple[int, ...], n_classes: int) -> StoredSample:
    """``s`` with x as float32 and y as int64 (labels must already be integers), checked."""
    if not isinstance(s.partition, int) or isinstance(s.partition, bool) or s.partition < 0:
        raise ReviewError(f"{where}: partition {s.partition!r} is not an integer >= 0")
    here = f"{where}: partition {s.partition}"
    for name in ("node_id", "attack"):
        if not isinstance(getattr(s, name), str):
            raise ReviewError(f"{here}: {name}: {getattr(s, name)!r} is not a string")
    y = np.asarray(s.y)
    if y.dtype.kind not in "iu":
        raise ReviewError(f"{here}: y: dtype {y.dtype}, expected integer class indices")
    x = np.ascontiguousarray(s.x, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.int64)
    check_arrays(here, x, y, shape, n_classes)
    return StoredSample(s.partition, s.node_id, x, y, s.attack)


def _npz_bytes(x: np.ndarray, y: np.ndarray) -> bytes:
    """``x`` and ``y`` as an .npz archive. ``np.savez`` stamps its members with zipfile's
    fixed default date, so the bytes (and the digest) depend on the arrays only."""
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    return buf.getvalue()


def _manifest_bytes(folder: Path) -> bytes:
    if folder.is_symlink():
        raise ReviewError(f"{folder}: a link, not the run's samples folder")
    try:
        return read_bytes(folder / MANIFEST, MAX_JSON_BYTES)
    except FileNotFoundError:
        raise ReviewError(
            f"{folder / MANIFEST}: no such file (no samples were stored in this run directory)"
        ) from None


def _read_node(folder: Path, node: NodeEntry, manifest: Manifest) -> StoredSample:
    path = folder / node.file
    itemsize = np.dtype(np.float32).itemsize
    expected = node.size * int(np.prod(manifest.input_shape)) * itemsize
    if expected > MAX_NPZ_BYTES:
        raise ReviewError(f"{path}: the manifest's size {node.size} is over the file limit")
    try:
        data = read_bytes(path, MAX_NPZ_BYTES)
    except FileNotFoundError:
        raise ReviewError(f"{path}: no such file (listed in the manifest)") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != node.sha256:
        raise ReviewError(
            f"{path}: sha256 {digest[:16]}... differs from the manifest's {node.sha256[:16]}... "
            "(the file changed after the upload)"
        )
    x, y = _load_npz(str(path), data, (node.size, *manifest.input_shape))
    check_arrays(str(path), x, y, manifest.input_shape, len(manifest.classes))
    return StoredSample(node.partition, node.node_id, x, y, node.attack)


def _load_npz(where: str, data: bytes, x_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The arrays ``x`` and ``y`` of an .npz (no pickles); each .npy header is checked
    against the expected dtype and shape before its data is read."""
    wanted: dict[str, tuple[np.dtype[Any], tuple[int, ...]]] = {
        "x": (np.dtype(np.float32), x_shape),
        "y": (np.dtype(np.int64), x_shape[:1]),
    }
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            if sorted(npz.files) != ["x", "y"]:
                raise ReviewError(f"{where}: holds arrays {sorted(npz.files)}, expected x and y")
            for name, (dtype, shape) in wanted.items():
                _check_header(where, npz.zip, name, dtype, shape)
            return npz["x"], npz["y"]
    except ReviewError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise ReviewError(f"{where}: not a readable .npz file ({err})") from None


def _check_header(
    where: str, archive: zipfile.ZipFile, name: str, dtype: np.dtype, shape: tuple[int, ...]
) -> None:
    with archive.open(f"{name}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            got_shape, _, got_dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            got_shape, _, got_dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ReviewError(f"{where}: {name}: unsupported .npy version {version}")
    if got_dtype != dtype:
        raise ReviewError(f"{where}: {name}: dtype {got_dtype}, expected {dtype}")
    if tuple(got_shape) != shape:
        raise ReviewError(f"{where}: {name}: shape {list(got_shape)}, expected {list(shape)}")
