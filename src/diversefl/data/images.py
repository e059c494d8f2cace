"""Read a user's image folder ``ROOT/class_name/*.png|jpg|jpeg`` into float32 images in [0, 1],
shape (C, H, W): grayscale C = 1, RGB C = 3. Every image of a dataset must have one size and
one colour mode; the class of an image is the name of its folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .datasets import DataError
from .filedata import FileData

__all__ = [
    "IMAGE_SUFFIXES",
    "check_image_shapes",
    "class_folders",
    "image_files",
    "read_image_folder",
]

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg"})

#: Pillow mode -> (mode the pixels are read in, channels). Palette images are read as RGB and
#: 1-bit images as 8-bit grayscale; other modes (alpha, 16-bit, CMYK) are refused.
_MODES: dict[str, tuple[str, int]] = {
    "1": ("L", 1),
    "L": ("L", 1),
    "P": ("RGB", 3),
    "RGB": ("RGB", 3),
}


def _describe(shape: tuple[int, ...]) -> str:
    """(C, H, W) as Pillow would say it: ``WxH`` and the mode."""
    channels, height, width = shape
    return f"{width}x{height} {'L' if channels == 1 else 'RGB'}"


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (by suffix, case-insensitive), sorted by name."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and _visible(p) and p.suffix.lower() in IMAGE_SUFFIXES
    )


def class_folders(root: Path) -> list[Path]:
    """The sub-folders of ``root`` (hidden ones skipped), sorted by name."""
    return sorted(p for p in root.iterdir() if p.is_dir() and _visible(p))


_Reference = tuple[Path, tuple[int, int], str]  # first image: path, (width, height), mode


def _read_image(path: Path, reference: _Reference | None) -> tuple[np.ndarray, _Reference]:
    """One image as uint8 [C, H, W]; its size and mode must match ``reference`` (the first
    image: path, (width, height), mode). Returns the array and the reference to use next."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise DataError(
            f"reading image folders needs pillow, which is not installed ({exc}): "
            "pip install 'diversefl[files]'"
        ) from exc

    try:
        with Image.open(path) as img:
            if img.mode not in _MODES:
                raise DataError(
                    f"{path} has colour mode {img.mode!r}; convert it to grayscale (L) or RGB "
                    "(no alpha channel, 8 bits per channel)"
                )
            mode, channels = _MODES[img.mode]
            if reference is None:
                reference = (path, img.size, mode)
            first, size, first_mode = reference
            if img.size != size or mode != first_mode:
                raise DataError(
                    f"images of mixed sizes or modes: {path} is {img.size[0]}x{img.size[1]} "
                    f"{mode}, but {first} is {size[0]}x{size[1]} {first_mode}; resize/convert "
                    "them to one size and mode"
                )
            pixels = np.asarray(img.convert(mode), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    return pixels.reshape(pixels.shape[0], pixels.shape[1], channels).transpose(2, 0, 1), reference


def read_image_folder(root: str | Path) -> FileData:
    """Every image under ``root/class_name/`` (classes and files in sorted name order) as
    float32 [N, C, H, W] in [0, 1], labelled with its class folder's name."""
    root = Path(root)
    try:
        folders = class_folders(root)
        listing = [(folder.name, image_files(folder)) for folder in folders]
    except OSError as exc:
        raise DataError(f"cannot read image folder {root}: {exc}") from exc
    if not folders:
        raise DataError(f"{root} has no class folders; expected {root}/CLASS_NAME/*.png|jpg|jpeg")
    images: list[np.ndarray] = []
    labels: list[str] = []
    files: list[Path] = []
    reference = None
    for name, paths in listing:
        for path in paths:
            pixels, reference = _read_image(path, reference)
            images.append(pixels)
            labels.append(name)
            files.append(path)
    if images:
        x = np.stack(images).astype(np.float32) / np.float32(255.0)
    else:
        x = np.zeros((0, 1, 1, 1), dtype=np.float32)
    return FileData(root, x, np.array(labels, dtype=str), locate=lambda i: str(files[i]))


def check_image_shapes(parts: Sequence[FileData]) -> None:
    """All (non-empty) image sources of a dataset, e.g. per-client folders and the test folder,
    must share one size and mode; the error names the first image of each differing source."""
    first = parts[0]
    for part in parts[1:]:
        if part.x.shape[1:] != first.x.shape[1:]:
            raise DataError(
                f"images of mixed sizes or modes: {part.locate(0)} is "
                f"{_describe(part.x.shape[1:])}, but {first.locate(0)} is "
                f"{_describe(first.x.shape[1:])}; resize/convert them to one size and mode"
            )
