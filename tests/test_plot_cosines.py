"""`diversefl plot RUN --cosines`: the series drawn from decisions.csv, checked against hand
computations, the figure written, and clear errors for what it cannot draw."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from diversefl.cli import main
from diversefl.plots.cosines import cosine_series, plot_cosines

# Two rounds, four clients; client 3 is Byzantine. Honest cosines 0.9, 0.8, 0.7 in round 1 and
# 0.95, 0.85, 0.75 in round 2: numpy's linear percentiles of three values are
# 5th: lo + 0.1 (mid - lo), 50th: mid, 95th: mid + 0.9 (hi - mid).
COLUMNS = ("round", "client", "byzantine", "accepted", "cos", "threshold")
ROWS = [
    dict(zip(COLUMNS, values, strict=True))
    for values in [
        ("1", "0", "0", "1", "0.9", "0.7"),
        ("1", "1", "0", "1", "0.8", "0.7"),
        ("1", "2", "0", "0", "0.7", "0.72"),
        ("1", "3", "1", "1", "0.75", "0.7"),
        ("2", "0", "0", "1", "0.95", "0.7"),
        ("2", "1", "0", "1", "0.85", "0.7"),
        ("2", "2", "0", "1", "0.75", "0.7"),
        ("2", "3", "1", "0", "0.6", "0.71"),
    ]
]


def test_series_by_hand() -> None:
    data = cosine_series(ROWS)
    assert data.rounds.tolist() == [1, 2]
    np.testing.assert_allclose(data.honest[:, 0], [0.71, 0.8, 0.89])
    np.testing.assert_allclose(data.honest[:, 1], [0.76, 0.85, 0.94])
    (byz,) = data.clients  # default: the Byzantine clients
    assert byz.client == 3 and byz.byzantine
    np.testing.assert_allclose(byz.cos, [0.75, 0.6])
    np.testing.assert_allclose(byz.threshold, [0.7, 0.71])
    assert byz.accepted.tolist() == [True, False]
    chosen = cosine_series(ROWS, clients=[2, 3])
    assert [c.client for c in chosen.clients] == [2, 3]
    assert chosen.clients[0].accepted.tolist() == [False, True]


def test_series_without_a_threshold_column_is_nan() -> None:
    rows = [{k: v for k, v in r.items() if k != "threshold"} for r in ROWS]
    assert np.isnan(cosine_series(rows).clients[0].threshold).all()


@pytest.mark.parametrize(
    ("rows", "clients", "message"),
    [
        ([{k: v for k, v in r.items() if k != "cos"} for r in ROWS], None, "no cos column"),
        (ROWS, [3, 7], r"clients \[7\] are not in this run"),
    ],
)
def test_series_errors_name_the_problem(rows, clients, message) -> None:
    with pytest.raises(ValueError, match=message):
        cosine_series(rows, clients)


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "dfl-auto__label_flip__seed0"
    run.mkdir()
    with (run / "decisions.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(ROWS[0]))
        writer.writeheader()
        writer.writerows(ROWS)
    (run / "metrics.csv").write_text("round,test_accuracy\n2,0.5\n")
    return run


def test_plot_and_cli_write_the_figure(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    assert plot_cosines(run) == run / "cosines.png" and (run / "cosines.png").stat().st_size > 0
    out = tmp_path / "c.svg"
    assert main(["plot", str(run), "--cosines", "2,3", "--out", str(out)]) == 0
    assert out.read_text().lstrip().startswith("<?xml")


def test_cli_errors(tmp_path: Path, capsys) -> None:
    run = _run_dir(tmp_path)
    assert main(["plot", str(run), "--cosines", "3,x"]) == 2
    assert "--cosines takes client ids" in capsys.readouterr().err
    (run / "decisions.csv").unlink()
    assert main(["plot", str(run), "--cosines"]) == 2
    assert "eval.decisions = true" in capsys.readouterr().err
    assert main(["plot", str(run), str(run), "--cosines"]) == 2  # several runs: curves only
