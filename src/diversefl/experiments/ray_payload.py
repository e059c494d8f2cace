"""A sweep cell's run files as a payload: read into ``{file name: bytes}`` on the machine that
ran the cell, checked and written under the sweep's ``--out`` by the one that collects them.

``diversefl sweep --ray`` runs each cell in a temporary folder on a cluster node and ships its
files (config.toml, metrics.csv, decisions.csv, summary.json, checkpoint.pt) back as bytes,
so the nodes need no shared filesystem. The collecting side trusts no name or size: a payload
is refused (:class:`PayloadError`, one line) unless every name is a plain file name of the
run folder and the sizes stay within bounds, and its config, summary and checkpoint are read
back with the run directory's own checks before anything replaces a file under ``--out``.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from diversefl.cell_lock import LOCK_NAME
from diversefl.experiments.cells import Cell, CellResult, claim_cell, finished_summary
from diversefl.results import ALL_RUN_FILES, atomic_write_bytes, load_checkpoint

REQUIRED_FILES = ("config.toml", "metrics.csv", "summary.json")  # what every finished run has
_STAGING = ".incoming-"  # the hidden folder a payload is written to before it moves in
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # one plain file name, not hidden


class PayloadError(ValueError):
    """A cell's returned run files that cannot be written as they are (a bad name or size)."""


@dataclass(frozen=True)
class PayloadLimits:
    """Bounds on one cell's payload: the number of files (a run writes five) and their total
    size (generous: the checkpoint of a large model with per-client state is big)."""

    max_files: int = 16
    max_bytes: int = 4 << 30


def pack_run_dir(run_dir: Path) -> dict[str, bytes]:
    """The files of a finished run folder as ``{name: bytes}`` (the lock file left out); a
    subfolder, link or other non-file there is an error, since the payload cannot carry it."""
    files: dict[str, bytes] = {}
    for path in sorted(run_dir.iterdir()):
        if path.name == LOCK_NAME:
            continue
        if path.is_symlink() or not path.is_file():
            raise PayloadError(f"{path}: not a plain file; a cell's result carries only files")
        files[path.name] = path.read_bytes()
    return files


def check_payload(
    files: object, cell_name: str, limits: PayloadLimits = PayloadLimits()
) -> dict[str, bytes]:
    """``files`` as ``{name: bytes}`` once every name is a plain file name (no folder, no
    ``..``, not hidden), the run's required files are there and the sizes are within
    ``limits``; otherwise a :class:`PayloadError` naming the cell and the bad entry."""
    where = f"result of {cell_name}"
    if not isinstance(files, Mapping):
        raise PayloadError(f"{where}: expected a mapping of file names to bytes, got {files!r:.80}")
    if len(files) > limits.max_files:
        raise PayloadError(f"{where}: {len(files)} files, more than the {limits.max_files} allowed")
    total = 0
    for name, data in files.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise PayloadError(
                f"{where}: file name {name!r:.120} is not a plain file name inside the run folder"
            )
        if not isinstance(data, bytes):
            raise PayloadError(f"{where}: {name} holds {type(data).__name__}, not bytes")
        total += len(data)
        if total > limits.max_bytes:
            raise PayloadError(
                f"{where}: the files pass {limits.max_bytes} bytes at {name} (the limit)"
            )
    missing = [n for n in REQUIRED_FILES if n not in files]
    if missing:
        raise PayloadError(f"{where}: no {missing[0]}, which every finished run writes")
    return dict(files)


def install_payload(
    cell: Cell, run_dir: Path, files: Mapping[str, bytes], limits: PayloadLimits = PayloadLimits()
) -> CellResult:
    """Write a cell's payload as ``run_dir`` (under the cell's lock, the summary last, so the
    run counts as finished only once every file is in place) and return its summary.

    The files are first written beside the run, in a hidden folder inside ``run_dir``, and read
    back as a sweep reads a finished run (its config must be the cell's, its summary a run
    summary, its checkpoint a checkpoint): a payload that fails leaves ``run_dir`` as it was.
    Like a sweep process, it leaves alone a cell another process holds or has finished."""
    files = check_payload(files, cell.dirname, limits)
    created = not run_dir.exists()
    lock = claim_cell(cell, run_dir)
    if isinstance(lock, CellResult):
        return lock
    try:
        for stale in run_dir.glob(f"{_STAGING}*"):  # left by a collector killed mid-write
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=_STAGING, dir=run_dir))
        try:
            summary = _stage(cell, staging, files)
            _move_in(staging, run_dir, files)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        if created:  # nothing of this run was there before: leave nothing behind
            lock.release_and_remove()
            _remove_if_empty(run_dir)
        raise
    finally:
        lock.release()
    return CellResult(summary)


def _stage(cell: Cell, staging: Path, files: Mapping[str, bytes]) -> dict[str, object]:
    """Write ``files`` into ``staging`` and read them back with a sweep's checks: the summary
    of a finished run of ``cell`` (:func:`finished_summary`), a loadable checkpoint."""
    for name, data in files.items():
        atomic_write_bytes(staging / name, data)
    summary = finished_summary(cell, staging)
    if summary is None:  # pragma: no cover - summary.json is required and .running refused
        raise PayloadError(f"result of {cell.dirname}: not a finished run")
    if "checkpoint.pt" in files:
        load_checkpoint(staging / "checkpoint.pt")  # weights-only reader: never runs code
    return summary


def _move_in(staging: Path, run_dir: Path, files: Mapping[str, bytes]) -> None:
    """Replace ``run_dir``'s run files with the staged ones: marked running meanwhile, the
    summary moved last, stale run files of an earlier attempt removed."""
    running = run_dir / ".running"
    running.touch()
    (run_dir / "summary.json").unlink(missing_ok=True)
    for name in ALL_RUN_FILES:
        if name not in files:
            (run_dir / name).unlink(missing_ok=True)
    for name in sorted(files, key=lambda n: n == "summary.json"):
        (staging / name).replace(run_dir / name)
    running.unlink()


def _remove_if_empty(path: Path) -> None:
    """Remove the directory ``path`` if nothing is left in it."""
    try:
        path.rmdir()
    except OSError:
        pass
