"""Loading a user's own data files (npz, CSV, Parquet, image folders; pool and per-client):
exact round trips of small files with known values, class mapping, the seeded held-out split,
standardisation against a hand computation, and one clear DataError per kind of bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diversefl.data.datasets import DataError
from diversefl.data.files import LoadedFiles, load_files
from diversefl.data.layout import find_sources
from diversefl.data.preprocess import apply_standardization, feature_stats, held_out_split

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
Image = pytest.importorskip("PIL.Image")


# ---------------------------------------------------------------- helpers


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_parquet(path: Path, columns: dict[str, list]) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def rows_of(loaded: LoadedFiles, part: np.ndarray, split: str = "train") -> np.ndarray:
    x = loaded.dataset.x_train if split == "train" else loaded.dataset.x_test
    return x[torch.from_numpy(part)].numpy()


def error(match: str, *args, **kwargs) -> str:
    """Run load_files(*args, **kwargs), expect a DataError matching ``match``; return it."""
    with pytest.raises(DataError, match=match) as info:
        load_files(*args, **kwargs)
    return str(info.value)


X = np.array([[0.5, -1.0], [2.0, 3.25], [4.0, 1e-3], [-7.5, 8.0], [9.0, 10.0]], np.float32)
Y = np.array([2, 0, 1, 0, 2])


# ---------------------------------------------------------------- npz


def test_npz_pool_round_trips_train_and_test_arrays(tmp_path):
    x_test = np.array([[1.0, 2.0]], np.float32)
    np.savez(tmp_path / "d.npz", x=X, y=Y, x_test=x_test, y_test=np.array([1]))
    loaded = load_files(tmp_path / "d.npz")
    ds = loaded.dataset
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    np.testing.assert_array_equal(ds.x_train.numpy(), X)
    np.testing.assert_array_equal(ds.y_train.numpy(), Y)
    np.testing.assert_array_equal(ds.x_test.numpy(), x_test)
    np.testing.assert_array_equal(ds.y_test.numpy(), [1])
    assert ds.num_classes == 3 and ds.class_names == ("0", "1", "2")
    assert (loaded.fmt, loaded.layout) == ("npz", "pool")
    assert loaded.client_parts is None and loaded.client_test_parts is None
    assert loaded.mean is None  # npz features are never standardised


def test_npz_images_keep_their_shape_and_uint8_values(tmp_path):
    x = np.arange(2 * 1 * 3 * 4, dtype=np.uint8).reshape(2, 1, 3, 4)
    np.savez(tmp_path / "d.npz", x=x, y=[0, 1], x_test=x[:1], y_test=[1])
    ds = load_files(tmp_path / "d.npz").dataset
    assert ds.input_shape == (1, 3, 4)
    np.testing.assert_array_equal(ds.x_train.numpy(), x.astype(np.float32))


def test_npz_per_client_round_trips_each_client(tmp_path):
    folder = tmp_path / "clients"
    folder.mkdir()
    # b sorts after a: client 0 is a.npz whatever the creation order
    np.savez(folder / "b.npz", x=X[3:], y=Y[3:], x_test=X[:1], y_test=Y[:1])
    np.savez(folder / "a.npz", x=X[:3], y=Y[:3], x_test=X[1:3], y_test=Y[1:3])
    loaded = load_files(folder)
    assert loaded.layout == "per-client" and loaded.client_names == ("a", "b")
    a, b = loaded.client_parts
    np.testing.assert_array_equal(rows_of(loaded, a), X[:3])
    np.testing.assert_array_equal(rows_of(loaded, b), X[3:])
    ta, tb = loaded.client_test_parts
    np.testing.assert_array_equal(rows_of(loaded, ta, "test"), X[1:3])
    np.testing.assert_array_equal(rows_of(loaded, tb, "test"), X[:1])
    np.testing.assert_array_equal(loaded.dataset.y_train.numpy(), Y)


# ---------------------------------------------------------------- CSV


def test_csv_pool_round_trips_numbers_in_header_order(tmp_path):
    rows = [[X[i, 0], Y[i], X[i, 1]] for i in range(5)]
    train = write_csv(tmp_path / "t.csv", ["a", "label", "b"], rows)
    test = write_csv(tmp_path / "test.csv", ["b", "label", "a"], [[4.5, 1, -0.25]])
    loaded = load_files(train, test_path=test, standardize=False)
    ds = loaded.dataset
    np.testing.assert_array_equal(ds.x_train.numpy(), X)
    np.testing.assert_array_equal(ds.y_train.numpy(), Y)
    # the test file's columns are matched by name, not position
    np.testing.assert_array_equal(ds.x_test.numpy(), [[-0.25, 4.5]])
    assert loaded.feature_names == ("a", "b") and ds.name == "t"
    assert loaded.client_test_parts is None


def test_csv_per_client_round_trips_with_held_out_rows(tmp_path):
    folder = tmp_path / "hospitals"
    folder.mkdir()
    sizes = {"hospital_a": 6, "hospital_b": 3, "hospital_c": 11}
    values, start = {}, 0
    for name, n in sizes.items():
        x = np.arange(start, start + 2 * n, dtype=np.float32).reshape(n, 2) / 4
        values[name] = x
        start += 2 * n
        write_csv(folder / f"{name}.csv", ["f0", "f1", "label"], [[*r, 0] for r in x])
    (folder / "README.txt").write_text("not data")
    loaded = load_files(folder, standardize=False, test_fraction=0.25, seed=3)
    assert loaded.client_names == tuple(sizes)
    for j, x in enumerate(values.values()):
        train_rows, test_rows = held_out_split(len(x), 0.25, 3)
        np.testing.assert_array_equal(rows_of(loaded, loaded.client_parts[j]), x[train_rows])
        got = rows_of(loaded, loaded.client_test_parts[j], "test")
        np.testing.assert_array_equal(got, x[test_rows])


def test_csv_string_labels_map_to_sorted_names_across_clients(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    write_csv(folder / "1.csv", ["v", "label"], [[1, "zebra"], [2, "cat"], [3, "zebra"]])
    write_csv(folder / "2.csv", ["v", "label"], [[4, " ant "], [5, "cat"]])
    loaded = load_files(folder, standardize=False, test_path=folder / "1.csv")
    ds = loaded.dataset
    assert ds.class_names == ("ant", "cat", "zebra") and ds.num_classes == 3
    np.testing.assert_array_equal(ds.y_train.numpy(), [2, 1, 2, 0, 1])
    np.testing.assert_array_equal(ds.x_train.numpy().ravel(), [1, 2, 3, 4, 5])


def test_declared_classes_fix_the_index_order_and_range(tmp_path):
    f = write_csv(tmp_path / "t.csv", ["v", "label"], [[i, n] for i, n in enumerate("bbab")])
    ds = load_files(f, classes=["b", "a", "c"], test_fraction=0.25).dataset
    assert ds.class_names == ("b", "a", "c") and ds.num_classes == 3
    labels = np.concatenate([ds.y_train.numpy(), ds.y_test.numpy()])
    assert sorted(labels.tolist()) == [0, 0, 0, 1]
    g = write_csv(tmp_path / "g.csv", ["v", "label"], [[0, 0], [1, 1], [2, 1]])
    ds = load_files(g, classes=4, test_fraction=0.3).dataset
    assert ds.num_classes == 4 and ds.class_names == ("0", "1", "2", "3")


# ---------------------------------------------------------------- Parquet


def test_parquet_pool_and_per_client_round_trip(tmp_path):
    cols = {"a": X[:, 0].tolist(), "b": [int(v) for v in range(5)], "label": ["x", "y"] * 2 + ["x"]}
    write_parquet(tmp_path / "pool.parquet", cols)
    test = write_parquet(tmp_path / "test.pq", {"label": ["y"], "b": [7], "a": [0.5]})
    ds = load_files(tmp_path / "pool.parquet", test_path=test, standardize=False).dataset
    np.testing.assert_array_equal(ds.x_train.numpy(), np.stack([X[:, 0], np.arange(5)], 1))
    np.testing.assert_array_equal(ds.y_train.numpy(), [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(ds.x_test.numpy(), [[0.5, 7.0]])
    folder = tmp_path / "clients"
    folder.mkdir()
    write_parquet(folder / "n1.parquet", {"f": [1.5, 2.5], "label": [3, 1]})
    write_parquet(folder / "n2.parquet", {"f": [3.5], "label": [0]})
    loaded = load_files(folder, standardize=False, test_path=folder / "n1.parquet")
    assert loaded.fmt == "parquet" and loaded.layout == "per-client"
    np.testing.assert_array_equal(loaded.dataset.x_train.numpy().ravel(), [1.5, 2.5, 3.5])
    np.testing.assert_array_equal(loaded.dataset.y_train.numpy(), [3, 1, 0])
    assert loaded.dataset.num_classes == 4
    assert [p.tolist() for p in loaded.client_parts] == [[0, 1], [2]]


def test_parquet_dictionary_labels_are_class_names(tmp_path):
    labels = pa.array(["no", "yes", "no"]).dictionary_encode()
    pq.write_table(pa.table({"f": [1.0, 2.0, 3.0], "label": labels}), tmp_path / "d.parquet")
    ds = load_files(tmp_path / "d.parquet", test_fraction=0.4).dataset
    assert ds.class_names == ("no", "yes")


def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path, monkeypatch):
    f = write_parquet(tmp_path / "d.parquet", {"f": [1.0], "label": [0]})
    for name in ("pyarrow", "pyarrow.parquet", "pyarrow.compute"):
        monkeypatch.setitem(sys.modules, name, None)
    error("pip install pyarrow", f)


# ---------------------------------------------------------------- images


def image_folder(root: Path, mode: str = "L") -> dict[str, list[np.ndarray]]:
    """Two classes of 3x2 (H x W) images with distinct known pixels; returns them by class."""
    rng = np.random.default_rng(0)
    shape = (3, 2) if mode == "L" else (3, 2, 3)
    made: dict[str, list[np.ndarray]] = {}
    for cls, count in (("dog", 2), ("cat", 3)):
        made[cls] = []
        for i in range(count):
            pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
            write_png(root / cls / f"{i}.png", pixels)
            made[cls].append(pixels)
    return made


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_image_pool_round_trips_pixels_as_chw_in_unit_range(tmp_path, mode):
    made = image_folder(tmp_path / "imgs", mode)
    loaded = load_files(tmp_path / "imgs", test_fraction=0.2, seed=1)
    ds = loaded.dataset
    assert (loaded.fmt, loaded.layout) == ("images", "pool")
    assert ds.class_names == ("cat", "dog")
    channels = 1 if mode == "L" else 3
    assert ds.input_shape == (channels, 3, 2)
    expected = [(p, 0) for p in made["cat"]] + [(p, 1) for p in made["dog"]]
    train_rows, test_rows = held_out_split(5, 0.2, 1)
    for x, y, rows in ((ds.x_train, ds.y_train, train_rows), (ds.x_test, ds.y_test, test_rows)):
        for got, got_y, row in zip(x.numpy(), y.tolist(), rows, strict=True):
            pixels, label = expected[row]
            chw = pixels[None] if mode == "L" else pixels.transpose(2, 0, 1)
            np.testing.assert_array_equal(got, chw.astype(np.float32) / np.float32(255))
            assert got_y == label


def test_image_per_client_folders(tmp_path):
    made = image_folder(tmp_path / "nodes" / "n0")
    write_png(tmp_path / "nodes" / "n1" / "bird" / "x.png", np.zeros((3, 2), np.uint8))
    write_png(tmp_path / "nodes" / "n1" / "cat" / "y.jpg", np.zeros((3, 2), np.uint8))
    loaded = load_files(tmp_path / "nodes", test_path=tmp_path / "nodes" / "n0")
    assert loaded.layout == "per-client" and loaded.client_names == ("n0", "n1")
    assert loaded.dataset.class_names == ("bird", "cat", "dog")
    np.testing.assert_array_equal(loaded.dataset.y_train.numpy(), [1, 1, 1, 2, 2, 0, 1])
    assert [len(p) for p in loaded.client_parts] == [5, 2]
    n0 = np.stack(made["cat"] + made["dog"])[:, None].astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(rows_of(loaded, loaded.client_parts[0]), n0)
    np.testing.assert_array_equal(rows_of(loaded, loaded.client_parts[1]), np.zeros((2, 1, 3, 2)))


# ---------------------------------------------------------------- layout detection


def test_auto_layout_and_format(tmp_path):
    write_csv(tmp_path / "one.csv", ["f", "label"], [[1, 0]])
    assert find_sources(tmp_path / "one.csv").layout == "pool"
    (tmp_path / "pc").mkdir()
    write_csv(tmp_path / "pc" / "a.csv", ["f", "label"], [[1, 0]])
    found = find_sources(tmp_path / "pc")
    assert (found.fmt, found.layout, [p.name for p in found.paths]) == (
        "csv",
        "per-client",
        ["a.csv"],
    )
    image_folder(tmp_path / "im")
    assert (find_sources(tmp_path / "im").fmt, find_sources(tmp_path / "im").layout) == (
        "images", "pool",
    )  # fmt: skip
    with pytest.raises(DataError, match="a pool is a single file"):
        find_sources(tmp_path / "pc", layout="pool")
    with pytest.raises(DataError, match="per-client layout needs a folder"):
        find_sources(tmp_path / "one.csv", layout="per-client")


# ---------------------------------------------------------------- held-out split


def test_held_out_split_is_seeded_disjoint_and_complete():
    train, test = held_out_split(50, 0.2, seed=7)
    again_train, again_test = held_out_split(50, 0.2, seed=7)
    np.testing.assert_array_equal(test, again_test)
    np.testing.assert_array_equal(train, again_train)
    assert len(test) == 10 and not set(train) & set(test)
    assert sorted([*train, *test]) == list(range(50))
    assert not np.array_equal(test, held_out_split(50, 0.2, seed=8)[1])
    assert len(held_out_split(1, 0.9, 0)[0]) == 1  # at least one example stays for training


def test_load_files_split_follows_the_seed(tmp_path):
    f = write_csv(tmp_path / "t.csv", ["f", "label"], [[i, i % 2] for i in range(40)])
    first = load_files(f, seed=1, standardize=False).dataset
    same = load_files(f, seed=1, standardize=False).dataset
    other = load_files(f, seed=2, standardize=False).dataset
    assert torch.equal(first.x_test, same.x_test) and torch.equal(first.x_train, same.x_train)
    assert not torch.equal(first.x_test, other.x_test)
    train, test = set(first.x_train.ravel().tolist()), set(first.x_test.ravel().tolist())
    assert not train & test and train | test == set(map(float, range(40))) and len(test) == 8


# ---------------------------------------------------------------- standardisation


def test_standardisation_uses_training_statistics(tmp_path):
    train = write_csv(tmp_path / "t.csv", ["a", "c", "label"], [[1, 5, 0], [2, 5, 1], [6, 5, 0]])
    test = write_csv(tmp_path / "s.csv", ["a", "c", "label"], [[3, 7, 1]])
    loaded = load_files(train, test_path=test)
    # by hand: a has mean 3, population variance (4 + 1 + 9) / 3; c is constant (std 1)
    std = np.sqrt(14 / 3)
    np.testing.assert_allclose(loaded.mean, [3.0, 5.0])
    np.testing.assert_allclose(loaded.std, [std, 1.0])
    expected_train = np.array([[-2 / std, 0], [-1 / std, 0], [3 / std, 0]], np.float32)
    np.testing.assert_allclose(loaded.dataset.x_train.numpy(), expected_train, rtol=1e-6)
    np.testing.assert_allclose(loaded.dataset.x_test.numpy(), [[0.0, 2.0]], atol=1e-7)
    assert loaded.dataset.x_train[:, 1].eq(0).all()  # a constant column becomes exactly 0


def test_feature_stats_of_a_constant_column_is_exact():
    x = np.full((3, 1), 0.1)
    mean, std = feature_stats(x)
    assert mean[0] == 0.1 and std[0] == 1.0
    assert np.all(apply_standardization(x, mean, std) == 0)


# ---------------------------------------------------------------- bad input


def test_missing_path_and_unreadable_files(tmp_path):
    error("does not exist", tmp_path / "nope.csv")
    (tmp_path / "g.npz").write_bytes(b"garbage, not a zip")
    error(r"g\.npz is not an \.npz archive", tmp_path / "g.npz")
    (tmp_path / "g.parquet").write_bytes(b"garbage")
    error(r"cannot read .*g\.parquet as a Parquet table", tmp_path / "g.parquet")
    (tmp_path / "g.csv").write_bytes(b"f,label\n\xff\xfe,1\n")
    error(r"cannot read .*g\.csv as a CSV table", tmp_path / "g.csv")
    (tmp_path / "e.csv").write_text("")
    error(r"e\.csv is empty", tmp_path / "e.csv")
    write_png(tmp_path / "im" / "a" / "ok.png", np.zeros((2, 2), np.uint8))
    (tmp_path / "im" / "a" / "bad.png").write_bytes(b"not a png")
    error(r"cannot read image .*bad\.png", tmp_path / "im")
    error("cannot tell the format", write_csv(tmp_path / "t.txt", ["f", "label"], [[1, 0]]))


def test_table_without_the_label_column_lists_its_columns(tmp_path):
    f = write_csv(tmp_path / "t.csv", ["age", "target"], [[1, 0]])
    message = error("has no label column 'label'", f)
    assert "t.csv" in message and "['age', 'target']" in message
    g = write_parquet(tmp_path / "t.parquet", {"age": [1.0], "y": [0]})
    assert "['age', 'y']" in error("has no label column 'label'", g)


def test_categorical_columns_are_refused_with_file_and_column(tmp_path):
    f = write_csv(tmp_path / "t.csv", ["age", "sex", "label"], [[1, 0, 0], [2, "male", 1]])
    message = error("one-hot encode", f)
    assert "t.csv" in message and "'sex'" in message and "line 3" in message
    g = write_parquet(tmp_path / "t.parquet", {"sex": ["m", "f"], "label": [0, 1]})
    assert "'sex'" in error("one-hot encode", g)


def test_labels_outside_the_class_range(tmp_path):
    train = write_csv(tmp_path / "t.csv", ["f", "label"], [[1, 0], [2, 1]])
    test = write_csv(tmp_path / "s.csv", ["f", "label"], [[1, 2]])
    assert "s.csv" in error(
        r"test label 2 at line 2 .*outside the class range 0\.\.1", train, test_path=test
    )
    error(r"training label 1 .*outside the class range 0\.\.0", train, classes=1, test_path=train)
    named = write_csv(tmp_path / "n.csv", ["f", "label"], [[1, "a"], [2, "b"]])
    error(
        r"label 'b' at line 3 is not one of the classes \['a'\]",
        named,
        classes=["a"],
        test_path=named,
    )
    error("give classes as a list of names", named, classes=3, test_path=named)


def test_negative_and_fractional_labels(tmp_path):
    error(
        r"negative label -1 at line 3",
        write_csv(tmp_path / "t.csv", ["f", "label"], [[1, 0], [2, -1]]),
    )
    np.savez(tmp_path / "d.npz", x=X[:2], y=np.array([0.0, 1.5]))
    error(r"label 1\.5 at y\[1\] is not a whole number", tmp_path / "d.npz")


def test_nan_and_infinite_features_name_the_row_and_column(tmp_path):
    f = write_csv(tmp_path / "t.csv", ["a", "b", "label"], [[1, 2, 0], [3, "nan", 1]])
    message = error(r"line 3, column 'b' is nan", f)
    assert "t.csv" in message
    g = write_csv(tmp_path / "big.csv", ["a", "label"], [[1e300, 0]])  # inf as float32
    error(r"line 2, column 'a' is 1e\+300", g)
    error(
        r"column 'a' at line 2 is empty", write_csv(tmp_path / "m.csv", ["a", "label"], [["", 0]])
    )
    x = X.copy()
    x[3, 1] = np.inf
    np.savez(tmp_path / "d.npz", x=x, y=Y)
    error(r"d\.npz: x\[3, 1\] is inf \(row 3\)", tmp_path / "d.npz")
    p = write_parquet(tmp_path / "t.parquet", {"a": [1.0, None], "label": [0, 1]})
    error(r"t\.parquet: column 'a' is missing \(null\) at row 1", p)
    q = write_parquet(tmp_path / "q.parquet", {"a": [1.0, float("nan")], "label": [0, 1]})
    error(r"q\.parquet: row 1, column 'a' is nan", q)


def test_an_empty_client_is_named(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    write_csv(folder / "a.csv", ["f", "label"], [[1, 0]])
    write_csv(folder / "b.csv", ["f", "label"], [])
    error(r"b\.csv: client file or folder is empty", folder)
    nodes = tmp_path / "nodes"
    image_folder(nodes / "n0")
    (nodes / "n1" / "cat").mkdir(parents=True)
    error(r"n1: client file or folder is empty", nodes, layout="per-client")


def test_images_of_mixed_sizes_or_modes(tmp_path):
    write_png(tmp_path / "im" / "a" / "1.png", np.zeros((4, 4), np.uint8))
    write_png(tmp_path / "im" / "b" / "2.png", np.zeros((4, 5), np.uint8))
    message = error("mixed sizes", tmp_path / "im")
    assert "2.png is 5x4 L" in message and "1.png is 4x4 L" in message
    write_png(tmp_path / "rgb" / "a" / "1.png", np.zeros((4, 4), np.uint8))
    write_png(tmp_path / "rgb" / "a" / "2.png", np.zeros((4, 4, 3), np.uint8))
    assert "2.png is 4x4 RGB" in error("mixed sizes or modes", tmp_path / "rgb")
    write_png(tmp_path / "rgba" / "a" / "1.png", np.zeros((4, 4, 4), np.uint8))
    error("colour mode 'RGBA'", tmp_path / "rgba")


def test_npz_without_x_or_y_and_mismatched_lengths(tmp_path):
    np.savez(tmp_path / "a.npz", features=X, y=Y)
    assert "['features', 'y']" in error(r"a\.npz has no array 'x'", tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", x=X, y=Y[:4])
    error(r"b\.npz: x has 5 rows .* but y has shape \(4,\)", tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", x=X, y=Y, x_test=X)
    error(r"c\.npz has 'x_test' but no 'y_test'", tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", x=X, y=Y, x_test=X[:2], y_test=Y[:1])
    error(r"x_test has 2 rows", tmp_path / "d.npz")
    np.savez(tmp_path / "e.npz", x=X, y=np.array([0, 1, None, 0, 1], dtype=object))
    error(r"array 'y' cannot be read without unpickling", tmp_path / "e.npz")


def test_test_features_of_another_shape(tmp_path):
    np.savez(tmp_path / "d.npz", x=X, y=Y, x_test=np.zeros((1, 3)), y_test=[0])
    error(
        r"d\.npz: test features have shape \(3,\) per example, .* have \(2,\)", tmp_path / "d.npz"
    )
    train = write_csv(tmp_path / "t.csv", ["a", "b", "label"], [[1, 2, 0]])
    test = write_csv(tmp_path / "s.csv", ["a", "c", "label"], [[1, 2, 0]])
    error(r"s\.csv: test columns differ .* missing \['b'\], extra \['c'\]", train, test_path=test)
    np.savez(tmp_path / "o.npz", x=np.zeros((2, 2)), y=[0, 1])
    error(r"o\.npz is npz, but the training data is csv", train, test_path=tmp_path / "o.npz")


def test_clients_must_agree_on_features_and_label_kind(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    write_csv(folder / "a.csv", ["f", "label"], [[1, 0], [2, 1]])
    write_csv(folder / "b.csv", ["f", "label"], [[1, "x"], [2, "y"]])
    error(r"b\.csv: labels are class names, but .*a\.csv's are integer", folder)
    write_csv(folder / "b.csv", ["f", "g", "label"], [[1, 2, 0], [2, 3, 1]])
    error(r"b\.csv: training columns differ .* extra \['g'\]", folder)
    (folder / "b.csv").unlink()
    np.savez(folder / "b.npz", x=X, y=Y)
    error(r"mixes data formats \['csv', 'npz'\]", folder)


def test_bad_arguments(tmp_path):
    f = write_csv(tmp_path / "t.csv", ["f", "label"], [[1, 0], [2, 1]])
    error("test_fraction must be in", f, test_fraction=1.0)
    error("unknown data format 'xls'", f, fmt="xls")
    error("unknown data layout 'mixed'", f, layout="mixed")
    error(r"the test set is empty", write_csv(tmp_path / "one.csv", ["f", "label"], [[1, 0]]))


def test_a_separate_test_set_gives_no_per_client_test_parts(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    write_csv(folder / "only.csv", ["f", "label"], [[1, 0], [2, 1]])
    test = write_csv(tmp_path / "s.csv", ["f", "label"], [[3, 1]])
    loaded = load_files(folder, test_path=test, standardize=False)
    assert [p.tolist() for p in loaded.client_parts] == [[0, 1]]
    assert loaded.client_test_parts is None  # the test set is the server's, not client 0's
    empty = write_csv(tmp_path / "e.csv", ["f", "label"], [])
    error(r"e\.csv: the test data is empty", folder, test_path=empty)


def test_images_of_mixed_sizes_across_clients_name_both_files(tmp_path):
    write_png(tmp_path / "n" / "a" / "cat" / "1.png", np.zeros((4, 4), np.uint8))
    write_png(tmp_path / "n" / "b" / "cat" / "2.png", np.zeros((4, 6, 3), np.uint8))
    message = error("mixed sizes or modes", tmp_path / "n", test_fraction=0.5)
    assert "2.png is 6x4 RGB" in message and "1.png is 4x4 L" in message


def test_an_unnamed_pandas_index_column_is_refused(tmp_path):
    f = write_csv(tmp_path / "t.csv", ["", "f", "label"], [[0, 1, 0], [1, 2, 1]])
    error(r"t\.csv: column 1 \(''\) has no name: a pandas index", f)


def test_agreed_statistics_replace_the_local_ones(tmp_path):
    f = write_csv(tmp_path / "t.csv", ["a", "b", "label"], [[1, 10, 0], [3, 20, 1], [5, 30, 0]])
    loaded = load_files(f, stats=([1.0, 10.0], [2.0, 5.0]), test_path=f)
    np.testing.assert_array_equal(loaded.dataset.x_train.numpy(), [[0, 0], [1, 2], [2, 4]])
    np.testing.assert_array_equal(loaded.dataset.x_test.numpy(), [[0, 0], [1, 2], [2, 4]])
    error("the tables have 2 features", f, stats=([0.0], [1.0]), test_path=f)
    error("every std > 0", f, stats=([0.0, 0.0], [1.0, 0.0]), test_path=f)
