"""``RUN_DIR/samples/approval.json``: the reviewer's decision on the uploaded samples, bound to
the sha256 of the manifest that was reviewed (and through it to every sample file's sha256).

An approval whose digest is not the current manifest's is *stale*: :func:`read_approval`
returns it with ``stale=True`` and :func:`wait_for_approval` keeps waiting, so a changed
upload is never trained on under an old decision."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from diversefl.review.files import (
    APPROVAL,
    MAX_JSON_BYTES,
    ReviewError,
    atomic_write,
    read_bytes,
    samples_dir,
)
from diversefl.review.store import read_manifest

_KEYS = ("manifest_sha256", "approved", "rejected", "time")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Approval:
    """Which partitions may train (``approved``) and which may not (``rejected``), for the
    manifest with digest ``manifest_sha256``; ``stale``: that is not the current manifest."""

    manifest_sha256: str
    approved: tuple[int, ...]
    rejected: tuple[int, ...]
    time: str
    stale: bool = False


def write_approval(
    run_dir: str | os.PathLike[str],
    rejected: Sequence[int] = (),
    *,
    manifest_sha256: str | None = None,
) -> Path:
    """Approve every partition of the manifest except ``rejected`` and write approval.json.
    ``manifest_sha256``: the digest of the manifest that was reviewed; when the manifest has
    changed since, nothing is written (the reviewer saw other samples)."""
    manifest, digest = read_manifest(run_dir)
    if manifest_sha256 is not None and manifest_sha256 != digest:
        raise ReviewError(
            f"{samples_dir(run_dir) / 'manifest.json'}: changed since it was reviewed "
            "(new samples were uploaded): review them again"
        )
    partitions = [n.partition for n in manifest.nodes]
    check_rejected(partitions, rejected)
    refused = set(rejected)
    doc = {
        "manifest_sha256": digest,
        "approved": sorted(p for p in partitions if p not in refused),
        "rejected": sorted(refused),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path = samples_dir(run_dir) / APPROVAL
    atomic_write(path, (json.dumps(doc, indent=1) + "\n").encode("utf-8"))
    return path


def check_rejected(partitions: Sequence[int], rejected: Sequence[int]) -> None:
    """Every rejected partition must be one that uploaded a sample."""
    unknown = sorted(set(rejected) - set(partitions))
    if unknown:
        raise ReviewError(
            f"--reject {unknown[0]}: no such partition among the uploaded samples "
            f"(partitions: {', '.join(map(str, sorted(partitions))) or 'none'})"
        )


def read_approval(run_dir: str | os.PathLike[str]) -> Approval | None:
    """The approval in ``RUN_DIR/samples`` (None when there is none), ``stale=True`` when it
    names another manifest than the current one. A malformed file is a :class:`ReviewError`."""
    path = samples_dir(run_dir) / APPROVAL
    try:
        data = read_bytes(path, MAX_JSON_BYTES)
    except FileNotFoundError:
        return None
    approval = _parse(data, str(path))
    manifest, digest = read_manifest(run_dir)
    if approval.manifest_sha256 != digest:
        return Approval(
            approval.manifest_sha256,
            approval.approved,
            approval.rejected,
            approval.time,
            stale=True,
        )
    listed = sorted(approval.approved + approval.rejected)
    partitions = sorted(n.partition for n in manifest.nodes)
    if listed != partitions:
        raise ReviewError(
            f"{path}: approved + rejected are partitions {listed}, but the manifest lists "
            f"{partitions}"
        )
    return approval


def wait_for_approval(
    run_dir: str | os.PathLike[str],
    poll_seconds: float = 2.0,
    timeout: float | None = None,
    log: Callable[[str], None] = print,
) -> Approval:
    """Poll until a current (not stale) approval exists and return it. Logs once how to give
    one; a stale approval is logged once too. Raises TimeoutError after ``timeout`` seconds."""
    if not poll_seconds > 0:
        raise ValueError(f"poll_seconds: {poll_seconds!r} is not a positive number")
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout: {timeout!r} is not a number >= 0")
    deadline = None if timeout is None else time.monotonic() + timeout
    told: set[str] = set()
    while True:
        approval = read_approval(run_dir)
        if approval is not None and not approval.stale:
            return approval
        key = "stale" if approval is not None else "absent"
        if key not in told:
            told.add(key)
            log(_waiting_message(run_dir, stale=approval is not None))
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(
                f"no approval of the uploaded samples in {run_dir} after {timeout:g} s "
                f"(approve with `diversefl samples {run_dir} --approve`)"
            )
        pause = poll_seconds if deadline is None else min(poll_seconds, deadline - time.monotonic())
        time.sleep(max(pause, 0.0))


def _waiting_message(run_dir: str | os.PathLike[str], *, stale: bool) -> str:
    why = "the approval there is for samples that have since changed; " if stale else ""
    return (
        f"waiting for the review of the uploaded samples: {why}inspect them with "
        f"`diversefl samples {run_dir}`, then approve with `diversefl samples {run_dir} "
        "--approve` (add --reject J to exclude partition J)"
    )


def _parse(data: bytes, where: str) -> Approval:
    try:
        doc: Any = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ReviewError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise ReviewError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    missing = [k for k in _KEYS if k not in doc]
    unknown = sorted(set(doc) - set(_KEYS))
    if missing or unknown:
        what = f"missing key {missing[0]!r}" if missing else f"unknown key {unknown[0]!r}"
        raise ReviewError(f"{where}: {what}")
    sha = doc["manifest_sha256"]
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise ReviewError(f"{where}: manifest_sha256: {sha!r} is not 64 hex digits")
    approved = _partitions(where, "approved", doc["approved"])
    rejected = _partitions(where, "rejected", doc["rejected"])
    both = sorted(set(approved) & set(rejected))
    if both:
        raise ReviewError(f"{where}: partition {both[0]} is both approved and rejected")
    stamp = doc["time"]
    try:
        datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        raise ReviewError(f"{where}: time: {stamp!r} is not an ISO date and time") from None
    return Approval(sha, approved, rejected, stamp)


def _partitions(where: str, field: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise ReviewError(f"{where}: {field}: expected a list, got {type(value).__name__}")
    for v in value:
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ReviewError(f"{where}: {field}: {v!r} is not a partition (an integer >= 0)")
    if len(set(value)) != len(value):
        raise ReviewError(f"{where}: {field}: a partition is listed twice")
    return tuple(value)
