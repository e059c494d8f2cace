"""Safe file access for the samples folder: private atomic writes (a temp file created with
``O_EXCL | O_NOFOLLOW`` and mode 0600, then a rename) and reads that refuse links, folders and
oversized files. The folder holds clients' raw data, so nothing here is world-readable."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

SAMPLES_DIR = "samples"
MANIFEST = "manifest.json"
APPROVAL = "approval.json"
MAX_JSON_BYTES = 16 * 2**20  # a manifest lists nodes, not data: 16 MiB is far beyond any run
MAX_NPZ_BYTES = 2 * 2**30  # one node's sample file


class ReviewError(ValueError):
    """A samples folder, manifest, sample file or approval that is missing or malformed."""


def samples_dir(run_dir: str | os.PathLike[str]) -> Path:
    """``RUN_DIR/samples``: the folder of the uploaded samples (not created here)."""
    return Path(run_dir) / SAMPLES_DIR


def ensure_samples_dir(run_dir: str | os.PathLike[str]) -> Path:
    """Create ``RUN_DIR/samples`` (mode 0700) if needed; a link or a file there is refused."""
    folder = samples_dir(run_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.is_symlink() or not folder.is_dir():
        raise ReviewError(f"{folder}: not a plain folder (a link or a file is refused)")
    return folder


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600) through a fresh temp file beside it and a rename,
    so a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_bytes(path: Path, limit: int) -> bytes:
    """The bytes of the regular file ``path``; a link, a non-file or a file over ``limit``
    bytes is a :class:`ReviewError`, a missing file a :class:`FileNotFoundError`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        if isinstance(err, FileNotFoundError):
            raise FileNotFoundError(f"{path}: no such file") from None
        raise ReviewError(f"{path}: cannot be read ({err.strerror or err})") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ReviewError(f"{path}: not a regular file")
        if info.st_size > limit:
            raise ReviewError(f"{path}: {info.st_size} bytes, over the limit of {limit}")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ReviewError(f"{path}: over the limit of {limit} bytes")
    return data
