"""Keep freed tensor memory in the process instead of handing it back to the OS every round.

glibc's malloc serves blocks above its mmap threshold (at most 32 MiB, adjusted on the fly)
with fresh ``mmap`` pages and unmaps them on free, so a tensor of that size allocated every
round is page-faulted in anew every round. On the 2-core VMs this project runs on, those
faults cost more than the arithmetic: the float64 copies of the ``[23, 199,210]`` MLP updates
in the geometric median (37 MB each) took ~9 ns per entry to allocate and fill instead of
~2, and whole MLP rounds ran 25-50% slower (``benchmarks/allocator.py``). Raising the mmap and
trim thresholds makes such blocks come from, and go back to, the reusable heap. Arithmetic is
unchanged; the cost is that the process keeps its peak heap until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV_VAR = "DIVERSEFL_RETAIN_MEMORY"  # "0" leaves malloc's defaults alone
THRESHOLD = 1 << 30  # 1 GiB: blocks below it come from the heap, and the heap is kept
_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
_M_MMAP_THRESHOLD = -3

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to :data:`THRESHOLD` for this process, once.

    Returns True when the setting is in force; False where it does not apply (not Linux,
    not glibc, ``DIVERSEFL_RETAIN_MEMORY=0``) or ``mallopt`` refused it.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV_VAR, "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, THRESHOLD) == 1
    ok_trim = mallopt(_M_TRIM_THRESHOLD, THRESHOLD) == 1
    _applied = ok_mmap and ok_trim
    return _applied
