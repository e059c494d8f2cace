"""Data loading, downloading and federated partitioning."""

from .datasets import (
    CHECKSUMS,
    DATA_ENV_VAR,
    DATASETS,
    DataError,
    Dataset,
    clear_cache,
    load_cifar,
    load_dataset,
    read_idx,
    resolve_data_dir,
)
from .fetch import FETCH_SOURCES, fetch
from .partition import PARTITIONS, owners_of_class, partition

__all__ = [
    "CHECKSUMS",
    "DATASETS",
    "DATA_ENV_VAR",
    "FETCH_SOURCES",
    "PARTITIONS",
    "DataError",
    "Dataset",
    "clear_cache",
    "fetch",
    "load_cifar",
    "load_dataset",
    "owners_of_class",
    "partition",
    "read_idx",
    "resolve_data_dir",
]
