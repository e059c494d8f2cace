"""The files a local deployment writes under its working directory, written safely.

The working directory holds the node keys, the worker's key, the data shards, the Flower
home (the installed app) and the logs, so it must be the user's alone: an existing one owned
by someone else or writable by group or others is refused. Inside it, private directories
are mode 0700; a file is written as a new file (a temporary file renamed over the path), so
an existing file's permissions, owner or hard links never carry over to new contents; and
nothing is written through a symbolic link: a link at a key or log path is refused with an
error naming it, instead of redirecting the write to wherever it points.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO

from diversefl.flower.deploy_errors import DeployInputError


class UnsafePathError(DeployInputError):
    """A path deploy-local will not write to: a symbolic link, or a directory that is not
    the user's alone."""


def check_workdir(path: str | os.PathLike[str]) -> Path:
    """The working directory as an absolute path, checked without creating anything: when it
    exists it must be a directory owned by this user that only this user can write."""
    work = Path(path).expanduser().resolve()
    if not work.exists():
        return work
    st = work.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"workdir {work} exists and is not a directory")
    if st.st_uid != os.getuid():
        raise UnsafePathError(
            f"workdir {work} belongs to uid {st.st_uid}, not to you: keys, shards and the "
            "installed app would be in another user's hands; choose a directory of your own"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafePathError(
            f"workdir {work} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}): "
            f"they could replace keys, shards or the installed app; run `chmod go-w {work}` "
            "or choose another --workdir"
        )
    return work


def make_workdir(path: str | os.PathLike[str]) -> Path:
    """:func:`check_workdir`, then create the directory (mode 0700) when it is missing."""
    work = check_workdir(path)
    work.mkdir(mode=0o700, parents=True, exist_ok=True)
    return check_workdir(work)


def private_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as a directory of mode 0700 owned by this user (created when missing); a
    symbolic link, a file, or another user's directory there is refused."""
    target = Path(path)
    with contextlib.suppress(FileExistsError):  # a link or a file: reported below
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            what = "a symbolic link" if target.is_symlink() else "not a directory"
            raise UnsafePathError(
                f"{target} is {what}: refusing to keep private files there; remove it"
            ) from None
        raise
    try:
        owner = os.fstat(fd).st_uid
        if owner != os.getuid():
            raise UnsafePathError(f"{target} belongs to uid {owner}, not to you: remove it")
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return target


def _refuse_link(directory_fd: int, path: Path, what: str) -> None:
    """Refuse a symbolic link or a non-file at ``path`` (looked up in the open directory)."""
    try:
        st = os.stat(path.name, dir_fd=directory_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(
            f"{path} is a symbolic link: refusing to write {what} through it; remove the link"
        )
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"{path} exists and is not a regular file: refusing to write {what}")


def refuse_link(path: str | os.PathLike[str], what: str = "a file") -> None:
    """Raise :class:`UnsafePathError` when ``path`` is a symbolic link or not a regular file
    (a check before writing several files; :func:`write_file` checks again)."""
    target = Path(path)
    directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _refuse_link(directory, target, what)
    finally:
        os.close(directory)


def write_file(path: str | os.PathLike[str], data: bytes, mode: int, what: str = "a file") -> Path:
    """Write ``data`` to ``path`` as a new file of exactly ``mode``: a temporary file in the
    same directory, renamed over ``path``. A symbolic link at ``path`` is refused
    (:class:`UnsafePathError`, naming ``what`` is written); the rename replaces only the
    directory entry, so a link placed there meanwhile is replaced, never followed."""
    target = Path(path)
    directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _refuse_link(directory, target, what)
        tmp = f".{target.name}.{secrets.token_hex(6)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), mode)
                fh.write(data)
            os.replace(tmp, target.name, src_dir_fd=directory, dst_dir_fd=directory)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=directory)
            raise
    finally:
        os.close(directory)
    return target


def open_log(path: str | os.PathLike[str]) -> BinaryIO:
    """``path`` opened for writing from its start (mode 0600 when new); a symbolic link there
    is refused instead of followed (``O_NOFOLLOW``)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UnsafePathError(
                f"{path} is a symbolic link: refusing to write a log through it; remove the link"
            ) from None
        raise
    return os.fdopen(fd, "wb")
