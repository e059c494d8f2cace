"""`diversefl samples RUN_DIR`: the stored one-time samples (round trip, tampering refused),
the review report against plain-loop references, the pictures, and the approval the server
waits for (stale when the samples change, polling, timeout)."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import stat
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from diversefl.cli import main
from diversefl.review import (
    ReviewError,
    StoredSample,
    build_report,
    manifest_digest,
    read_approval,
    read_samples,
    wait_for_approval,
    write_approval,
    write_samples,
)
from diversefl.review.report import OUTLIER_THRESHOLD

CLASSES = ["zero", "one", "two"]
FEATURES = ["age", "bmi", "bp", "glucose"]


def image_samples(seed: int = 0) -> list[StoredSample]:
    rng = np.random.default_rng(seed)
    return [
        StoredSample(
            partition=j,
            node_id=str(1000 + j),
            x=rng.random((12, 1, 8, 8), dtype=np.float32),
            y=rng.integers(0, 3, 12),
            attack="sign_flip" if j == 2 else "none",
        )
        for j in range(3)
    ]


def table_samples(shift_node: int | None = None, n: int = 4) -> list[StoredSample]:
    rng = np.random.default_rng(1)
    out = []
    for j in range(n):
        x = rng.normal(size=(20, 4)).astype(np.float32)
        if j == shift_node:
            x += 10
        out.append(StoredSample(j, f"node-{j}", x, rng.integers(0, 3, 20)))
    return out


@pytest.fixture
def image_run(tmp_path: Path) -> Path:
    write_samples(tmp_path, image_samples(), classes=CLASSES, features=None, input_shape=(1, 8, 8))
    return tmp_path


@pytest.fixture
def table_run(tmp_path: Path) -> Path:
    write_samples(tmp_path, table_samples(), classes=CLASSES, features=FEATURES, input_shape=[4])
    return tmp_path


def _manifest(run: Path) -> dict:
    return json.loads((run / "samples" / "manifest.json").read_text())


def _save_manifest(run: Path, doc: dict) -> None:
    (run / "samples" / "manifest.json").write_text(json.dumps(doc))


def _replace_npz(run: Path, partition: int, **arrays: np.ndarray) -> None:
    """Rewrite a sample file with np.savez and give the manifest its digest, as a forger with
    write access to the run directory could."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = run / "samples" / f"partition-{partition}.npz"
    path.write_bytes(buf.getvalue())
    doc = _manifest(run)
    node = next(n for n in doc["nodes"] if n["partition"] == partition)
    node["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    _save_manifest(run, doc)


# --- the stored files ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["image", "table"])
def test_round_trip_returns_what_was_written(tmp_path: Path, kind: str):
    if kind == "image":
        written, features, shape = image_samples(), None, (1, 8, 8)
    else:
        written, features, shape = table_samples(), FEATURES, (4,)
    manifest = write_samples(
        tmp_path, written, classes=CLASSES, features=features, input_shape=shape
    )
    got = read_samples(tmp_path)
    assert got.kind == kind and got.input_shape == shape and got.classes == tuple(CLASSES)
    assert got.features == (None if features is None else tuple(FEATURES))
    assert got.manifest_sha256 == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert got.manifest_sha256 == manifest_digest(tmp_path)
    assert len(got.samples) == len(written)
    for w, g in zip(written, got.samples, strict=True):
        assert (g.partition, g.node_id, g.attack) == (w.partition, w.node_id, w.attack)
        assert g.x.dtype == np.float32 and g.y.dtype == np.int64
        assert np.array_equal(g.x, w.x) and np.array_equal(g.y, w.y)
    for path in (tmp_path / "samples").iterdir():  # clients' raw data: private files
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_manifest_lists_each_file_with_its_sha256(image_run: Path):
    doc = _manifest(image_run)
    assert doc["format"] == 1 and doc["kind"] == "image" and doc["input_shape"] == [1, 8, 8]
    for j, node in enumerate(doc["nodes"]):
        data = (image_run / "samples" / f"partition-{j}.npz").read_bytes()
        assert node["file"] == f"partition-{j}.npz" and node["size"] == 12
        assert node["sha256"] == hashlib.sha256(data).hexdigest()
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:  # a plain .npz
            assert sorted(npz.files) == ["x", "y"]


def test_rewriting_the_same_samples_gives_the_same_digest(tmp_path: Path, monkeypatch):
    """A server restarted on the same uploads keeps its approval valid: no clock time (such
    as np.savez's zip timestamps) goes into the files."""
    kw = {"classes": CLASSES, "features": None, "input_shape": (1, 8, 8)}
    write_samples(tmp_path, image_samples(), **kw)
    first = manifest_digest(tmp_path)
    later = time.localtime(time.time() + 86400 * 400)
    monkeypatch.setattr(time, "localtime", lambda *_: later)
    write_samples(tmp_path, image_samples(), **kw)
    assert manifest_digest(tmp_path) == first


def _sha_mismatch(run: Path) -> None:
    path = run / "samples" / "partition-1.npz"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def _traversal(run: Path) -> None:
    doc = _manifest(run)
    doc["nodes"][0]["file"] = "../x.npz"
    _save_manifest(run, doc)


def _nan(run: Path) -> None:
    x = np.zeros((12, 1, 8, 8), np.float32)
    x[3, 0, 2, 2] = np.nan
    _replace_npz(run, 1, x=x, y=np.zeros(12, np.int64))


def _label_out_of_range(run: Path) -> None:
    y = np.zeros(12, np.int64)
    y[5] = 3  # three classes: 0..2
    _replace_npz(run, 2, x=np.zeros((12, 1, 8, 8), np.float32), y=y)


def _missing_key(run: Path) -> None:
    doc = _manifest(run)
    del doc["classes"]
    _save_manifest(run, doc)


def _wrong_dtype(run: Path) -> None:
    _replace_npz(run, 0, x=np.zeros((12, 1, 8, 8), np.float64), y=np.zeros(12, np.int64))


def _wrong_shape(run: Path) -> None:
    _replace_npz(run, 0, x=np.zeros((11, 1, 8, 8), np.float32), y=np.zeros(11, np.int64))


@pytest.mark.parametrize(
    "tamper, where, message",
    [
        (_sha_mismatch, "partition-1.npz", "sha256"),
        (_traversal, "manifest.json", "nodes[0].file: '../x.npz'"),
        (_nan, "partition-1.npz", "x: 1 values are NaN or infinite"),
        (_label_out_of_range, "partition-2.npz", "y: label 3 outside the 3 classes"),
        (_missing_key, "manifest.json", "missing key 'classes'"),
        (_wrong_dtype, "partition-0.npz", "x: dtype float64, expected float32"),
        (_wrong_shape, "partition-0.npz", "x: shape [11, 1, 8, 8], expected [12, 1, 8, 8]"),
    ],
)
def test_tampered_samples_are_refused_naming_file_and_field(image_run, tamper, where, message):
    tamper(image_run)
    with pytest.raises(ReviewError) as err:
        read_samples(image_run)
    text = str(err.value)
    assert "\n" not in text and where in text and message in text, text


def test_a_sample_file_that_is_a_link_is_refused(image_run: Path, tmp_path_factory):
    """The manifest's digest of a file elsewhere would let a link smuggle it in."""
    outside = tmp_path_factory.mktemp("elsewhere") / "x.npz"
    target = image_run / "samples" / "partition-0.npz"
    outside.write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(ReviewError, match="partition-0.npz"):
        read_samples(image_run)


def test_writer_refuses_what_the_reader_would_refuse(tmp_path: Path):
    bad = image_samples()
    bad[0] = StoredSample(0, "1000", np.full((12, 1, 8, 8), np.nan, np.float32), bad[0].y)
    kw = {"classes": CLASSES, "features": None, "input_shape": (1, 8, 8)}
    with pytest.raises(ReviewError, match="partition 0: x: 768 values are NaN"):
        write_samples(tmp_path, bad, **kw)
    twice = image_samples()
    twice[1] = StoredSample(0, "x", twice[1].x, twice[1].y)
    with pytest.raises(ReviewError, match="partition 0 given twice"):
        write_samples(tmp_path, twice, **kw)
    with pytest.raises(ReviewError, match="does not match the 4 features"):
        write_samples(
            tmp_path, table_samples(), classes=CLASSES, features=FEATURES, input_shape=[5]
        )
    assert not (tmp_path / "samples" / "manifest.json").exists()


def test_missing_manifest_is_one_clear_error(tmp_path: Path):
    with pytest.raises(ReviewError, match="manifest.json: no such file"):
        read_samples(tmp_path)


# --- the report ------------------------------------------------------------------------


def test_label_counts_equal_a_plain_count(image_run: Path):
    samples = read_samples(image_run)
    report = build_report(samples)
    for sample, node in zip(samples.samples, report.nodes, strict=True):
        counted = Counter(int(v) for v in sample.y)
        assert node.label_counts == tuple(counted.get(c, 0) for c in range(len(CLASSES)))


def _loo_score_by_hand(nodes: list[np.ndarray], j: int) -> float:
    """Mean |z| of node j's values, z from the other nodes' pooled per-feature mean and
    population std, by plain loops."""
    others = [list(map(float, row)) for k, x in enumerate(nodes) if k != j for row in x]
    total, count = 0.0, 0
    for f in range(len(others[0])):
        column = [row[f] for row in others]
        mean = sum(column) / len(column)
        std = math.sqrt(sum((v - mean) ** 2 for v in column) / len(column))
        for row in nodes[j]:
            total += abs(float(row[f]) - mean) / std
            count += 1
    return total / count


def _tv_by_hand(counts: list[list[int]], j: int) -> float:
    mine = counts[j]
    rest = [sum(c[k] for i, c in enumerate(counts) if i != j) for k in range(len(mine))]
    return 0.5 * sum(abs(a / sum(mine) - b / sum(rest)) for a, b in zip(mine, rest, strict=True))


def test_leave_one_out_score_flags_the_shifted_node_only(tmp_path: Path):
    written = table_samples(shift_node=1)
    write_samples(tmp_path, written, classes=CLASSES, features=FEATURES, input_shape=(4,))
    report = build_report(read_samples(tmp_path))
    xs = [s.x for s in written]
    counts = [list(n.label_counts) for n in report.nodes]
    for j, node in enumerate(report.nodes):
        assert node.outlier_score == pytest.approx(_loo_score_by_hand(xs, j), rel=1e-9)
        assert node.label_tv == pytest.approx(_tv_by_hand(counts, j), rel=1e-12)
        assert ("outlier" in node.flags) == (j == 1), (j, node.outlier_score)
    assert report.nodes[1].outlier_score > OUTLIER_THRESHOLD


def test_table_column_summaries_per_feature(table_run: Path):
    samples = read_samples(table_run)
    node = build_report(samples).nodes[2]
    x = samples.samples[2].x.astype(np.float64)
    assert [c.name for c in node.columns] == FEATURES
    bmi = node.columns[1]
    column = [float(v) for v in x[:, 1]]
    mean = sum(column) / len(column)
    assert (bmi.min, bmi.max) == (min(column), max(column))
    assert bmi.mean == pytest.approx(mean, rel=1e-12)
    assert bmi.std == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in column) / 20))


def test_duplicate_and_constant_uploads_are_flagged(tmp_path: Path):
    nodes = table_samples()
    dup = nodes[0].x.copy()
    dup[5] = dup[2]
    dup[7] = dup[2]
    nodes[0] = StoredSample(0, "node-0", dup, nodes[0].y)
    nodes[3] = StoredSample(3, "node-3", np.tile(nodes[3].x[:1], (20, 1)), nodes[3].y)
    write_samples(tmp_path, nodes, classes=CLASSES, features=FEATURES, input_shape=(4,))
    report = build_report(read_samples(tmp_path))
    assert report.nodes[0].duplicates == 2 and report.nodes[0].flags == ("duplicates",)
    assert report.nodes[3].constant and "constant" in report.nodes[3].flags
    assert "duplicates" not in report.nodes[3].flags  # implied by constant
    for node in report.nodes[1:3]:
        assert node.duplicates == 0 and not node.constant and node.flags == ()


# --- the command -----------------------------------------------------------------------


def test_cli_writes_one_png_per_node_and_the_reports(image_run: Path, capsys):
    assert main(["samples", str(image_run)]) == 0
    out = image_run / "samples" / "review"
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["partition-0.png", "partition-1.png", "partition-2.png"]
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "report.json").read_text())
    assert doc["manifest_sha256"] == manifest_digest(image_run)
    assert [n["partition"] for n in doc["nodes"]] == [0, 1, 2]
    md = (out / "report.md").read_text()
    assert "| partition | node id |" in md and "| 2 | 1002 | sign_flip | 12 |" in md
    printed = capsys.readouterr().out
    assert "1001" in printed and "--approve" in printed
    assert not (image_run / "samples" / "approval.json").exists()  # review alone approves nothing


def test_cli_out_folder_and_table_pictures(table_run: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp("review")
    assert main(["samples", str(table_run), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("partition-*.png")) == [
        f"partition-{j}.png" for j in range(4)
    ]
    assert "| glucose |" in (out / "report.md").read_text()


def test_cli_reject_approves_the_others(image_run: Path, capsys):
    assert main(["samples", str(image_run), "--approve", "--reject", "1"]) == 0
    doc = json.loads((image_run / "samples" / "approval.json").read_text())
    assert doc["approved"] == [0, 2] and doc["rejected"] == [1]
    assert doc["manifest_sha256"] == manifest_digest(image_run)
    approval = read_approval(image_run)
    assert approval is not None and not approval.stale
    assert (approval.approved, approval.rejected) == ((0, 2), (1,))
    assert "approved partitions [0, 2], rejected [1]" in capsys.readouterr().out


def test_cli_reject_of_an_unknown_partition_writes_nothing(image_run: Path, capsys):
    assert main(["samples", str(image_run), "--reject", "7"]) == 2
    assert "--reject 7: no such partition" in " ".join(capsys.readouterr().err.split())
    assert not (image_run / "samples" / "approval.json").exists()
    assert not (image_run / "samples" / "review").exists()


def test_cli_on_tampered_samples_is_one_error_line(image_run: Path, capsys):
    _sha_mismatch(image_run)
    assert main(["samples", str(image_run), "--approve"]) == 2
    err = capsys.readouterr().err
    assert "partition-1.npz" in err.replace("\n", "")  # rich wraps a long path anywhere
    assert "differs from the manifest's" in " ".join(err.split())
    assert not (image_run / "samples" / "approval.json").exists()


# --- the approval ----------------------------------------------------------------------


def test_approval_of_an_earlier_manifest_is_stale(image_run: Path):
    assert read_approval(image_run) is None
    write_approval(image_run, rejected=[2])
    assert not read_approval(image_run).stale
    changed = image_samples(seed=5)  # new uploads after the review
    write_samples(image_run, changed, classes=CLASSES, features=None, input_shape=(1, 8, 8))
    approval = read_approval(image_run)
    assert approval is not None and approval.stale and approval.rejected == (2,)


def test_approval_names_the_reviewed_manifest_not_a_newer_one(image_run: Path):
    reviewed = read_samples(image_run).manifest_sha256
    write_samples(
        image_run, image_samples(seed=9), classes=CLASSES, features=None, input_shape=(1, 8, 8)
    )
    with pytest.raises(ReviewError, match="changed since it was reviewed"):
        write_approval(image_run, manifest_sha256=reviewed)
    assert read_approval(image_run) is None


def test_approval_of_an_unknown_partition_is_refused(image_run: Path):
    with pytest.raises(ReviewError, match="--reject 5: no such partition"):
        write_approval(image_run, rejected=[5])


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("time"), "missing key 'time'"),
        (lambda d: d.update(approved=[0, 1]), "partition 1 is both approved and rejected"),
        (lambda d: d.update(approved=[0]), "approved + rejected are partitions [0, 1]"),
        (lambda d: d.update(manifest_sha256="abc"), "manifest_sha256: 'abc'"),
    ],
)
def test_malformed_approval_is_an_error(image_run: Path, edit, message):
    path = write_approval(image_run, rejected=[1])
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(ReviewError, match=f"approval.json: .*{re.escape(message)}"):
        read_approval(image_run)


def test_wait_for_approval_returns_once_the_file_appears(image_run: Path):
    messages: list[str] = []
    timer = threading.Timer(0.3, write_approval, args=(image_run, [0]))
    timer.start()
    try:
        approval = wait_for_approval(image_run, poll_seconds=0.02, timeout=30, log=messages.append)
    finally:
        timer.join()
    assert approval.rejected == (0,) and approval.approved == (1, 2)
    assert len(messages) == 1  # said once, not every poll
    assert f"diversefl samples {image_run} --approve" in messages[0]


def test_wait_for_approval_ignores_a_stale_one_and_times_out(image_run: Path):
    write_approval(image_run)
    write_samples(
        image_run, image_samples(seed=3), classes=CLASSES, features=None, input_shape=(1, 8, 8)
    )
    messages: list[str] = []
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=str(image_run)):
        wait_for_approval(image_run, poll_seconds=0.01, timeout=0.05, log=messages.append)
    assert time.monotonic() - start < 5
    assert len(messages) == 1 and "changed" in messages[0]


def test_samples_folder_is_private(image_run: Path):
    mode = stat.S_IMODE(os.stat(image_run / "samples").st_mode)
    assert mode & 0o077 == 0
