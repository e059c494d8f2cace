"""The models and learning-rate schedules reference: every name of the model and schedule
registries with its docstring, and each model's parameter count on the built-in datasets'
shapes (counted on a freshly built model, so the numbers follow the code)."""

from __future__ import annotations

from refdocs.text import DocsError, cell, code, doc_markdown

SHAPES = (  # (label, input shape, classes): the built-in datasets a model may be used on
    ("MNIST / Fashion-MNIST", (1, 28, 28), 10),
    ("CIFAR-10", (3, 32, 32), 10),
    ("CIFAR-100", (3, 32, 32), 100),
)

INTRO = """\
# Models and schedules

The networks `[model] name` accepts and the learning-rate schedules `[optim] schedule` accepts,
generated from their registries (`diversefl.models.MODELS`,
`diversefl.engine.schedules.SCHEDULES`) when this site is built. Parameter counts are those of
a freshly built model. Your own network: `model.factory`, or `model=` in the Python API
([bring your own data and model](../how-to/own-data.md)); a model that normalises over the
batch (BatchNorm) is refused, since the engine computes every client's gradient in one batched
call, where batch statistics would mix the clients' examples.
"""


def parameter_counts(name: str) -> list[str]:
    """``'7,850 (MNIST / Fashion-MNIST)'`` per shape the model can be built for."""
    from diversefl.models import build_model

    counts = []
    for label, shape, classes in SHAPES:
        try:
            model = build_model(name, shape, classes)
        except (ValueError, RuntimeError):
            continue
        counts.append(f"{sum(p.numel() for p in model.parameters()):,} ({label})")
    return counts


def model_text(name: str) -> list[str]:
    """One model's section."""
    from diversefl.models import MODELS

    doc = doc_markdown(MODELS[name])
    if not doc:
        raise DocsError(f"model {name!r} has no docstring")
    counts = parameter_counts(name)
    lines = [f"### `{name}` {{#{name}}}", "", doc, ""]
    if counts:
        lines += ["Parameters: " + ", ".join(counts) + ".", ""]
    return lines


def models_page() -> str:
    """Every model and schedule."""
    from diversefl.engine.schedules import SCHEDULES
    from diversefl.models import MODELS

    lines = [INTRO, "## Models", ""]
    for name in MODELS.names():
        lines += model_text(name)
    lines += ["## Schedules {#schedules}", "", "| `optim.schedule` | learning rate in round r |"]
    lines += ["|---|---|"]
    for name in SCHEDULES.names():
        doc = doc_markdown(SCHEDULES[name])
        if not doc:
            raise DocsError(f"schedule {name!r} has no docstring")
        lines.append(f"| {code(name)} | {cell(doc)} |")
    return "\n".join(lines) + "\n"
