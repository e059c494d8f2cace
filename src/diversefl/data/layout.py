"""Tell what a user's data path holds: its format (npz, csv, parquet, images) and layout (one
pool the partition splits, or one file / image folder per client), and list its sources."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .datasets import DataError
from .images import class_folders, image_files

__all__ = ["FORMATS", "LAYOUTS", "SUFFIXES", "Sources", "file_format", "find_sources"]

#: Accepted values of ``fmt`` and ``layout`` ("auto" detects them from the path).
FORMATS: tuple[str, ...] = ("auto", "npz", "csv", "parquet", "images")
LAYOUTS: tuple[str, ...] = ("auto", "pool", "per-client")
#: File suffix (lower case) -> format.
SUFFIXES: dict[str, str] = {".npz": "npz", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class Sources:
    """A resolved data path: its format, its layout and the file or folder of each source (one
    for a pool, one per client in name order for per-client data)."""

    fmt: str
    layout: str
    paths: tuple[Path, ...]


def file_format(path: Path, fmt: str) -> str:
    """The format of a single file: ``fmt`` when given, else from the file's suffix."""
    if fmt == "images":
        raise DataError(f"{path} is a file; the images format needs a folder ROOT/CLASS/*.png")
    if fmt != "auto":
        return fmt
    found = SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise DataError(
            f"cannot tell the format of {path} from its suffix {path.suffix!r}; use one of "
            f"{sorted(SUFFIXES)} or pass the format (npz, csv, parquet)"
        )
    return found


def _entries(path: Path) -> tuple[list[Path], list[Path]]:
    """Visible files and sub-folders of a directory, each sorted by name."""
    try:
        entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise DataError(f"cannot list data folder {path}: {exc}") from exc
    return [p for p in entries if p.is_file()], [p for p in entries if p.is_dir()]


def _has_images(folders: list[Path]) -> bool:
    return any(image_files(folder) for folder in folders)


def _table_sources(path: Path, files: list[Path], fmt: str, layout: str) -> Sources | None:
    """A folder of data files: one client each (never a pool); None if it holds none."""
    wanted = set(SUFFIXES.values()) if fmt == "auto" else {fmt}
    data = [p for p in files if SUFFIXES.get(p.suffix.lower()) in wanted]
    if not data:
        return None
    kinds = sorted({SUFFIXES[p.suffix.lower()] for p in data})
    if len(kinds) > 1:
        raise DataError(
            f"{path} mixes data formats {kinds} ({', '.join(p.name for p in data)}); keep one "
            "format per folder"
        )
    if layout == "pool":
        raise DataError(
            f"{path} is a folder of {kinds[0]} files: a pool is a single file (pass the file), "
            "a folder of files is the per-client layout (one file per client)"
        )
    return Sources(kinds[0], "per-client", tuple(data))


def _image_sources(path: Path, folders: list[Path], layout: str) -> Sources | None:
    """A folder of class folders (a pool) or of per-client image folders; None if neither."""
    if layout == "pool" or (layout == "auto" and _has_images(folders)):
        return Sources("images", "pool", (path,))
    if layout == "per-client" or any(_has_images(class_folders(f)) for f in folders):
        return Sources("images", "per-client", tuple(folders))
    return None


def find_sources(path: str | Path, fmt: str = "auto", layout: str = "auto") -> Sources:
    """Resolve ``path`` to its format, layout and sources. ``auto`` layout: a file or a folder
    of class folders is a pool; a folder of files or of image folders is per-client."""
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if layout not in LAYOUTS:
        raise DataError(f"unknown data layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
    path = Path(path).expanduser()
    if not path.exists():
        where = "" if path.is_absolute() else f" (relative to the current folder, {Path.cwd()})"
        raise DataError(f"data path {path} does not exist{where}")
    if path.is_file():
        if layout == "per-client":
            raise DataError(
                f"{path} is a file; the per-client layout needs a folder with one file or "
                "image folder per client"
            )
        return Sources(file_format(path, fmt), "pool", (path,))
    if not path.is_dir():
        raise DataError(f"data path {path} is neither a file nor a folder")
    files, folders = _entries(path)
    found = None
    if fmt != "images":
        found = _table_sources(path, files, fmt, layout)
    if found is None and fmt in ("auto", "images") and folders:
        try:
            found = _image_sources(path, folders, layout)
        except OSError as exc:
            raise DataError(f"cannot list image folders under {path}: {exc}") from exc
    if found is None:
        wanted = "image class folders" if fmt == "images" else f"{fmt} files"
        if fmt == "auto":
            wanted = f"{'/'.join(sorted(SUFFIXES))} files or image class folders"
        raise DataError(
            f"{path} holds no {wanted} (expected FILE.npz|csv|parquet, a folder of such files "
            "(one per client), ROOT/CLASS/*.png|jpg|jpeg, or ROOT/CLIENT/CLASS/*.png|jpg|jpeg)"
        )
    return found
