"""Data-parallel training around one Trainer: local worker processes, or the ranks of an mpiexec job.

    cfg = load_config(None, ["train.workers=2"])
    trainer = open_trainer(cfg, Path("runs/x"), resume=False)
    job = join_mpi_job(cfg)                       # None unless this process runs under mpiexec -n N > 1
    with data_parallel(trainer, resume=False, job=job):  # starts train.workers - 1 local workers
        train(trainer, quiet=True)

Rank 0 is the writer: it holds the run lock, writes checkpoints, metrics and
logs and shows progress. The others compute their rows of every batch and
are quiet. Local workers are started with the "spawn" method after rank 0
has opened the run (so the id cache exists and they only map it), each with
one BLAS thread; they ignore Ctrl-C and SIGTERM (rank 0 stops them at a step
boundary) and end by themselves if rank 0 disappears.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .comm import LocalComm, MPIComm, WorkerLost, mpi_job_size
from .config import Config, ConfigError, config_from_dict, config_to_dict
from .train import Trainer, TrainingDiverged, open_trainer, train

log = logging.getLogger("rnnchar")
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# auto: each worker gets at least AUTO_MIN_ROWS rows and AUTO_MIN_WORK rows x characters x parameters
# per step. Measured forward+backward of the small LSTM (200k parameters, T = 64) at batch 32/16/8/4/2/1:
# 51/26/13/7.6/5.2/3.6 ms, i.e. ~3 ms of per-step work every worker repeats plus ~1.5 ms per row,
# against ~1.4 ms to pack, sum and unpack its 0.97 MB of gradients: two rows per worker (2.6e7) win
# ~1.15x (7.6 vs 5.2 + 1.4 ms); a model of a few thousand parameters never does (its step is all
# per-step Python work).
AUTO_MIN_ROWS = 2
AUTO_MIN_WORK = 2.5e7
SENTENCE_T = 32  # the typical sentence length assumed for sentence mode


def _cgroup_cpu_quota() -> int | None:
    """Whole cores a container's CPU quota allows (cgroup v2 cpu.max), or None without a quota."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return max(1, int(quota) // int(period)) if quota != "max" else None
    except (OSError, ValueError):
        return None


def cores() -> int:
    """Cores this process may use that other work is not already using (1-minute load average).

    Workers advance in lockstep, so a step waits for the slowest: on a machine whose cores are
    busy with other work a second worker made steps slower, not faster (measured: 0.67-0.77x
    at a load of 6-11 on 2 cores), so `auto` counts only the cores left idle."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = min(n, _cgroup_cpu_quota() or n)
    try:
        busy = max(0, round(os.getloadavg()[0]) - 1)  # this process's own start counts as one
    except OSError:
        busy = 0
    return max(1, n - busy)


def auto_workers(cfg: Config, n_params: int, n_cores: int) -> int:
    """How many local workers `train.workers: auto` starts (see AUTO_MIN_ROWS, AUTO_MIN_WORK)."""
    B, T = cfg.data.batch_size, cfg.data.seq_len if cfg.data.mode == "stream" else SENTENCE_T
    if cfg.data.corpus == "-":
        return 1
    return max(1, min(n_cores, B // AUTO_MIN_ROWS, int(B * T * n_params // AUTO_MIN_WORK)))


def resolve_workers(cfg: Config, n_params: int, n_cores: int | None = None) -> int:
    """train.workers as a number of local processes; ConfigError for a count that cannot work."""
    w, B = cfg.train.workers, cfg.data.batch_size
    if w == "auto":
        return auto_workers(cfg, n_params, n_cores or cores())
    if w > B:
        raise ConfigError(f"train.workers: {w} workers cannot share a batch of {B} rows "
                          "(data.batch_size): each needs at least one row")
    if w > 1 and cfg.data.corpus == "-":
        raise ConfigError("train.workers: worker processes cannot share a corpus read from stdin "
                          "(--corpus -); save it to a file or use train.workers=1")
    return w


# -- BLAS threads --------------------------------------------------------------------

def _openblas_calls():
    """(get, set) of the OpenBLAS NumPy loaded, or None (another BLAS, or not Linux)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return None
    for path in sorted(paths):
        lib = ctypes.CDLL(path)
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                get, put = (getattr(lib, f"{prefix}_{w}_num_threads{suffix}", None) for w in ("get", "set"))
                if get is not None and put is not None:
                    return get, put
    return None


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """This process and the processes it starts use one BLAS thread (each worker has its core)."""
    old_env = {k: os.environ.get(k) for k in BLAS_ENV}
    os.environ.update(dict.fromkeys(BLAS_ENV, "1"))  # inherited by spawned workers before numpy loads
    calls = _openblas_calls()
    before = calls[0]() if calls else None
    if calls:
        calls[1](1)
    try:
        yield
    finally:
        if calls:
            calls[1](before)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- local workers -------------------------------------------------------------------------

def _worker_main(cfg_dict: dict, run_dir: str, resume: bool, init_from: str | None, rank: int,
                 spec: tuple) -> None:
    """A local worker: open the run as rank 0 did, take part in every step, write nothing."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    logging.getLogger("rnnchar").setLevel(logging.CRITICAL)
    # tqdm's default lock is a multiprocessing semaphore, registered with the resource tracker the
    # workers share with rank 0: a killed worker would leave a "leaked semaphore" warning behind
    tqdm.set_lock(threading.RLock())
    comm = LocalComm.join(spec, rank)
    try:
        trainer = open_trainer(config_from_dict(cfg_dict), Path(run_dir), resume, writer=False,
                               init_from=Path(init_from) if init_from else None)
        trainer.attach(comm)
        with np.errstate(all="ignore"):
            train(trainer, quiet=True)
    except (WorkerLost, TrainingDiverged):  # rank 0 saw the same and says so
        sys.exit(1)
    except Exception as err:  # noqa: BLE001 - rank 0 reports that this worker ended; the reason is here
        sys.stderr.write(f"rnnchar: worker {rank}: {err}\n")
        sys.exit(1)


def _capacity(trainer: Trainer) -> int:
    """Bytes the largest collective needs: the gradients (+ scalars) or the gathered stream state."""
    state = sum(a.size for s in trainer.model.zero_state(trainer.cfg.data.batch_size) for a in s)
    return 8 * max(trainer.model.n_params() + 3, state, 2)


@contextmanager
def local_workers(trainer: Trainer, n: int, resume: bool, init_from: Path | None = None
                  ) -> Iterator[LocalComm]:
    """Start n - 1 worker processes that open the run as this one did; this one becomes rank 0 of n."""
    ctx = multiprocessing.get_context("spawn")
    comm = LocalComm.create(ctx, n, _capacity(trainer))
    ok = False
    with one_blas_thread():
        try:
            for rank in range(1, n):
                p = ctx.Process(target=_worker_main, name=f"rnnchar-worker-{rank}", daemon=True,
                                args=(config_to_dict(trainer.cfg), str(trainer.run_dir), resume,
                                      init_from and str(init_from), rank, comm.spec(rank)))
                p.start()
                comm.procs.append(p)
                comm.started(rank)
            trainer.attach(comm)
            yield comm
            ok = True
        finally:
            comm.close(ok)


# -- MPI -------------------------------------------------------------------------------------

def join_mpi_job(cfg: Config) -> MPIComm | None:
    """This process's place in an mpiexec job of more than one rank, else None (train.workers checked
    before anything is opened)."""
    size = mpi_job_size()
    if size <= 1:
        resolve_workers(cfg, n_params=0, n_cores=1)
        return None
    if cfg.train.workers not in ("auto", 1):
        raise ConfigError(f"train.workers: under mpiexec each of the {size} ranks is one worker; set "
                          "train.workers to 1 or auto (or start more ranks: mpiexec -n N)")
    if size > cfg.data.batch_size:
        raise ConfigError(f"mpiexec -n {size}: {size} ranks cannot share a batch of {cfg.data.batch_size} "
                          "rows (data.batch_size): each needs at least one row")
    return MPIComm()


@contextmanager
def writer_setup(job: MPIComm | None) -> Iterator[None]:
    """Rank 0 opens the run first (lock, checks, id cache); then tells the other ranks how it went."""
    flag = np.zeros(1)
    try:
        yield
    except BaseException:
        if job is not None:
            flag[0] = 1
            job.broadcast(flag)
        raise
    if job is not None:
        job.broadcast(flag)


def _failures(job: MPIComm, failed: bool) -> int:
    """How many ranks could not open the run (every rank asks once, after opening)."""
    flag = np.array([float(failed)])
    job.allreduce(flag)
    return int(flag[0])


def open_as_worker(job: MPIComm, cfg: Config, run_dir: Path, resume: bool, **how) -> Trainer:
    """A rank > 0: wait for rank 0 to open the run, then open it the same way without writing."""
    flag = np.zeros(1)
    job.broadcast(flag)
    if flag[0]:
        raise WorkerLost(f"rank {job.rank}: rank 0 could not start the run (its message says why)")
    try:
        trainer = open_trainer(cfg, run_dir, resume, writer=False, **how)  # more, init_from
    except BaseException:
        _failures(job, True)
        raise
    if _failures(job, False):
        raise WorkerLost(f"rank {job.rank}: another rank could not open the run (its message says why)")
    return trainer


@contextmanager
def data_parallel(trainer: Trainer, job: MPIComm | None, resume: bool = False,
                  init_from: Path | None = None) -> Iterator[None]:
    """Train as part of the mpiexec job, with train.workers local processes, or alone. `resume` and
    `init_from` say how the run was opened, for local workers to open it the same way."""
    if job is not None:
        if job.rank == 0 and _failures(job, False):
            raise WorkerLost("another rank could not open the run (its message says why)")
        shared = int(os.environ.get("MPI_LOCALNRANKS") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or 1)
        try:
            with one_blas_thread() if shared > 1 else nullcontext():  # ranks sharing this machine's cores
                trainer.attach(job)
                yield
        except TrainingDiverged:  # every rank sees the same reduced loss and ends by itself
            raise
        except BaseException as err:  # seen by this rank only: the others would wait forever
            sys.stderr.write(f"rnnchar: rank {job.rank}: {err or type(err).__name__}; ending the job\n")
            sys.stderr.flush()
            job.abort(1)
        return
    n = resolve_workers(trainer.cfg, trainer.model.n_params())
    if n == 1:
        yield
        return
    log.info("training with %d worker processes (train.workers=%s; --workers 1 for one)", n,
             trainer.cfg.train.workers)
    with local_workers(trainer, n, resume, init_from):
        yield
