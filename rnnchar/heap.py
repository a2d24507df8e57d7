"""Keep freed memory in the process for reuse, so a training step does not page-fault its arrays in anew.

    from rnnchar.heap import keep_freed_memory
    keep_freed_memory()   # once per process, before training: True where the C library allows it

A training step allocates tens of MB of temporaries (gate activations, their
derivatives, products) and frees them before the next step. glibc serves a
block above its mmap threshold (128 KiB at first, rising only to what was last
freed) from a fresh mapping and unmaps it on free, and it trims freed memory at
the top of the heap back to the kernel; either way the next step faults every
page in again and the kernel zeroes it. Measured on the small LSTM (embed 64,
[128, 128], batch 32, seq 64): 5,600 page faults and ~15 ms of kernel time in a
~55 ms step; with the thresholds raised, 40 faults and 42 ms a step (README,
"Performance"). Blocks over glibc's largest mmap threshold (32 MiB: a [512,
512] layer's gates) would still be mapped afresh, so mmap is not used for
blocks at all (M_MMAP_MAX 0: they come from the heap; glibc still maps more
heap if it cannot grow it): 3-5% on that model. The cost is that the process
keeps up to TRIM_BYTES of freed memory resident instead of returning it, which
a training run reuses anyway.

Only glibc has `mallopt`; elsewhere (musl, macOS) this does nothing and says so.
Imports the standard library only.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc's <malloc.h> parameter numbers
MMAP_BYTES = 32 * 2**20   # glibc's largest allowed mmap threshold on 64-bit systems
TRIM_BYTES = 256 * 2**20  # free memory kept at the top of the heap before any is returned

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds and stop it mapping blocks of their own, for this process
    (idempotent); False where unsupported."""
    global _done
    if _done is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # no C library by that name, or one without mallopt
            _done = False
        else:
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            _done = all([mallopt(M_MMAP_THRESHOLD, MMAP_BYTES), mallopt(M_TRIM_THRESHOLD, TRIM_BYTES),
                         mallopt(M_MMAP_MAX, 0)])
    return _done
