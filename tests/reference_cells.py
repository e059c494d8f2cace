"""Short reruns of committed grid cells, stored as references so that a restructuring can be
checked to change no result: the same cells, 150 rounds, run by today's code must give the
metrics.csv and decisions.csv stored under tests/references/ byte for byte (the wall-clock
``seconds`` column aside) and the same final model, bit for bit, on the machine that wrote them.

Write the references (only from code known to be right):
    DIVERSEFL_DATA=DIR python tests/reference_cells.py
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import diversefl

REFERENCES = Path(__file__).resolve().parent / "references"
CONFIGS = Path(diversefl.__file__).parent / "configs"
ROUNDS = 150
# every cell logs decisions and evaluates every 10 rounds, so that per-client scores and 15
# accuracy/loss rows are compared, not only the three rows the grids' own eval.every would give
COMMON = [f"rounds={ROUNDS}", "eval.every=10", "eval.decisions=true", "eval.checkpoint_every=50"]


@dataclass(frozen=True)
class RefCell:
    """A committed grid cell plus the overrides that shorten it."""

    grid: str  # a shipped sweep config, relative to diversefl/configs
    cell: str  # the cell's run directory name in that grid
    extra: tuple[str, ...] = ()
    # a rule that picks one update per round (Krum): a rounding difference on another CPU can
    # change a pick and, from there, the whole trajectory; compared on the reference machine only
    chaotic: bool = False

    @property
    def key(self) -> str:
        extra = "+" + "+".join(self.extra) if self.extra else ""
        return f"{Path(self.grid).stem}.{self.cell}{extra}"

    @property
    def dirname(self) -> str:
        return self.key.replace("/", "_").replace("=", "-")


CELLS = [
    RefCell("paper/mnist-softmax.toml", "diversefl-s1__label_flip__seed0"),
    RefCell("paper/mnist-softmax.toml", "rsa__sign_flip__seed0"),
    RefCell("leaderboard/mnist-softmax.toml", "dfl-cos-quar__adaptive__seed0"),
    RefCell("leaderboard/mnist-mlp.toml", "dfl-cos07-s3-clip__adaptive__seed0"),
    RefCell(
        "leaderboard/mnist-mlp.toml", "diversefl__label_flip__seed0", ("aggregator.per_layer=true",)
    ),
    RefCell("leaderboard/mnist-mlp.toml", "krum__alie__seed0", chaotic=True),
    RefCell("leaderboard/mnist-mlp.toml", "fltrust__min_max__seed0"),
    RefCell("leaderboard/mnist-mlp.toml", "centered_clipping__same_value__seed0"),
    RefCell("leaderboard/mnist-mlp-dirichlet.toml", "median__ipm__seed0"),
    RefCell("leaderboard/mnist-mlp-backdoor.toml", "dfl-cos-quar__backdoor__seed0"),
]


def cell_config(ref: RefCell):
    """The cell's config from its grid, shortened by :data:`COMMON` and ``ref.extra``."""
    from diversefl.config import apply_overrides, make_config, to_toml_dict
    from diversefl.experiments.sweep import load_sweep

    cells = {c.dirname: c for c in load_sweep(CONFIGS / ref.grid)}
    raw = to_toml_dict(cells[ref.cell].config)
    return make_config(apply_overrides(raw, COMMON + list(ref.extra)))


def metrics_without_seconds(path: Path) -> str:
    """metrics.csv as text with the wall-clock column dropped (the only column that varies)."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
        columns = [c for c in (rows[0].keys() if rows else []) if c != "seconds"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def run_cell(ref: RefCell, out: Path, data_dir: str) -> dict[str, str]:
    """Run the shortened cell into ``out``; what is compared: metrics text, decisions text,
    the final model's SHA-256 and the machine it ran on."""
    import torch

    from diversefl.engine.runner import cpu_model, train

    result = train(cell_config(ref), out_dir=out, data_dir=data_dir, progress=False)
    theta = result.theta.detach().cpu().contiguous().numpy().tobytes()
    return {
        "metrics": metrics_without_seconds(out / "metrics.csv"),
        "decisions": (out / "decisions.csv").read_text(),
        "theta_sha256": hashlib.sha256(theta).hexdigest(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
    }


def write_references(data_dir: str) -> None:
    import tempfile
    import time

    for ref in CELLS:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            got = run_cell(ref, Path(tmp) / "run", data_dir)
        d = REFERENCES / ref.dirname
        d.mkdir(parents=True, exist_ok=True)
        (d / "metrics.csv").write_text(got.pop("metrics"))
        (d / "decisions.csv.gz").write_bytes(_gzip(got.pop("decisions")))
        (d / "reference.json").write_text(json.dumps({"cell": ref.key, **got}, indent=2) + "\n")
        print(f"{ref.key}: {time.perf_counter() - t0:.1f} s", flush=True)


def _gzip(text: str) -> bytes:
    import gzip

    return gzip.compress(text.encode(), mtime=0)


if __name__ == "__main__":
    data = os.environ.get("DIVERSEFL_DATA") or (sys.argv[1] if len(sys.argv) > 1 else "")
    if not data:
        sys.exit("set DIVERSEFL_DATA to the dataset directory")
    write_references(str(Path(data).resolve()))
