"""The server's side of the sample review: the samples it trains against, written for an
expert to check (``RUN_DIR/samples``, read by ``diversefl samples RUN_DIR``)."""

from __future__ import annotations

from pathlib import Path

from diversefl.flower.samples import Roster
from diversefl.flower.schema import Schema
from diversefl.flower.task import TaskFacts
from diversefl.review.store import StoredSample, read_manifest, write_samples


def store_samples(out: Path, roster: Roster, facts: TaskFacts | None, schema: Schema | None) -> str:
    """Write every held partition's sample (partition, node id, examples, labels, declared
    attack) to ``out/samples``; returns the manifest's digest."""
    if facts is None:
        raise RuntimeError("store_samples: the task's shape is not known yet")
    samples = [
        StoredSample(
            partition=j,
            node_id=str(s.node_id),
            x=s.x.numpy(),
            y=s.y.numpy(),
            attack=s.attack,
        )
        for j, s in sorted(roster.held.items())
    ]
    if schema is not None:
        classes, features = list(schema.classes), list(schema.features) or None
    else:
        classes, features = [str(c) for c in range(facts.num_classes)], None
    write_samples(
        out, samples, classes=classes, features=features, input_shape=list(facts.input_shape)
    )
    return read_manifest(out)[1]


def sample_digests(out: Path) -> dict[str, str]:
    """Each stored partition's sample file digest (sha256), by partition."""
    manifest, _ = read_manifest(out)
    return {str(node.partition): node.sha256 for node in manifest.nodes}
