import os

import pytest

# Small per-step products gain nothing from BLAS threads, and on a busy 2-core machine
# OpenBLAS's spinning threads slow the suite several-fold; set before numpy is imported.
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

# Property tests check correctness, not speed: on a busy CI machine Hypothesis's default
# 200 ms per-example deadline fails examples that are merely slow.
from hypothesis import settings  # noqa: E402  (after the thread settings above)

settings.register_profile("rnnchar", deadline=None)
settings.load_profile("rnnchar")


@pytest.fixture
def ctrl_c_right_after_create(monkeypatch):
    """os.open creates the file, then a Ctrl-C lands before the caller learns its name (a handler
    queued just before the signals were held runs at the next bytecode, inside the creating call)."""
    real_open = os.open

    def open_then_interrupt(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        if flags & os.O_CREAT:
            os.close(fd)
            raise KeyboardInterrupt
        return fd

    monkeypatch.setattr(os, "open", open_then_interrupt)
