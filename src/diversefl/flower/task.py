"""What the Flower server knows of a built-in dataset without holding any of its data.

The server builds the model and checks every uploaded sample before it trusts it; for that it
needs the shape of one example, the number of classes and the size of the training split
(which bounds the example ids and shard lengths a node may report). These are public facts of
each dataset, listed here so that the server never loads the training set for them
(``tests/test_flower_server_data.py`` checks them against the loaders).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskFacts:
    """The public shape of one dataset: example shape ``(C, H, W)``, classes, training size."""

    input_shape: tuple[int, ...]
    num_classes: int
    train_size: int


#: The built-in datasets (as :func:`diversefl.data.datasets.load_dataset` splits them).
BUILTIN_TASKS: dict[str, TaskFacts] = {
    "digits": TaskFacts((1, 8, 8), 10, 1437),  # scikit-learn's digits, 80 % train split
    "mnist": TaskFacts((1, 28, 28), 10, 60_000),
    "fashion-mnist": TaskFacts((1, 28, 28), 10, 60_000),
    "cifar10": TaskFacts((3, 32, 32), 10, 50_000),
    "cifar100": TaskFacts((3, 32, 32), 100, 50_000),
}


def task_facts(dataset: str) -> TaskFacts:
    """The facts of ``dataset``, or ValueError naming the datasets the server knows."""
    try:
        return BUILTIN_TASKS[dataset]
    except KeyError:
        raise ValueError(
            f"data.dataset={dataset!r}: the Flower server knows {', '.join(BUILTIN_TASKS)}"
        ) from None
