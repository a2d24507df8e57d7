"""heap.keep_freed_memory: freed arrays stay mapped, so allocating them again costs no page faults."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rnnchar import heap

# Allocates and frees an 8 MiB and a 40 MiB array (over glibc's largest mmap threshold) 20 times,
# touching every page, and prints the page faults taken.
PROBE = """
import resource, sys
import numpy as np
from rnnchar.heap import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
sizes = (2**21, 10 * 2**20)
for n in sizes:
    a = np.ones(n, np.float32); del a  # the first allocation faults in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    for n in sizes:
        a = np.ones(n, np.float32)
        del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_freed_arrays_are_reused_without_page_faults():
    plain, kept = _faults("plain"), _faults("keep")
    # 48 MiB is 12,288 pages of 4 KiB, or 24 huge pages where NumPy's madvise gets them: faulted in
    # anew each time, at least one fault per huge page
    assert plain >= 20 * 24, plain
    assert kept * 10 < plain, (kept, plain)  # the same block, still mapped, every time


def test_keep_freed_memory_is_idempotent():
    first = heap.keep_freed_memory()
    assert heap.keep_freed_memory() is first
