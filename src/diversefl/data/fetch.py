"""Download the benchmark datasets into the layout ``load_dataset`` expects, md5-verified.

Mirror rule: ``base_url`` (or the default in ``FETCH_SOURCES``) is the folder that directly
holds the files, so each file is fetched from ``base_url.rstrip("/") + "/" + filename``. To
serve a local copy, point ``base_url`` at e.g. ``http://host/data/mnist`` (not ``.../data``);
a local folder holding the files works too (``/srv/mirror/mnist``, read as a file:// URL).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .datasets import CHECKSUMS, DATASETS, DataError, file_md5

__all__ = ["FETCH_SOURCES", "fetch"]

#: Per dataset: the default mirror folder and the files fetched from it (md5 in CHECKSUMS).
#: CIFAR archives are stored as downloaded; ``load_dataset`` extracts them on first use.
FETCH_SOURCES: dict[str, dict[str, object]] = {
    "mnist": {
        "base_url": "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "files": tuple(CHECKSUMS["mnist"]),
    },
    "fashion-mnist": {
        "base_url": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "files": tuple(CHECKSUMS["fashion-mnist"]),
    },
    "cifar10": {
        "base_url": "https://www.cs.toronto.edu/~kriz/",
        "files": tuple(CHECKSUMS["cifar10"]),
    },
    "cifar100": {
        "base_url": "https://www.cs.toronto.edu/~kriz/",
        "files": tuple(CHECKSUMS["cifar100"]),
    },
}

_CHUNK = 1 << 20


def _download(url: str, dest: Path, expected_md5: str, name: str, progress: bool) -> None:
    """Stream ``url`` to a temp file beside ``dest``, check its md5, then rename into place."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        done = 0
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=60) as resp:
                    total = int(resp.headers.get("Content-Length") or 0)
                    while chunk := resp.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        if progress:
                            pct = f" {100 * done // total:3d}%" if total else ""
                            print(f"\r  {dest.name}: {done / 1e6:.1f} MB{pct}", end="",
                                  file=sys.stderr, flush=True)  # fmt: skip
            except (urllib.error.URLError, OSError, ValueError) as exc:
                if url.startswith("file:"):  # a local folder: no network is involved
                    raise DataError(
                        f"{url} for {dest}: {exc}; --base-url must be the folder that holds "
                        f"the files themselves (say DATA/{name} for a data folder laid out as "
                        "$DIVERSEFL_DATA)"
                    ) from exc
                raise DataError(
                    f"download of {url} for {dest} failed: {exc}; check the network or pass "
                    "--base-url pointing at a folder that holds the files"
                ) from exc
        if progress:
            print(file=sys.stderr)
        actual = digest.hexdigest()
        if actual != expected_md5:
            raise DataError(
                f"checksum mismatch for {dest.name} downloaded from {url}: expected md5 "
                f"{expected_md5}, got {actual}; the file was deleted, retry "
                f"`diversefl data fetch {name} --to DIR` (maybe with another --base-url)"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(
    name: str, to: str | os.PathLike, base_url: str | None = None, progress: bool = True
) -> list[Path]:
    """Download dataset ``name`` into ``to/<name>/``, skipping files already verified."""
    if name == "digits":
        return []  # bundled with scikit-learn: nothing to download
    if name not in FETCH_SOURCES:
        raise DataError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    source = FETCH_SOURCES[name]
    base = str(base_url if base_url is not None else source["base_url"]).rstrip("/")
    if "://" not in base:  # a plain folder (the help says "mirror folder"): as a file URL
        local = Path(base).expanduser().resolve()
        if not local.is_dir():
            raise DataError(f"--base-url {base_url}: no such folder (or give an http(s) URL)")
        base = local.as_uri()
    folder = Path(to).expanduser() / name
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for filename in source["files"]:  # type: ignore[attr-defined]
        expected = CHECKSUMS[name][filename]
        dest = folder / filename
        if dest.is_file() and file_md5(dest) == expected:
            if progress:
                print(f"  {filename}: present, md5 ok", file=sys.stderr)
        else:
            _download(f"{base}/{filename}", dest, expected, name, progress)
        paths.append(dest)
    return paths
