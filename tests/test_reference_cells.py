"""A restructuring must change no result: ten committed grid cells (softmax and MLP; DiverseFL
plain, with quarantine, cosine + clip and per-layer; Krum, RSA, FLTrust, centered clipping,
median on Dirichlet shards, the backdoor), shortened to 150 rounds, are rerun and compared with
references written by the code before the change (tests/reference_cells.py): metrics.csv (all
but its wall-clock column) and decisions.csv byte for byte, and the final model's SHA-256.

Floating-point sums round differently on another CPU or torch build, and some of these runs are
chaotic (plain averaging under attack), so the exact comparison applies where the references
were written (same CPU model, torch version and thread count); elsewhere the test checks the
metrics to a tolerance and says so; a chaotic cell (Krum picks one update per round) is
compared on the reference machine only."""

from __future__ import annotations

import csv
import gzip
import io
import json

import pytest
import torch
from reference_cells import CELLS, REFERENCES, run_cell

from diversefl.engine.runner import cpu_model


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _same_machine(ref: dict[str, str]) -> bool:
    return (ref["cpu"], ref["torch"], ref["torch_threads"]) == (
        cpu_model(), torch.__version__, str(torch.get_num_threads())
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.key)
def test_cell_reproduces_its_reference(cell, mnist_dir, tmp_path):
    ref_dir = REFERENCES / cell.dirname
    ref = json.loads((ref_dir / "reference.json").read_text())
    got = run_cell(cell, tmp_path / "run", str(mnist_dir.resolve()))
    want_metrics = (ref_dir / "metrics.csv").read_text()
    if _same_machine(ref):
        assert got["metrics"] == want_metrics
        assert (
            got["decisions"]
            == gzip.decompress((ref_dir / "decisions.csv.gz").read_bytes()).decode()
        )
        assert got["theta_sha256"] == ref["theta_sha256"]
        return
    if cell.chaotic:  # seen: Krum under ALIE at 0.234 against 0.385 on an Intel Xeon
        pytest.skip(f"{cell.key} is chaotic: compared with its reference on {ref['cpu']} only")
    # another machine: the same trajectory to a tolerance (rounding differs, not the method)
    for a, b in zip(_rows(got["metrics"]), _rows(want_metrics), strict=True):
        assert a["round"] == b["round"]
        assert float(a["test_accuracy"]) == pytest.approx(float(b["test_accuracy"]), abs=0.03)
