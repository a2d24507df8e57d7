import os

# Small per-step products gain nothing from BLAS threads, and on a busy 2-core machine
# OpenBLAS's spinning threads slow the suite several-fold; set before numpy is imported.
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

# Property tests check correctness, not speed: on a busy CI machine Hypothesis's default
# 200 ms per-example deadline fails examples that are merely slow.
from hypothesis import settings  # noqa: E402  (after the thread settings above)

settings.register_profile("rnnchar", deadline=None)
settings.load_profile("rnnchar")
