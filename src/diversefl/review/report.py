"""What a reviewer should look at in the uploaded samples, as pure functions over numpy:
per-node label counts, column summaries, a leave-one-out outlier score against the other
nodes' samples, the label distance to them, and duplicate or constant uploads.

Flags (hints for the reviewer, never a decision):

- ``outlier``: the node's outlier score exceeds :data:`OUTLIER_THRESHOLD`. The score is the
  mean, over the node's rows and features, of ``|x - mean_o| / std_o`` where ``mean_o`` and
  ``std_o`` (population std) are each feature's statistics over the *other* nodes' pooled rows;
  features whose spread among the others is zero (below 1e-6 of their scale) are left out,
  their z-score being undefined. Rows drawn like the others score about 0.8 (E|N(0,1)|).
- ``constant``: two or more rows and all of them identical.
- ``duplicates``: some rows repeat another row of the same node exactly (not shown when
  ``constant``).

The total variation distance between the node's label distribution and the other nodes'
pooled one is reported but not flagged: on non-IID data (DiverseFL's setting) honest nodes
hold different classes and score near 1.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from diversefl.review.store import SampleSet

OUTLIER_THRESHOLD = 3.0  # mean |z| against the other nodes: 3 standard deviations on average
_ZERO_SPREAD = 1e-6  # a feature's std below this fraction of max(1, |mean|) counts as zero


@dataclass(frozen=True)
class ColumnSummary:
    """Min, mean, population std and max of one feature (or of all values: ``all values``)."""

    name: str
    min: float
    mean: float
    std: float
    max: float


@dataclass(frozen=True)
class NodeReport:
    """One node's figures and flags."""

    partition: int
    node_id: str
    attack: str
    size: int
    label_counts: tuple[int, ...]
    label_tv: float | None  # total variation to the other nodes' labels; None: no others
    outlier_score: float | None  # None: no other node (or no feature with a spread)
    duplicates: int  # rows that repeat an earlier row exactly
    constant: bool
    columns: tuple[ColumnSummary, ...]
    flags: tuple[str, ...]


@dataclass(frozen=True)
class SampleReport:
    """The review of one run's uploaded samples."""

    manifest_sha256: str
    kind: str
    input_shape: tuple[int, ...]
    classes: tuple[str, ...]
    features: tuple[str, ...] | None
    outlier_threshold: float
    nodes: tuple[NodeReport, ...]


def label_counts(y: np.ndarray, n_classes: int) -> np.ndarray:
    """How many rows of each class ``y`` holds: int64 [n_classes]."""
    return np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes)[:n_classes]


def total_variation(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """Half the L1 distance between the two count vectors' normalized distributions."""
    p = np.asarray(p_counts, dtype=np.float64)
    q = np.asarray(q_counts, dtype=np.float64)
    return float(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())


def leave_one_out_tv(counts: np.ndarray) -> list[float | None]:
    """Per node (rows of ``counts`` [n, classes]), the total variation to the pooled counts
    of every other node; None when there is no other node."""
    total = counts.sum(axis=0)
    return [total_variation(c, total - c) if len(counts) > 1 else None for c in counts]


def outlier_scores(xs: Sequence[np.ndarray]) -> list[float | None]:
    """Per node, the mean |z| of its values against the other nodes' pooled per-feature mean
    and std (see the module docstring). Uses per-node moments, combined without the node."""
    flat = [np.asarray(x, dtype=np.float64).reshape(len(x), -1) for x in xs]
    sizes = np.array([len(f) for f in flat], dtype=np.float64)
    means = np.stack([f.mean(axis=0) for f in flat])  # [n, D]
    m2 = np.stack([((f - m) ** 2).sum(axis=0) for f, m in zip(flat, means, strict=True)])
    scores: list[float | None] = []
    for j, rows in enumerate(flat):
        others = np.arange(len(flat)) != j
        n_o = sizes[others].sum()
        if n_o == 0:
            scores.append(None)
            continue
        mean_o = (sizes[others, None] * means[others]).sum(axis=0) / n_o
        spread = m2[others] + sizes[others, None] * (means[others] - mean_o) ** 2
        std_o = np.sqrt(spread.sum(axis=0) / n_o)
        keep = std_o > _ZERO_SPREAD * np.maximum(1.0, np.abs(mean_o))
        if not keep.any():
            scores.append(None)
            continue
        z = np.abs(rows[:, keep] - mean_o[keep]) / std_o[keep]
        scores.append(float(z.mean()))
    return scores


def duplicate_rows(x: np.ndarray) -> int:
    """How many rows of ``x`` repeat an earlier row exactly."""
    flat = np.asarray(x).reshape(len(x), -1)
    return len(flat) - len(np.unique(flat, axis=0))


def is_constant(x: np.ndarray) -> bool:
    """Two or more rows, all identical."""
    flat = np.asarray(x).reshape(len(x), -1)
    return len(flat) >= 2 and bool((flat == flat[0]).all())


def column_summaries(x: np.ndarray, names: Sequence[str] | None) -> tuple[ColumnSummary, ...]:
    """Per named feature (a table's columns) or, without names, over all values."""
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if names is None:
        flat, names = flat.reshape(-1, 1), ["all values"]
    stats = (flat.min(axis=0), flat.mean(axis=0), flat.std(axis=0), flat.max(axis=0))
    return tuple(ColumnSummary(name, *(float(s[i]) for s in stats)) for i, name in enumerate(names))


def build_report(samples: SampleSet, threshold: float = OUTLIER_THRESHOLD) -> SampleReport:
    """Every node's figures and flags for the validated ``samples``."""
    nodes = samples.samples
    counts = np.stack([label_counts(s.y, len(samples.classes)) for s in nodes]) if nodes else None
    tvs = leave_one_out_tv(counts) if counts is not None else []
    scores = outlier_scores([s.x for s in nodes]) if nodes else []
    out = []
    for i, s in enumerate(nodes):
        assert counts is not None  # there are nodes
        constant = is_constant(s.x)
        dups = duplicate_rows(s.x)
        flags = []
        score = scores[i]
        if score is not None and score > threshold:
            flags.append("outlier")
        if constant:
            flags.append("constant")
        elif dups:
            flags.append("duplicates")
        out.append(
            NodeReport(
                partition=s.partition,
                node_id=s.node_id,
                attack=s.attack,
                size=len(s.y),
                label_counts=tuple(int(c) for c in counts[i]),
                label_tv=tvs[i],
                outlier_score=scores[i],
                duplicates=dups,
                constant=constant,
                columns=column_summaries(s.x, samples.features),
                flags=tuple(flags),
            )
        )
    return SampleReport(
        manifest_sha256=samples.manifest_sha256,
        kind=samples.kind,
        input_shape=samples.input_shape,
        classes=samples.classes,
        features=samples.features,
        outlier_threshold=threshold,
        nodes=tuple(out),
    )


def report_json(report: SampleReport) -> str:
    """The report as JSON (``report.json``): the dataclasses' fields, tuples as lists."""
    return json.dumps(dataclasses.asdict(report), indent=1, allow_nan=False) + "\n"


def render_markdown(report: SampleReport) -> str:
    """The report as Markdown (``report.md``): a node table, label counts, column summaries."""
    shape = "x".join(map(str, report.input_shape))
    lines = [
        "# Review of the uploaded samples",
        "",
        f"{len(report.nodes)} nodes; {report.kind} samples of shape {shape}, "
        f"{len(report.classes)} classes; manifest sha256 `{report.manifest_sha256}`.",
        "",
        f"Flags: **outlier**: mean |z| against the other nodes' samples above "
        f"{report.outlier_threshold:g}; **constant**: all rows identical; **duplicates**: "
        "rows repeated exactly. Label TV: total variation distance to the other nodes' "
        "labels (large on non-IID data, not flagged).",
        "",
        "| partition | node id | attack | size | outlier score | label TV | duplicates | flags |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in report.nodes:
        lines.append(
            f"| {n.partition} | {_cell(n.node_id)} | {_cell(n.attack)} | {n.size} | "
            f"{_num(n.outlier_score)} | {_num(n.label_tv)} | {n.duplicates} | "
            f"{', '.join(n.flags) or '-'} |"
        )
    lines += ["", "## Label counts", "", _counts_table(report), "", "## Column summaries", ""]
    for n in report.nodes:
        lines += [f"Partition {n.partition}:", "", "| column | min | mean | std | max |"]
        lines.append("|---|---|---|---|---|")
        for c in n.columns:
            lines.append(
                f"| {_cell(c.name)} | {c.min:.4g} | {c.mean:.4g} | {c.std:.4g} | {c.max:.4g} |"
            )
        lines.append("")
    return "\n".join(lines)


def _counts_table(report: SampleReport) -> str:
    head = "| partition | " + " | ".join(_cell(c) for c in report.classes) + " |"
    rule = "|---|" + "---|" * len(report.classes)
    rows = [
        f"| {n.partition} | " + " | ".join(map(str, n.label_counts)) + " |" for n in report.nodes
    ]
    return "\n".join([head, rule, *rows])


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _cell(text: str) -> str:
    """A name as a Markdown table cell (a ``|`` would split the cell)."""
    return text.replace("|", "\\|").replace("\n", " ")
