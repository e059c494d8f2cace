"""The run directory: config.toml, metrics.csv, decisions.csv, summary.json, checkpoint.pt.
Writers are append-only and truncate back to the checkpoint on resume; the checkpoint is
written atomically (temp file + rename) so a kill mid-write never leaves it corrupt."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tomli_w
import torch

from diversefl.cell_lock import LOCK_NAME

METRIC_COLUMNS = [
    "round",
    "test_accuracy",
    "test_loss",
    "n_accepted",
    "tpr",
    "fpr",
    "lr",
    "seconds",
]
DECISION_COLUMNS = ["round", "client", "byzantine", "accepted"]


class RunDirError(RuntimeError):
    """The output directory holds a run and neither --resume nor --overwrite was given."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once: setting it to read it is not thread-safe


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and a rename (with the
    permissions a plain ``open`` would give, not the temp file's private 0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with _naming(path), os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Give an OSError raised while writing ``path`` (a full disk: ``write`` and ``fsync``
    say only "No space left on device") the file's name, so the error says which file."""
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically save a checkpoint (torch pickle of tensors and plain values)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; an unreadable one (truncated,
    not a checkpoint) is a :class:`RunDirError` naming it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise RunDirError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: {err}); "
            "--overwrite starts the run again"
        ) from None
    if not isinstance(state, dict) or "round" not in state:
        raise RunDirError(f"{path}: not a diversefl checkpoint; --overwrite starts the run again")
    return state


def read_summary(path: Path) -> dict[str, Any]:
    """A run's summary.json; a damaged one (not JSON, not a run summary) is a
    :class:`RunDirError` naming the file."""
    try:
        summary = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunDirError(
            f"{path}: not a readable run summary ({err}); delete it to rerun the run (it "
            "resumes from its checkpoint)"
        ) from None
    if not isinstance(summary, dict) or "final_test_accuracy" not in summary:
        raise RunDirError(
            f"{path}: not a run summary (no final_test_accuracy); delete it to rerun the run"
        )
    return summary


def write_json(path: Path, obj: Any) -> None:
    """Atomically write pretty JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_toml(path: Path, obj: dict[str, Any]) -> None:
    """Atomically write TOML."""
    atomic_write_bytes(path, tomli_w.dumps(obj).encode())


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts (empty list when the file does not exist)."""
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _complete(row: dict[str, Any]) -> bool:
    """A CSV row with every column (csv.DictReader fills missing ones with None) and an
    integer round."""
    if None in row or any(v is None for v in row.values()):
        return False
    try:
        int(row["round"])
    except (KeyError, TypeError, ValueError):
        return False
    return True


class CsvLog:
    """An append-only CSV with a fixed header that can be cut back to a given round."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns
        self._buffer: list[dict[str, Any]] = []

    def truncate_after(self, last_round: int) -> None:
        """Keep only complete rows with round <= last_round (resume from that checkpoint).

        The file is replaced atomically, and only when something is cut: a kill during a
        resume leaves either the old file or the new one, never half of one. A row cut short
        by a kill mid-append (missing fields, no final newline) is dropped."""
        raw = self.path.read_bytes() if self.path.exists() else b""
        rows = read_csv(self.path)
        kept = [r for r in rows if _complete(r) and int(r["round"]) <= last_round]
        if len(kept) == len(rows) and (not raw or raw.endswith(b"\n")):
            return
        self._rewrite(kept)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        atomic_write_bytes(self.path, buf.getvalue().encode())

    def append(self, row: dict[str, Any]) -> None:
        """Queue a row; it reaches disk at the next :meth:`flush`."""
        self._buffer.append(row)

    def flush(self) -> None:
        """Append the queued rows to the file (creating it with its header)."""
        if not self.path.exists():
            self._rewrite([])
        if self._buffer:
            with _naming(self.path), self.path.open("a", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore")
                w.writerows(self._buffer)
                fh.flush()
                os.fsync(fh.fileno())
            self._buffer.clear()


RUN_FILES = ("summary.json", "checkpoint.pt", "metrics.csv")  # what marks a run directory


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> bool:
    """Create ``out`` or check it may be used; return True when a checkpoint will be resumed
    (or a finished run returned as it is). ``resume`` on a run killed before its first
    checkpoint (a metrics.csv, no checkpoint, no summary: nothing was saved) starts it again."""
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a directory")
    if out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()):
        has_run = any((out / f).exists() for f in RUN_FILES)
        if resume:
            if not (out / "checkpoint.pt").exists():
                if (out / "summary.json").exists():
                    return True  # finished run without checkpoint: nothing to redo
                if (out / "metrics.csv").exists():
                    return False  # killed before its first checkpoint: start again
                raise RunDirError(f"--resume: no checkpoint.pt in {out}")
            return True
        if has_run and not overwrite:
            raise RunDirError(
                f"{out} already holds a run; pass --resume to continue it or --overwrite to "
                "replace it"
            )
        if overwrite:
            for name in (
                "summary.json",
                "checkpoint.pt",
                "metrics.csv",
                "decisions.csv",
                "config.toml",
            ):
                (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return False


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Read a finished (or partial) run directory: config, metrics rows and summary."""
    import tomllib

    d = Path(run_dir)
    if not (d / "metrics.csv").exists():
        raise FileNotFoundError(f"{d} is not a run directory (no metrics.csv)")
    cfg = tomllib.loads((d / "config.toml").read_text()) if (d / "config.toml").exists() else {}
    summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else {}
    return {"dir": d, "config": cfg, "metrics": read_csv(d / "metrics.csv"), "summary": summary}
