"""Dataset loaders: digits (bundled), MNIST, Fashion-MNIST, CIFAR-10/100 from a local data dir.

Layout expected under the data directory (given as an argument or via ``$DIVERSEFL_DATA``)::

    mnist/{train-images-idx3-ubyte,train-labels-idx1-ubyte,
           t10k-images-idx3-ubyte,t10k-labels-idx1-ubyte}[.gz]
    fashion-mnist/<same four names>[.gz]
    cifar10/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}
        (or cifar10/cifar-10-python.tar.gz, extracted in place on first use)
    cifar100/cifar-100-python/{train,test,meta}
        (or cifar100/cifar-100-python.tar.gz, extracted in place on first use)

``digits`` needs no data directory: it is scikit-learn's bundled 8x8 digits set.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import numpy as np
import torch

from diversefl.registry import Registry

__all__ = [
    "CHECKSUMS",
    "DATASETS",
    "DATA_ENV_VAR",
    "DataError",
    "Dataset",
    "clear_cache",
    "file_md5",
    "load_cifar",
    "load_dataset",
    "read_idx",
    "resolve_data_dir",
]

DATA_ENV_VAR = "DIVERSEFL_DATA"

#: The four IDX files of MNIST and Fashion-MNIST, without the ``.gz`` suffix.
IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

CIFAR_ARCHIVES: dict[str, str] = {
    "cifar10": "cifar-10-python.tar.gz",
    "cifar100": "cifar-100-python.tar.gz",
}
CIFAR_FOLDERS: dict[str, str] = {
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
}

#: Official md5 of every downloadable file, per dataset (the ones torchvision checks).
#: Only these compressed files are checked; un-gzipped IDX files and extracted CIFAR
#: pickles are validated structurally (header, sizes, shapes) instead.
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    "cifar100": {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
}

MNIST_CLASSES: tuple[str, ...] = tuple(str(i) for i in range(10))
FASHION_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR100_CLASSES: tuple[str, ...] = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip

# Per-channel (R, G, B) mean and standard deviation of the CIFAR *training* images after
# scaling pixels to [0, 1], computed over all 50,000 training images and all pixels. These
# are the widely used exact values (not the often-copied (0.2023, 0.1994, 0.2010) std, which
# is the mean of per-image stds). Images are standardised as (x / 255 - mean[c]) / std[c].
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)

# IDX element type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


class DataError(Exception):
    """Missing/corrupt/unknown data; message names the file, expected checksum and how to get it."""


@dataclass(frozen=True)
class Dataset:
    """A loaded train/test split; tensors are shared via an in-process cache: do not mutate."""

    name: str
    x_train: torch.Tensor  # float32 [N, C, H, W], normalised
    y_train: torch.Tensor  # int64 [N]
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, (C, H, W), so models can size their first layer."""
        return tuple(self.x_train.shape[1:])


def _fetch_hint(name: str) -> str:
    """The CLI command that downloads ``name``, for error messages."""
    return (
        f"get it with `diversefl data fetch {name} --to DIR` and pass DIR as --data-dir "
        f"(data_dir in Python) or set ${DATA_ENV_VAR}=DIR"
    )


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """Return the data directory: the argument, else $DIVERSEFL_DATA; it must exist."""
    if data_dir is not None and str(data_dir) != "":
        path = Path(data_dir).expanduser()
        origin = "--data-dir / data_dir"
    else:
        env = os.environ.get(DATA_ENV_VAR, "")
        if not env:
            raise DataError(
                "no data directory given: pass --data-dir DIR (data_dir in Python) or set the "
                f"environment variable {DATA_ENV_VAR}=DIR, where DIR holds mnist/, "
                "fashion-mnist/, cifar10/, cifar100/ (fill it with `diversefl data fetch NAME "
                "--to DIR`)"
            )
        path = Path(env).expanduser()
        origin = f"${DATA_ENV_VAR}"
    if not path.is_dir():
        raise DataError(
            f"data directory {path} (from {origin}) does not exist or is not a directory; pass "
            f"an existing --data-dir / data_dir or set {DATA_ENV_VAR} to one (fill it with "
            "`diversefl data fetch NAME --to DIR`)"
        )
    return path.resolve()


# (resolved path, size, mtime_ns) -> md5 hex digest, so repeated verifications are free.
_MD5_CACHE: dict[tuple[str, int, int], str] = {}


def file_md5(path: Path) -> str:
    """Return the md5 hex digest of a file, cached on (path, size, mtime) to keep reloads fast."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    cached = _MD5_CACHE.get(key)
    if cached is not None:
        return cached
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    result = digest.hexdigest()
    _MD5_CACHE[key] = result
    return result


def _verify_md5(path: Path, name: str) -> None:
    """Raise DataError if ``path`` is a known file of ``name`` whose md5 is not the official one."""
    expected = CHECKSUMS.get(name, {}).get(path.name)
    if expected is None:
        return
    actual = file_md5(path)
    if actual != expected:
        raise DataError(
            f"checksum mismatch for {path}: expected md5 {expected}, got {actual}; the file is "
            f"corrupt or not the official one: delete it and re-download it with "
            f"`diversefl data fetch {name} --to DIR`"
        )


def read_idx(path: Path) -> np.ndarray:
    """Read a gzip or raw IDX file (big-endian header) into a native-endian numpy array."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataError(
                f"corrupt or truncated gzip file {path}: {exc}; delete it and re-download it"
            ) from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(
            f"{path} is not an IDX file: bad magic number {raw[:4].hex() or '(empty)'} "
            "(expected 00 00 <type> <ndim>, e.g. 2049 for labels, 2051 for images)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"truncated IDX file {path}: header needs {header} bytes, got {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "oversized"
        raise DataError(
            f"{kind} IDX file {path}: header says shape {dims} ({expected} bytes), file has "
            f"{len(raw)} bytes; delete it and re-download it"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def _find_idx(folder: Path, name: str, stem: str, verify: bool) -> Path:
    """Locate ``stem`` (.gz preferred, else raw) in ``folder``, md5-checking the .gz form."""
    gz = folder / f"{stem}.gz"
    if gz.is_file():
        if verify:
            _verify_md5(gz, name)
        return gz
    plain = folder / stem
    if plain.is_file():
        return plain
    md5 = CHECKSUMS[name][f"{stem}.gz"]
    raise DataError(
        f"missing file {gz} (or its un-gzipped form {plain}) for dataset {name!r}; expected "
        f"md5 {md5}; {_fetch_hint(name)}"
    )


def _load_idx_dataset(root: Path, name: str, verify: bool) -> tuple[np.ndarray, ...]:
    """Load the four MNIST-style IDX files of ``name`` under ``root/name`` as numpy arrays."""
    folder = root / name
    arrays = [read_idx(_find_idx(folder, name, stem, verify)) for stem in IDX_FILES]
    x_train, y_train, x_test, y_test = arrays
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
        if x.dtype != np.uint8 or y.dtype != np.uint8:
            raise DataError(
                f"{folder}: {split} images are {x.dtype} and labels {y.dtype}; MNIST-style "
                "IDX files hold unsigned bytes (type code 0x08)"
            )
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"{folder}: {split} images {x.shape} and labels {y.shape} do not match the "
                "expected [N, 28, 28] / [N] layout"
            )
        if y.size and (int(y.min()) < 0 or int(y.max()) > 9):
            raise DataError(f"{folder}: {split} labels outside 0..9")
    return x_train, y_train, x_test, y_test


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers and numpy arrays: CIFAR's python files
    are pickles, and a general unpickler would run whatever code a planted file names."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> type:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not array data)")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    """Load one CIFAR python pickle (byte keys), turning failures into DataError."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except FileNotFoundError as exc:
        raise DataError(f"missing CIFAR file {path}") from exc
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise DataError(f"corrupt CIFAR pickle {path}: {exc}") from exc
    if not isinstance(obj, dict):
        raise DataError(f"corrupt CIFAR pickle {path}: expected a dict, got {type(obj).__name__}")
    return obj


def _cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR batch file into uint8 [N,3,32,32] images and int64 [N] labels."""
    obj = _unpickle(path)
    if b"data" not in obj or label_key not in obj:
        raise DataError(f"corrupt CIFAR pickle {path}: keys b'data' and {label_key!r} required")
    data = np.asarray(obj[b"data"])
    labels = np.asarray(obj[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"corrupt CIFAR pickle {path}: data is {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise DataError(f"corrupt CIFAR pickle {path}: {len(labels)} labels, {len(data)} images")
    # Each row is 1024 red, then 1024 green, then 1024 blue values, each plane row-major.
    return data.reshape(-1, 3, 32, 32), labels


def _extract_cifar_archive(dataset_dir: Path, which: str, verify: bool) -> None:
    """Extract the official CIFAR tar.gz in ``dataset_dir`` once, after checking its md5."""
    archive = dataset_dir / CIFAR_ARCHIVES[which]
    folder = CIFAR_FOLDERS[which]
    if not archive.is_file():
        raise DataError(
            f"missing {dataset_dir / folder} and its archive {archive} for dataset {which!r}; "
            f"expected md5 {CHECKSUMS[which][archive.name]}; {_fetch_hint(which)}"
        )
    if verify:
        _verify_md5(archive, which)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder}.", dir=dataset_dir))
    except OSError as exc:
        raise DataError(f"cannot extract {archive}: {dataset_dir} is not writable ({exc})") from exc
    try:
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # pragma: no cover - Python without tar filters
                tar.extractall(tmp)
        extracted = tmp / folder
        if not extracted.is_dir():
            raise DataError(f"archive {archive} does not contain the folder {folder}/")
        try:
            extracted.rename(dataset_dir / folder)
        except OSError:
            if not (dataset_dir / folder).is_dir():  # lost a race with another process: fine
                raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"cannot extract {archive}: {exc}; delete it and re-download it") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cifar_dir(root: Path, which: str, verify: bool) -> Path:
    """Find (extracting the archive if needed) the folder holding the CIFAR pickles."""
    folder = CIFAR_FOLDERS[which]
    # root is normally the data dir (holding cifar10/); the dataset folder itself also works.
    for dataset_dir in (root / which, root):
        if (dataset_dir / folder).is_dir():
            return dataset_dir / folder
    for dataset_dir in (root / which, root):
        if (dataset_dir / CIFAR_ARCHIVES[which]).is_file():
            _extract_cifar_archive(dataset_dir, which, verify)
            return dataset_dir / folder
    _extract_cifar_archive(root / which, which, verify)  # raises the "missing" DataError
    return root / which / folder  # pragma: no cover


def _cifar_class_names(folder: Path, which: str) -> tuple[str, ...]:
    """Class names from batches.meta / meta when present, else the standard list."""
    meta, key, default = (
        ("batches.meta", b"label_names", CIFAR10_CLASSES)
        if which == "cifar10"
        else ("meta", b"fine_label_names", CIFAR100_CLASSES)
    )
    if not (folder / meta).is_file():
        return default
    names = _unpickle(folder / meta).get(key)
    if names is None:
        return default
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def load_cifar(
    root: Path, which: Literal["cifar10", "cifar100"], verify: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load raw CIFAR as uint8 [N,3,32,32] images and int64 labels (train then test)."""
    if which not in CIFAR_FOLDERS:
        raise DataError(f"unknown CIFAR variant {which!r}; allowed: cifar10, cifar100")
    folder = _cifar_dir(Path(root), which, verify)
    if which == "cifar10":
        train = [_cifar_batch(folder / f"data_batch_{i}", b"labels") for i in range(1, 6)]
        x_train = np.concatenate([x for x, _ in train])
        y_train = np.concatenate([y for _, y in train])
        x_test, y_test = _cifar_batch(folder / "test_batch", b"labels")
    else:
        x_train, y_train = _cifar_batch(folder / "train", b"fine_labels")
        x_test, y_test = _cifar_batch(folder / "test", b"fine_labels")
    return x_train, y_train, x_test, y_test


def _to_tensors(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Convert float32 images / integer labels to owned torch tensors."""
    return (
        torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32)),
        torch.from_numpy(np.array(y_train, dtype=np.int64)),
        torch.from_numpy(np.ascontiguousarray(x_test, dtype=np.float32)),
        torch.from_numpy(np.array(y_test, dtype=np.int64)),
    )


DIGITS_FILE = Path(__file__).with_name("digits.npz")


def _load_digits() -> Dataset:
    """The 8x8 handwritten digits of the UCI "Optical Recognition of Handwritten Digits" set
    (Alpaydin & Kaynak, 1998; CC BY 4.0) as scikit-learn ships them, scaled to [0, 1]: 1,797
    images, a stratified 80/20 split (scikit-learn's with seed 0), stored in the package as
    ``digits.npz`` (pixel counts 0-16 as uint8, no pickles) so that the demo needs no
    scikit-learn (and no SciPy) installed."""
    with np.load(DIGITS_FILE, allow_pickle=False) as z:
        parts = [z[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    x_train, y_train, x_test, y_test = parts
    scale = np.float32(16.0)
    tensors = _to_tensors(
        (x_train.astype(np.float32) / scale)[:, None], y_train,
        (x_test.astype(np.float32) / scale)[:, None], y_test,
    )  # fmt: skip
    return Dataset("digits", *tensors, num_classes=10, class_names=MNIST_CLASSES)


def _normalise_cifar(x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Scale uint8 CIFAR images to [0,1] then standardise each channel."""
    m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return (x.astype(np.float32) / np.float32(255.0) - m) / s


def _load_idx(name: str, path: Path, verify: bool) -> Dataset:
    """MNIST or Fashion-MNIST from their four IDX files, scaled to [0, 1]."""
    x_train, y_train, x_test, y_test = _load_idx_dataset(path, name, verify)
    scale = np.float32(255.0)
    tensors = _to_tensors(
        (x_train.astype(np.float32) / scale)[:, None],
        y_train,
        (x_test.astype(np.float32) / scale)[:, None],
        y_test,
    )
    names = MNIST_CLASSES if name == "mnist" else FASHION_CLASSES
    return Dataset(name, *tensors, num_classes=10, class_names=names)


def _load_cifar_dataset(which: Literal["cifar10", "cifar100"], path: Path, verify: bool) -> Dataset:
    """CIFAR-10 or CIFAR-100 from the python pickles, standardised per channel."""
    x_train, y_train, x_test, y_test = load_cifar(path, which, verify=verify)
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if which == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    num_classes = 10 if which == "cifar10" else 100
    for y, split in ((y_train, "train"), (y_test, "test")):
        if y.size and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise DataError(f"{which} {split} labels outside 0..{num_classes - 1} under {path}")
    tensors = _to_tensors(
        _normalise_cifar(x_train, mean, std), y_train, _normalise_cifar(x_test, mean, std), y_test
    )
    names = _cifar_class_names(_cifar_dir(path, which, verify), which)
    if len(names) != num_classes:
        names = CIFAR10_CLASSES if which == "cifar10" else CIFAR100_CLASSES
    return Dataset(which, *tensors, num_classes=num_classes, class_names=names)


def _files_by_path(root: Path | None, verify: bool) -> Dataset:
    raise DataError(
        "dataset 'files' is read from data.path (diversefl.data.files.load_files), not by name"
    )


@dataclass(frozen=True)
class DatasetSource:
    """How to load one named dataset: ``load(root, verify)``; ``root`` is the resolved data
    directory, or None for a dataset that needs none (bundled)."""

    load: Callable[[Path | None, bool], Dataset]
    needs_dir: bool = True


def _dir(root: Path | None) -> Path:
    """The data directory given to a source with ``needs_dir`` (never None there: the caller
    resolves it first); for the type checker only."""
    return cast(Path, root)


#: name -> source. A new dataset is a loader function plus one line here.
DATASETS: Registry[DatasetSource] = Registry(
    "dataset",
    {
        "digits": DatasetSource(lambda root, verify: _load_digits(), needs_dir=False),
        "mnist": DatasetSource(lambda root, verify: _load_idx("mnist", _dir(root), verify)),
        "fashion-mnist": DatasetSource(
            lambda root, verify: _load_idx("fashion-mnist", _dir(root), verify)
        ),
        "cifar10": DatasetSource(
            lambda root, verify: _load_cifar_dataset("cifar10", _dir(root), verify)
        ),
        "cifar100": DatasetSource(
            lambda root, verify: _load_cifar_dataset("cifar100", _dir(root), verify)
        ),
        # your own files: read by diversefl.data.files.load_files from data.path
        "files": DatasetSource(_files_by_path, needs_dir=False),
    },
)


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, root: str | None, verify: bool) -> Dataset:
    """Load and normalise one dataset; cached per (name, resolved dir, verify)."""
    return DATASETS[name].load(None if root is None else Path(root), verify)


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, verify: bool = True
) -> Dataset:
    """Load a benchmark dataset as normalised tensors (cached in-process: never mutate them)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS.names())}")
    if not DATASETS[name].needs_dir:
        return _load_cached(name, None, verify)
    root = resolve_data_dir(data_dir)
    return _load_cached(name, str(root), verify)


def clear_cache() -> None:
    """Drop the in-process dataset cache, e.g. after files on disk changed."""
    _load_cached.cache_clear()
    _MD5_CACHE.clear()
