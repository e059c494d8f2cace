"""A lock per run directory, so that several sweep processes can work on one grid and a
second ``run --resume`` / ``--overwrite`` cannot write a run in progress.

A second ``diversefl sweep`` on the same output directory (to add capacity, or started by
mistake) must not run a cell that another process is running: both would write the same run
files. The lock is an advisory ``flock`` on ``<run dir>/.lock``: the kernel drops it when its
process ends, however it ends, so a killed sweep never blocks its own restart and there is
no stale-lock guessing. The file holds the holder's ``host pid`` while it is held (for messages and
``sweep --status``). A sweep empties it on release; a plain ``diversefl run`` deletes it
(:meth:`CellLock.release_and_remove`), and :meth:`CellLock.acquire` checks after taking the
flock that its file is still the one at the path, so a deletion never gives two holders.
Where ``fcntl`` does not exist (Windows) locking is a no-op: run one sweep per directory.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
_HELD: set[Path] = set()  # lock files this process holds (a sweep cell's run calls run())


def held_here(run_dir: Path) -> bool:
    """Whether this process holds ``run_dir``'s lock (a sweep running the cell in-process)."""
    return (Path(run_dir) / LOCK_NAME).resolve() in _HELD


class CellLock:
    """Exclusive, non-blocking lock on one run directory, held until :meth:`release` or the
    end of the process."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fh: IO[str] | None = None

    def acquire(self) -> bool:
        """Take the lock; False (at once, no waiting) when another process holds it."""
        if fcntl is None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            # never through a link planted at .lock: a sweep empties the file on release
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
            fh = os.fdopen(fd, "a+")  # kept open while the lock is held
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                return False
            if _same_file(fh, self.path):
                break
            # the file was removed (release_and_remove) between our open and our flock: the
            # lock is on a file nobody else will open; take the one at the path instead
            fh.close()
        fh.seek(0)
        fh.truncate()
        fh.write(f"{socket.gethostname()} {os.getpid()}\n")
        fh.flush()
        self._fh = fh
        _HELD.add(self.path.resolve())
        return True

    def release(self) -> None:
        """Drop the lock (no-op when not held)."""
        if self._fh is not None:
            _HELD.discard(self.path.resolve())
            self._fh.seek(0)
            self._fh.truncate()  # no holder named any more (see :func:`holder`)
            self._fh.close()  # closing the descriptor releases the flock
            self._fh = None

    def release_and_remove(self) -> None:
        """Delete the lock file, then drop the lock (a plain run leaves no ``.lock`` behind).
        A process that opened the old file just before it went sees, once it has the flock,
        that the path no longer names that file, and locks the path's file instead."""
        if self._fh is not None:
            self.path.unlink(missing_ok=True)
        self.release()

    def __enter__(self) -> CellLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _same_file(fh: IO[str], path: Path) -> bool:
    """Whether the open ``fh`` is still the file at ``path`` (not removed or replaced)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fh.fileno())
    return (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino)


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return pid > 0


def holder(run_dir: Path) -> str | None:
    """``"pid 123 on host"`` of the process running ``run_dir`` now, else None.

    Read from the lock file, without locking (so that asking never makes a sweep skip a
    cell): a holder clears the file when it releases, and a holder on this host whose
    process is gone (killed mid-run) does not count. A holder on another host is taken at
    its word."""
    try:
        host, pid_text = (Path(run_dir) / LOCK_NAME).read_text().split()
        pid = int(pid_text)
    except (FileNotFoundError, ValueError):
        return None  # no lock file, cleared on release, or half-written
    if host == socket.gethostname() and not _pid_alive(pid):
        return None
    return f"pid {pid} on {host}"
