"""Pictures of the uploaded samples, one PNG per node: a contact sheet of the node's examples
for images (each titled with its class name), a class-count bar chart for tables and other
arrays. Drawn on a bare matplotlib Figure (Agg), so no global pyplot state is touched."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from diversefl.review.files import atomic_write
from diversefl.review.store import SampleSet, StoredSample

MAX_CELLS = 64  # examples on one contact sheet (a sample of 30-300 rows: the first 64)


def display_image(x: np.ndarray) -> np.ndarray:
    """One (C, H, W) example as an (H, W) gray or (H, W, 3) RGB image, min-max scaled to
    [0, 1] (a constant image shows as black)."""
    img = np.asarray(x, dtype=np.float64)
    low, high = img.min(), img.max()
    img = (img - low) / (high - low) if high > low else np.zeros_like(img)
    return img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))


def contact_sheet(
    sample: StoredSample, classes: Sequence[str], max_cells: int = MAX_CELLS
) -> bytes:
    """PNG bytes of a grid of the node's first ``max_cells`` examples, each titled by its
    class name (one mosaic image drawn once: far faster than one axes per example)."""
    count = min(len(sample.y), max_cells)
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    cells = [display_image(sample.x[i]) for i in range(count)]
    h, w = cells[0].shape[:2]
    pad = max(4, (2 * h) // 5)  # pixels between images, room for the captions
    mosaic = _mosaic(cells, rows, cols, pad)
    fig = Figure(figsize=(1.2 * cols, 1.35 * rows + 0.4))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - 0.4 / (1.35 * rows + 0.4)))
    ax.imshow(mosaic, cmap="gray" if mosaic.ndim == 2 else None, vmin=0.0, vmax=1.0)
    ax.set_axis_off()
    for i in range(count):
        r, c = divmod(i, cols)
        label = _short(classes[int(sample.y[i])])
        x, y = c * (w + pad) + pad / 2 + w / 2, r * (h + pad) + pad * 0.5
        ax.text(x, y, label, ha="center", va="center", fontsize=7)
    fig.suptitle(_title(sample, count), fontsize=9)
    return _png(fig)


def _mosaic(cells: list[np.ndarray], rows: int, cols: int, pad: int) -> np.ndarray:
    """The images on a white grid: each cell has a ``pad``-pixel band above its image (for
    the caption), ``pad / 2`` pixels of margin left and right, and a bottom margin."""
    h, w = cells[0].shape[:2]
    out = np.ones((rows * (h + pad) + pad // 2, cols * (w + pad), *cells[0].shape[2:]))
    for i, img in enumerate(cells):
        top, left = (i // cols) * (h + pad) + pad, (i % cols) * (w + pad) + pad // 2
        out[top : top + h, left : left + w] = img
    return out


def class_bars(sample: StoredSample, classes: Sequence[str]) -> bytes:
    """PNG bytes of a bar chart of the node's rows per class."""
    counts = np.bincount(sample.y, minlength=len(classes))[: len(classes)]
    fig = Figure(figsize=(max(4.0, 0.35 * len(classes) + 1.5), 3.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(classes)), counts)
    ax.set_xticks(range(len(classes)), [_short(c) for c in classes], rotation=60, fontsize=7)
    ax.set_ylabel("rows")
    ax.set_title(_title(sample, len(sample.y)), fontsize=9)
    fig.tight_layout()
    return _png(fig)


def write_sheets(samples: SampleSet, out: Path) -> list[Path]:
    """One ``partition-J.png`` per node in ``out`` (created): contact sheets for images,
    class-count bars otherwise. Returns the paths written."""
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths = []
    for sample in samples.samples:
        if samples.kind == "image":
            data = contact_sheet(sample, samples.classes)
        else:
            data = class_bars(sample, samples.classes)
        path = out / f"partition-{sample.partition}.png"
        atomic_write(path, data)
        paths.append(path)
    return paths


def _title(sample: StoredSample, shown: int) -> str:
    rows = f"{shown} of {len(sample.y)} rows" if shown < len(sample.y) else f"{shown} rows"
    return f"partition {sample.partition}, node {_short(sample.node_id, 24)}: {rows}"


def _short(text: str, width: int = 12) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()
