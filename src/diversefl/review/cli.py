"""``diversefl samples RUN_DIR``: validate the samples a Flower run's nodes uploaded, write a
report (``report.md``, ``report.json``) and one picture per node, print a summary, and with
``--approve`` / ``--reject J`` record the decision the server waits for before training.

Only argparse and pathlib at import time: ``diversefl --help`` must not pay for numpy."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diversefl.review.report import SampleReport

_MAX_COUNTS_WIDTH = 48  # the class-count column of the summary, before it is cut


def add_samples_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``samples`` subcommand on the ``diversefl`` parser."""
    sp = sub.add_parser("samples", help="review the one-time samples a Flower run's nodes uploaded")
    sp.add_argument("run_dir", metavar="RUN_DIR", help="the Flower run's directory")
    sp.add_argument(
        "--out", metavar="DIR", help="report and pictures folder (default RUN_DIR/samples/review)"
    )
    sp.add_argument(
        "--approve",
        action="store_true",
        help="approve every node's sample (writes RUN_DIR/samples/approval.json, which the "
        "server waits for before training)",
    )
    sp.add_argument(
        "--reject",
        action="append",
        type=_partition,
        default=[],
        metavar="J",
        help="reject partition J's node (repeatable); implies --approve of all the others",
    )
    sp.set_defaults(func=cmd_samples)


def cmd_samples(args: argparse.Namespace) -> int:
    """Validate, report, draw, summarize and (with --approve or --reject) approve."""
    from diversefl.review.approval import check_rejected, write_approval
    from diversefl.review.files import atomic_write, samples_dir
    from diversefl.review.report import build_report, render_markdown, report_json
    from diversefl.review.sheets import write_sheets
    from diversefl.review.store import read_samples

    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else samples_dir(run_dir) / "review"
    approve = args.approve or bool(args.reject)
    samples = read_samples(run_dir)  # validates everything, or raises one clear error
    if approve:
        check_rejected(samples.partitions, args.reject)
    report = build_report(samples)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)  # pictures of clients' data
    atomic_write(out / "report.md", render_markdown(report).encode("utf-8"))
    atomic_write(out / "report.json", report_json(report).encode("utf-8"))
    pictures = write_sheets(samples, out)
    print(summary_text(report))
    print(f"report.md, report.json and {len(pictures)} pictures (partition-J.png) in {out}")
    if not approve:
        print(f"to approve: diversefl samples {run_dir} --approve (--reject J excludes node J)")
        return 0
    path = write_approval(run_dir, args.reject, manifest_sha256=samples.manifest_sha256)
    rejected = sorted(set(args.reject))
    approved = [p for p in samples.partitions if p not in rejected]
    print(f"approved partitions {approved}, rejected {rejected}: {path}")
    return 0


def summary_text(report: SampleReport) -> str:
    """A plain-text table: one line per node with its size, class counts and flags."""
    head = ("partition", "node id", "attack", "size", "classes (name:count)", "score", "flags")
    rows = [head]
    for n in report.nodes:
        counts = " ".join(
            f"{name}:{c}" for name, c in zip(report.classes, n.label_counts, strict=True) if c
        )
        if len(counts) > _MAX_COUNTS_WIDTH:
            counts = counts[: _MAX_COUNTS_WIDTH - 3] + "..."
        score = "-" if n.outlier_score is None else f"{n.outlier_score:.2f}"
        flags = ", ".join(n.flags) or "-"
        rows.append((str(n.partition), n.node_id, n.attack, str(n.size), counts, score, flags))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    return "\n".join(lines)


def _partition(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a partition number (an integer >= 0)")
    return value
