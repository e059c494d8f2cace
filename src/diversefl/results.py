"""The run directory: config.toml, metrics.csv, decisions.csv, summary.json, checkpoint.pt.
Writers are append-only and truncate back to the checkpoint on resume; the checkpoint is
written atomically (temp file + rename) so a kill mid-write never leaves it corrupt."""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import tomli_w
import torch

from diversefl.cell_lock import LOCK_NAME
from diversefl.engine.digest import state_digest

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


CHECKPOINT_FORMAT = 2  # 2: the state carries its SHA-256 (``sha256``) and ``format``


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically save a checkpoint: tensors and plain values only (a ``TypeError`` names
    anything else), with the SHA-256 of the state, so that :func:`load_checkpoint` reads it
    back without running code and notices a damaged file."""
    state = {**state, "format": CHECKPOINT_FORMAT}
    state["sha256"] = state_digest(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with torch's weights-only reader,
    which builds tensors and plain values and never runs code a planted file may hold. A file
    that is no such checkpoint (truncated, damaged, a link, a pickle of other objects) is a
    :class:`RunDirError` naming it."""
    again = "; --overwrite starts the run again"
    try:
        with open_plain(path) as fh:
            state = torch.load(fh, map_location="cpu", weights_only=True)
    except RunDirError:
        raise
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise RunDirError(f"{path}: {_unreadable(err)}{again}") from None
    if type(state) is not dict or "round" not in state:
        raise RunDirError(f"{path}: not a diversefl checkpoint{again}")
    _verify_digest(path, state, again)
    return state


def _verify_digest(path: Path, state: dict[str, Any], again: str) -> None:
    """Check (and drop) the stored SHA-256 of a format-2 checkpoint; older ones have none."""
    stored = state.pop("sha256", None)
    if stored is None and "format" not in state:
        return
    try:
        same = stored == state_digest(state)
    except TypeError:
        same = False
    if not same:
        raise RunDirError(
            f"{path}: damaged (its content does not match the checksum it was saved with){again}"
        )


def _unreadable(err: BaseException) -> str:
    """Why torch's weights-only reader refused a file, in one line (its message is paragraphs
    of advice, including the unsafe one to turn the weights-only reader off)."""
    text = str(err)
    forbidden = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if forbidden:
        return (
            f"not a diversefl checkpoint: it asks for the Python object {forbidden[1]} (a "
            "checkpoint holds only tensors and plain values; the file was refused without "
            "running anything it holds)"
        )
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = detail[1].strip() if detail else _first_clause(err)
    return f"not a readable checkpoint ({type(err).__name__}: {reason[:160]})"


def _first_clause(err: BaseException) -> str:
    """The first sentence of an error message (torch appends paragraphs of advice)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else "empty"
    return text.split(". ")[0][:160]


@contextlib.contextmanager
def open_plain(path: Path) -> Iterator[IO[bytes]]:
    """Open a run file for reading without following a symbolic link, and only if it is a
    regular file (a FIFO or a device would block or never end)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise RunDirError(f"{path} is a symbolic link: {_LINK_REFUSED}") from None
        raise
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RunDirError(f"{path} is not a regular file")
        yield fh


_LINK_REFUSED = (
    "run files must be plain files (a link would send the run's reads or writes elsewhere)"
)


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


def complete_row(row: dict[str, Any]) -> bool:
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
    """An append-only CSV with a fixed header that can be cut back to a given round. It keeps
    the size and the SHA-256 of what it wrote, which a checkpoint records so that a resume
    can tell the file is the one the checkpoint continues."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns
        self._buffer: list[dict[str, Any]] = []
        self.size = 0
        self._sha = hashlib.sha256()

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the file's first :attr:`size` bytes (all that this log wrote)."""
        return self._sha.hexdigest()

    def adopt(self, size: int, sha: Any) -> None:
        """Go on from a file whose first ``size`` bytes were checked (``sha``: their running
        hash): what follows them (rows written after the checkpoint) is cut, in one
        ``ftruncate`` (a kill leaves the old file or the cut one, never half of one)."""
        if self.path.stat().st_size > size:
            with _naming(self.path):
                fd = os.open(self.path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
                try:
                    os.ftruncate(fd, size)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        self.size, self._sha = size, sha.copy()

    def truncate_after(self, last_round: int) -> None:
        """Keep only complete rows with round <= last_round (resume from a checkpoint that
        records no size for this file: one written before checkpoints did).

        The file is replaced atomically, and only when something is cut: a kill during a
        resume leaves either the old file or the new one, never half of one. A row cut short
        by a kill mid-append (missing fields, no final newline) is dropped."""
        raw = self.path.read_bytes() if self.path.exists() else b""
        rows = read_csv(self.path)
        kept = [r for r in rows if complete_row(r) and int(r["round"]) <= last_round]
        if len(kept) == len(rows) and (not raw or raw.endswith(b"\n")):
            self.size, self._sha = len(raw), hashlib.sha256(raw)
            return
        self._rewrite(kept)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        data = _csv_bytes(self.columns, rows, header=True)
        atomic_write_bytes(self.path, data)
        self.size, self._sha = len(data), hashlib.sha256(data)

    def append(self, row: dict[str, Any]) -> None:
        """Queue a row; it reaches disk at the next :meth:`flush`."""
        self._buffer.append(row)

    def flush(self) -> None:
        """Append the queued rows to the file (creating it with its header); never through a
        symbolic link planted at its path."""
        if not self.path.exists():
            self._rewrite([])
        if self._buffer:
            data = _csv_bytes(self.columns, self._buffer, header=False)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0))
            with _naming(self.path), os.fdopen(fd, "ab") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            self.size += len(data)
            self._sha.update(data)
            self._buffer.clear()


def _csv_bytes(columns: list[str], rows: list[dict[str, Any]], header: bool) -> bytes:
    """Rows as the CSV bytes a ``csv.DictWriter`` writes (``\\r\\n`` line ends, UTF-8)."""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    if header:
        w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


RUN_FILES = ("summary.json", "checkpoint.pt", "metrics.csv")  # what marks a run directory
ALL_RUN_FILES = ("config.toml", "metrics.csv", "decisions.csv", "summary.json", "checkpoint.pt")


def check_out_path(out: Path) -> Path:
    """``out`` as given, once it is known to resolve: a symbolic link loop is a
    :class:`RunDirError` naming it instead of an exception from deep in pathlib."""
    try:
        out.resolve()
    except (RuntimeError, OSError) as err:  # RuntimeError: Python < 3.13's "Symlink loop"
        if isinstance(err, OSError) and err.errno != errno.ELOOP:
            raise
        raise RunDirError(
            f"--out {out}: a symbolic link loop; point --out at a directory"
        ) from None
    return out


def plain_file(path: Path) -> bool:
    """Whether the run file ``path`` exists; a symbolic link or anything but a regular file
    there is a :class:`RunDirError` (a link planted in a shared run directory could point the
    run's writes at another file)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(mode):
        raise RunDirError(f"{path} is a symbolic link: {_LINK_REFUSED}")
    if not stat.S_ISREG(mode):
        raise RunDirError(f"{path} is not a regular file")
    return True


def check_run_dir(out: Path, resume: bool, overwrite: bool) -> bool:
    """Check that ``out`` may be used, writing nothing; return True when a checkpoint will be
    resumed (or a finished run returned as it is). ``resume`` on a run killed before its first
    checkpoint (a metrics.csv, no checkpoint, no summary: nothing was saved) starts it again."""
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a directory")
    if not out.exists() or not any(p.name != LOCK_NAME for p in out.iterdir()):
        return False
    if not resume:
        if any((out / f).exists() for f in RUN_FILES) and not overwrite:
            raise RunDirError(
                f"{out} already holds a run; pass --resume to continue it or --overwrite to "
                "replace it"
            )
        return False
    present = {name for name in ALL_RUN_FILES if plain_file(out / name)}
    if "checkpoint.pt" in present or "summary.json" in present:
        return True  # a checkpoint to go on from, or a finished run kept without one
    if "metrics.csv" in present:
        return False  # killed before its first checkpoint: start again
    raise RunDirError(f"--resume: no checkpoint.pt in {out}")


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> bool:
    """:func:`check_run_dir`, then make ``out`` ready: created, or emptied of its run files
    with ``overwrite``."""
    resuming = check_run_dir(out, resume, overwrite)
    if overwrite and out.is_dir():
        for name in ALL_RUN_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return resuming


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Read a finished (or partial) run directory: config, metrics rows and summary."""
    import tomllib

    d = Path(run_dir)
    if not (d / "metrics.csv").exists():
        raise FileNotFoundError(f"{d} is not a run directory (no metrics.csv)")
    cfg = tomllib.loads((d / "config.toml").read_text()) if (d / "config.toml").exists() else {}
    summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else {}
    return {"dir": d, "config": cfg, "metrics": read_csv(d / "metrics.csv"), "summary": summary}
