"""Tests for the dataset loaders: real MNIST/Fashion-MNIST, tiny CIFAR pickles, digits."""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import real_data_dir

from diversefl.data import DataError, load_cifar, load_dataset, read_idx, resolve_data_dir
from diversefl.data.datasets import (
    CHECKSUMS,
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
)

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


# ---------------------------------------------------------------- MNIST / Fashion-MNIST


def test_mnist_real() -> None:
    ds = load_dataset("mnist", real_data_dir())
    assert ds.name == "mnist"
    assert ds.x_train.shape == (60000, 1, 28, 28)
    assert ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.input_shape == (1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.x_test.dtype == torch.float32
    assert ds.y_train.dtype == torch.int64 and ds.y_test.dtype == torch.int64
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0
    assert 0.0 <= float(ds.x_test.min()) and float(ds.x_test.max()) <= 1.0
    assert torch.bincount(ds.y_train, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert int(torch.bincount(ds.y_test).sum()) == 10000
    assert ds.num_classes == 10 and ds.class_names == tuple("0123456789")
    assert load_dataset("mnist", real_data_dir()) is ds  # in-process cache


@pytest.mark.slow
def test_fashion_mnist_real() -> None:
    ds = load_dataset("fashion-mnist", real_data_dir())
    assert ds.x_train.shape == (60000, 1, 28, 28)
    assert ds.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.y_train, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(ds.y_test, minlength=10).tolist() == [1000] * 10
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    assert float(ds.x_train.min()) >= 0.0 and float(ds.x_train.max()) <= 1.0


def test_read_idx_raw_and_gz(tmp_path: Path) -> None:
    src = real_data_dir() / "mnist" / "t10k-labels-idx1-ubyte.gz"
    from_gz = read_idx(src)
    raw = tmp_path / "t10k-labels-idx1-ubyte"
    raw.write_bytes(gzip.decompress(src.read_bytes()))
    from_raw = read_idx(raw)
    assert from_gz.shape == (10000,) and from_gz.dtype == np.uint8
    assert np.array_equal(from_gz, from_raw)


def test_read_idx_truncated_raw(tmp_path: Path) -> None:
    data = gzip.decompress((real_data_dir() / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes())
    bad = tmp_path / "t10k-images-idx3-ubyte"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated") as err:
        read_idx(bad)
    assert str(bad) in str(err.value)


def test_read_idx_truncated_gz(tmp_path: Path) -> None:
    data = (real_data_dir() / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as err:
        read_idx(bad)
    assert str(bad) in str(err.value)


def test_read_idx_wrong_magic(tmp_path: Path) -> None:
    bad = tmp_path / "junk-idx1-ubyte"
    bad.write_bytes(b"\x12\x34\x56\x78" + bytes(100))
    with pytest.raises(DataError, match="magic") as err:
        read_idx(bad)
    assert str(bad) in str(err.value)


def test_read_idx_big_endian_int(tmp_path: Path) -> None:
    values = np.array([[1, -2, 300], [70000, 5, -6]], dtype=">i4")
    path = tmp_path / "ints.idx"
    path.write_bytes(bytes([0, 0, 0x0C, 2]) + np.array([2, 3], ">u4").tobytes() + values.tobytes())
    out = read_idx(path)
    assert out.dtype == np.int32 and out.dtype.isnative
    assert out.tolist() == values.tolist()


def _mnist_copy(tmp_path: Path, replace: dict[str, bytes]) -> Path:
    """A data dir whose mnist/ links to the real files, except ``replace``d ones."""
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    for name in CHECKSUMS["mnist"]:
        if name in replace:
            (folder / name).write_bytes(replace[name])
        else:
            (folder / name).symlink_to(real_data_dir() / "mnist" / name)
    return folder.parent


def test_checksum_mismatch(tmp_path: Path) -> None:
    name = "train-labels-idx1-ubyte.gz"
    data = bytearray((real_data_dir() / "mnist" / name).read_bytes())
    data[-100] ^= 0xFF
    root = _mnist_copy(tmp_path, {name: bytes(data)})
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root)
    msg = str(err.value)
    assert str(root / "mnist" / name) in msg
    assert CHECKSUMS["mnist"][name] in msg
    assert "diversefl data fetch mnist" in msg


def test_truncated_file_in_dataset(tmp_path: Path) -> None:
    name = "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress((real_data_dir() / "mnist" / name).read_bytes())
    root = _mnist_copy(tmp_path, {})
    (root / "mnist" / name).unlink()
    bad = root / "mnist" / "t10k-labels-idx1-ubyte"  # un-gzipped name, truncated
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root)
    assert str(bad) in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    name = "t10k-images-idx3-ubyte.gz"
    root = _mnist_copy(tmp_path, {})
    (root / "mnist" / name).unlink()
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root)
    msg = str(err.value)
    assert str(root / "mnist" / name) in msg
    assert CHECKSUMS["mnist"][name] in msg
    assert "diversefl data fetch mnist --to DIR" in msg


def test_missing_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIVERSEFL_DATA", raising=False)
    with pytest.raises(DataError, match="DIVERSEFL_DATA"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="DIVERSEFL_DATA"):
        load_dataset("mnist", tmp_path / "does-not-exist")
    monkeypatch.setenv("DIVERSEFL_DATA", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="DIVERSEFL_DATA"):
        resolve_data_dir(None)
    monkeypatch.setenv("DIVERSEFL_DATA", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path.resolve()


def test_data_dir_errors_name_the_option_and_the_argument(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI user typed --data-dir, the Python user passed data_dir: the advice names both."""
    monkeypatch.delenv("DIVERSEFL_DATA", raising=False)
    with pytest.raises(DataError) as err:
        resolve_data_dir(None)
    assert "pass --data-dir DIR (data_dir in Python) or set" in str(err.value)
    with pytest.raises(DataError) as err:
        resolve_data_dir(tmp_path / "nope")
    msg = str(err.value)
    assert "(from --data-dir / data_dir)" in msg and "pass an existing --data-dir" in msg
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path)
    hint = "pass DIR as --data-dir (data_dir in Python) or set $DIVERSEFL_DATA=DIR"
    assert hint in str(err.value)


def test_unknown_name() -> None:
    allowed = "allowed: cifar10, cifar100, digits, fashion-mnist, files, mnist"
    with pytest.raises(DataError, match=allowed):
        load_dataset("imagenet", "/")


# ---------------------------------------------------------------- CIFAR (tiny, exact format)


def _dump(path: Path, obj: dict) -> None:
    """Write ``obj`` as the original CIFAR python pickles are written."""
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _make_cifar10(folder: Path, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Five 2-image train batches and a 3-image test batch in cifar-10-batches-py format."""
    folder.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        data = rng.integers(0, 256, size=(2, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=2)]
        batch = {
            b"batch_label": b"training batch",
            b"labels": labels,
            b"data": data,
            b"filenames": [b"a.png", b"b.png"],
        }
        _dump(folder / f"data_batch_{i}", batch)
        xs.append(data)
        ys += labels
    test = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
    _dump(folder / "test_batch", {b"labels": [9, 0, 4], b"data": test})
    names = [n.encode() for n in CIFAR10_CLASSES]
    _dump(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 10000})
    return np.concatenate(xs), np.array(ys), test, np.array([9, 0, 4])


def test_cifar10_tiny(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data, labels, test, test_labels = _make_cifar10(
        tmp_path / "cifar10" / "cifar-10-batches-py", rng
    )
    x_train, y_train, x_test, y_test = load_cifar(tmp_path, "cifar10")
    assert x_train.shape == (10, 3, 32, 32) and x_test.shape == (3, 3, 32, 32)
    assert y_train.dtype == np.int64 and y_train.tolist() == labels.tolist()
    assert y_test.tolist() == test_labels.tolist()
    for i, c, h, w in [(0, 0, 0, 0), (3, 1, 5, 7), (9, 2, 31, 31), (7, 2, 0, 31), (4, 0, 31, 0)]:
        assert x_train[i, c, h, w] == data[i, c * 1024 + h * 32 + w]
    assert x_test[2, 1, 10, 20] == test[2, 1024 + 10 * 32 + 20]

    ds = load_dataset("cifar10", tmp_path)
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_train.dtype == torch.float32
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert ds.class_names == CIFAR10_CLASSES
    i, c, h, w = 6, 2, 12, 3
    expected = (data[i, c * 1024 + h * 32 + w] / 255.0 - CIFAR10_MEAN[c]) / CIFAR10_STD[c]
    assert float(ds.x_train[i, c, h, w]) == pytest.approx(expected, abs=1e-5)
    mean = np.array(CIFAR10_MEAN)[:, None, None]
    std = np.array(CIFAR10_STD)[:, None, None]
    manual = (x_train / 255.0 - mean) / std
    assert np.allclose(ds.x_train.numpy(), manual, atol=1e-5)


def test_cifar100_tiny(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    train = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    test = rng.integers(0, 256, size=(2, 3072), dtype=np.uint8)
    _dump(
        folder / "train",
        {
            b"data": train,
            b"fine_labels": [0, 99, 42, 7],
            b"coarse_labels": [4, 19, 5, 1],
            b"filenames": [b"x"] * 4,
        },
    )
    _dump(folder / "test", {b"data": test, b"fine_labels": [3, 5], b"coarse_labels": [0, 0]})
    fine = [f"class{i:02d}".encode() for i in range(100)]
    _dump(folder / "meta", {b"fine_label_names": fine, b"coarse_label_names": [b"c"] * 20})

    x_train, y_train, x_test, y_test = load_cifar(tmp_path, "cifar100")
    assert x_train.shape == (4, 3, 32, 32) and y_train.tolist() == [0, 99, 42, 7]
    assert y_test.tolist() == [3, 5]
    assert x_train[1, 2, 30, 1] == train[1, 2 * 1024 + 30 * 32 + 1]

    ds = load_dataset("cifar100", tmp_path)
    assert ds.num_classes == 100 and ds.class_names[99] == "class99"
    c = 1
    expected = (test[1, c * 1024 + 64 + 2] / 255.0 - CIFAR100_MEAN[c]) / CIFAR100_STD[c]
    assert float(ds.x_test[1, c, 2, 2]) == pytest.approx(expected, abs=1e-5)


def test_cifar10_archive_extracted_once(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    data, labels, _, _ = _make_cifar10(staging / "cifar-10-batches-py", np.random.default_rng(3))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    root = tmp_path / "data"
    (root / "cifar10").mkdir(parents=True)
    archive = root / "cifar10" / "cifar-10-python.tar.gz"
    archive.write_bytes(buf.getvalue())

    with pytest.raises(DataError) as err:  # not the official archive: md5 check fails
        load_cifar(root, "cifar10")
    assert str(archive) in str(err.value) and CHECKSUMS["cifar10"][archive.name] in str(err.value)

    x_train, y_train, _, _ = load_cifar(root, "cifar10", verify=False)
    assert (root / "cifar10" / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert y_train.tolist() == labels.tolist()
    assert x_train[0, 0, 0, 1] == data[0, 1]
    assert sorted(p.name for p in (root / "cifar10").iterdir()) == [
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
    ]


def test_cifar_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("cifar100", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar100" / "cifar-100-python.tar.gz") in msg
    assert CHECKSUMS["cifar100"]["cifar-100-python.tar.gz"] in msg
    assert "diversefl data fetch cifar100" in msg


# ---------------------------------------------------------------- digits


def test_digits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIVERSEFL_DATA", raising=False)  # bundled: no data dir needed
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.input_shape == (1, 8, 8)
    assert ds.num_classes == 10 and len(ds.class_names) == 10
    assert set(ds.y_train.tolist()) == set(range(10)) == set(ds.y_test.tolist())
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    counts = torch.bincount(ds.y_test, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37  # stratified 20%


def test_bundled_digits_are_scikit_learns_split_bit_for_bit() -> None:
    """The packaged ``digits.npz`` gives exactly what the earlier loader built from
    scikit-learn (its digits, /16, stratified 80/20 split with seed 0): the demo's and the
    tests' numbers do not move, and scikit-learn is no longer needed to run them."""
    sk = pytest.importorskip("sklearn.datasets")
    from sklearn.model_selection import train_test_split

    bunch = sk.load_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)
    ds = load_dataset("digits")
    for got, want in (
        (ds.x_train, x[tr]),
        (ds.y_train, y[tr]),
        (ds.x_test, x[te]),
        (ds.y_test, y[te]),
    ):
        assert torch.equal(got, torch.from_numpy(np.ascontiguousarray(want)))


def _write_idx(path: Path, arr: np.ndarray, code: int) -> None:
    """A raw IDX file: magic (0, 0, type code, ndim), big-endian dims, big-endian data."""
    dims = np.array(arr.shape, dtype=">u4").tobytes()
    path.write_bytes(
        bytes([0, 0, code, arr.ndim]) + dims + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    )


def test_idx_files_must_hold_bytes(tmp_path: Path) -> None:
    """A float IDX file (type code 0x0D, here full of NaN) is not MNIST: refused, naming it."""
    from diversefl.data.datasets import IDX_FILES

    folder = tmp_path / "mnist"
    folder.mkdir()
    images = np.full((4, 28, 28), np.nan, dtype=np.float32)
    labels = np.arange(4, dtype=np.uint8)
    for stem in IDX_FILES:
        if "images" in stem:
            _write_idx(folder / stem, images, 0x0D)
        else:
            _write_idx(folder / stem, labels, 0x08)
    assert read_idx(folder / IDX_FILES[0]).dtype == np.float32  # the reader itself is generic
    with pytest.raises(DataError, match=r"images are float32 and labels uint8; MNIST-style"):
        load_dataset("mnist", tmp_path)
