"""Per-coordinate order statistics over the client axis, shared by the median and trimmed-mean
rules. On CPU numpy sorts (several times faster than ``torch.sort`` along the client axis): a
whole sort on one thread is ``np.sort(axis=0)``; a few middle rows (the median), or any rows
when torch has several threads and the input is large, come from blocks of columns transposed
so that each coordinate's n values are one contiguous row, sorted row by row and written back
only where asked (the median of 100 x 199,210 in ``benchmarks/aggregators.py``: 56 -> 42 ms
on one thread, 54 -> 27 ms on two). numpy sorts without the GIL, so the blocks are shared out
over ``torch.get_num_threads()`` threads. Other devices use ``torch.sort``. Sorting is exact:
every route gives the same values."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np
import torch
from torch import Tensor

# Columns per block: a float32 block of 100 clients is 800 KiB, so the transposed copy is still
# in cache when it is sorted and written back (2,048 and 8,192 measured alike).
BLOCK = 2048
# Values per extra thread at least: below it a second thread does not pay, since torch's
# OpenMP workers keep spinning on the cores for some milliseconds after the row check's
# parallel norm (the median of 23 x 7,850: 0.43 ms on one thread, 0.47 ms on two).
PER_THREAD = 1 << 21


def _numpy_ok(x: Tensor) -> bool:
    return x.device.type == "cpu" and not x.requires_grad and x.dtype != torch.bfloat16


@cache
def _pool(pid: int, threads: int) -> ThreadPoolExecutor:
    """One reused pool per process and thread count (threads start once, not per call; a
    forked child gets its own, since the parent's worker threads do not exist in it)."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="diversefl-sort")


def sort_clients(updates: Tensor) -> Tensor:
    """Each coordinate's values in ascending order: ``updates [n, d]`` sorted along dim 0."""
    return sorted_rows(updates, 0, updates.shape[0])


def sorted_rows(updates: Tensor, lo: int, hi: int) -> Tensor:
    """Rows ``lo:hi`` of :func:`sort_clients` (each coordinate's order statistics ``lo`` to
    ``hi - 1``), a contiguous ``[hi - lo, d]`` tensor; on the transposed route the other rows
    are never written back."""
    n, d = updates.shape
    if not 0 <= lo <= hi <= n:
        raise ValueError(f"rows {lo}:{hi} are outside the {n} sorted rows")
    if not _numpy_ok(updates):
        return torch.sort(updates, dim=0).values[lo:hi].contiguous()
    values = updates.numpy()
    starts = range(0, d, BLOCK)
    threads = min(torch.get_num_threads(), len(starts), max(1, values.size // PER_THREAD))
    if threads == 1 and 4 * (hi - lo) > n:  # most rows, one core: numpy's own sort is faster
        return torch.from_numpy(np.sort(values, axis=0)[lo:hi])
    out = np.empty((hi - lo, d), dtype=values.dtype)

    def sort_block(start: int) -> None:
        block = values[:, start : start + BLOCK].T.copy()  # [width, n], never the input
        block.sort(axis=1)
        out[:, start : start + BLOCK] = block[:, lo:hi].T

    if threads > 1:
        pool = _pool(os.getpid(), threads)
        list(pool.map(sort_block, starts))  # list(): wait for every block, re-raise errors
    else:
        for start in starts:
            sort_block(start)
    return torch.from_numpy(out)
