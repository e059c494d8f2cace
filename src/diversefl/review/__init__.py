"""Review of the one-time samples a Flower run's nodes uploaded: the files the server writes
(``RUN_DIR/samples``), a report and contact sheets for an expert, and the approval the server
waits for before training (the paper's "experts can check for corrupted samples").

Names are re-exported lazily, so that ``diversefl --help`` does not import numpy."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ReviewError": "diversefl.review.files",
    "StoredSample": "diversefl.review.store",
    "SampleSet": "diversefl.review.store",
    "write_samples": "diversefl.review.store",
    "read_samples": "diversefl.review.store",
    "manifest_digest": "diversefl.review.store",
    "Approval": "diversefl.review.approval",
    "write_approval": "diversefl.review.approval",
    "read_approval": "diversefl.review.approval",
    "wait_for_approval": "diversefl.review.approval",
    "SampleReport": "diversefl.review.report",
    "build_report": "diversefl.review.report",
    "render_markdown": "diversefl.review.report",
    "report_json": "diversefl.review.report",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'diversefl.review' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
