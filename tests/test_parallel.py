"""Data parallelism: N workers x B/N rows train exactly like 1 process x B rows.

Local workers run in-process as rank 0 (the test) plus spawned workers; the CLI tests start
`rnnchar train` in subprocesses (Ctrl-C, a killed worker); the MPI tests run real 2-rank
`mpiexec` jobs (mpi4py and mpich come with the dev extra).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_procs import CLI, assert_fails, cli, corpus_file, params_of, run_in_process, start, wait_for

from rnnchar.checkpoint import load_checkpoint
from rnnchar.config import ConfigError, load_config
from rnnchar.datapar import share
from rnnchar.workers import resolve_workers

SMALL = ["model.hidden_sizes=[12, 10]", "model.embed_size=6", "model.dtype=float64", "train.eval_every=10",
         "train.checkpoint_every=5", "train.sample_every=0", "train.clip_norm=1.0", "data.val_fraction=0.1"]
STREAM = ["data.mode=stream", "data.seq_len=8"]
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found: pip install 'rnnchar[mpi]' "
                               "(the dev extra installs it)")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return corpus_file(tmp_path_factory.mktemp("corpus"))


def cfg_of(corpus: Path, *sets: str, steps: int = 20, batch: int = 4):
    return load_config(None, [*SMALL, f"data.corpus={corpus}", f"data.batch_size={batch}",
                              f"train.steps={steps}", *sets])


def assert_close(a: dict, b: dict, rtol: float = 1e-9) -> None:
    assert a.keys() == b.keys()
    for k in a:
        scale = max(float(np.abs(b[k]).max()), 1e-30)
        assert float(np.abs(a[k] - b[k]).max()) <= rtol * scale, (k, float(np.abs(a[k] - b[k]).max()), scale)


def test_share_covers_every_row_once_with_parts_one_row_apart():
    for n in range(1, 12):
        for size in range(1, n + 1):
            parts = [share(n, r, size) for r in range(size)]
            rows = [i for p in parts for i in range(n)[p]]
            sizes = [p.stop - p.start for p in parts]
            assert rows == list(range(n)) and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def _check_collectives(spec, rank: int) -> None:
    """A spawned worker: exit 0 if every collective gives what it should, else 3."""
    from rnnchar.comm import LocalComm

    comm = LocalComm.join(spec, rank)
    sys.exit(0 if _collectives(comm) else 3)


def _collectives(comm) -> bool:
    buf = np.arange(1001, dtype=np.float64) * (comm.rank + 1)  # 1001: chunks of unequal size
    comm.allreduce(buf)
    ok = np.array_equal(buf, np.arange(1001) * sum(range(1, comm.size + 1)))
    small = np.full(3, float(comm.rank), dtype=np.float32)
    comm.broadcast(small, root=comm.size - 1)
    comm.barrier()
    return ok and np.array_equal(small, np.full(3, comm.size - 1, dtype=np.float32))


def test_local_comm_allreduce_broadcast_and_barrier_across_three_processes():
    import multiprocessing

    from rnnchar.comm import LocalComm

    ctx = multiprocessing.get_context("spawn")
    comm = LocalComm.create(ctx, 3, 1001 * 8)
    for rank in (1, 2):
        comm.procs.append(ctx.Process(target=_check_collectives, args=(comm.spec(rank), rank)))
        comm.procs[-1].start()
        comm.started(rank)
    assert _collectives(comm)
    comm.close()
    assert [p.exitcode for p in comm.procs] == [0, 0]


@pytest.mark.parametrize("mode, workers, batch", [("sentences", 2, 4), ("stream", 2, 4), ("sentences", 2, 5),
                                                  ("stream", 3, 5)])
def test_local_workers_train_like_one_process(corpus, tmp_path, mode, workers, batch):
    sets = STREAM if mode == "stream" else []
    one = run_in_process(cfg_of(corpus, *sets, batch=batch), tmp_path / "one", 1)
    many = run_in_process(cfg_of(corpus, *sets, batch=batch), tmp_path / "many", workers)
    assert many.step == one.step == 20
    assert_close(params_of(many), params_of(one))
    assert_close({k: np.asarray(v) for k, v in many.opt.state.items()},
                 {k: np.asarray(v) for k, v in one.opt.state.items()})
    for a, b in zip(many.history, one.history, strict=True):  # validation split across workers
        assert a["val_bpc"] == pytest.approx(b["val_bpc"], rel=1e-9, abs=1e-6)
        assert a["train_bpc"] == pytest.approx(b["train_bpc"], rel=1e-9, abs=1e-6)
    # the checkpoint holds every stream's state in global order: the same file whatever N wrote it
    a, b = load_checkpoint(tmp_path / "many" / "last.npz"), load_checkpoint(tmp_path / "one" / "last.npz")
    assert a.carry.keys() == b.carry.keys() and (mode == "stream") == bool(a.carry)
    assert_close(a.carry, b.carry)


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_resume_with_another_number_of_workers(corpus, tmp_path, first, then):
    whole = run_in_process(cfg_of(corpus, *STREAM), tmp_path / "whole", 1)
    run_in_process(cfg_of(corpus, *STREAM, steps=10), tmp_path / "split", first)
    resumed = run_in_process(cfg_of(corpus, *STREAM), tmp_path / "split", then, resume=True)
    assert resumed.step == 20
    assert_close(params_of(resumed), params_of(whole))


def test_auto_workers_splits_only_batches_worth_it():
    big = load_config(None, ["model.hidden_sizes=[128, 128]", "data.batch_size=32"])
    assert resolve_workers(big, n_params=200_000, n_cores=2) == 2
    assert resolve_workers(big, n_params=200_000, n_cores=1) == 1
    assert resolve_workers(big, n_params=2_000, n_cores=2) == 1  # a tiny model: overhead dominates
    small_batch = load_config(None, ["data.batch_size=4"])  # 4 x 32 x 200k: work enough for one
    assert resolve_workers(small_batch, n_params=200_000, n_cores=8) == 1
    stream = load_config(None, ["data.batch_size=8", "data.mode=stream", "data.seq_len=64"])
    assert resolve_workers(stream, n_params=200_000, n_cores=8) == 4  # 2 rows x 64 x 200k each
    assert resolve_workers(stream, n_params=200_000, n_cores=3) == 3
    stdin = load_config(None, ["data.batch_size=32", "data.corpus=-"])
    assert resolve_workers(stdin, n_params=200_000, n_cores=2) == 1
    with pytest.raises(ConfigError, match="batch of 2 rows"):
        resolve_workers(load_config(None, ["data.batch_size=2", "train.workers=3"]), 1000, 2)


def test_workers_option_rejects_bad_counts(corpus, tmp_path):
    r = cli("train", "--corpus", corpus, "--workers", "0", "--run-dir", tmp_path / "r", cwd=tmp_path)
    assert_fails(r, 2, "train.workers", "auto or a positive integer")
    r = cli("train", "--corpus", corpus, "--workers", "3", "--set", "data.batch_size=2",
            "--run-dir", tmp_path / "r", cwd=tmp_path)
    assert_fails(r, 2, "3 workers cannot share a batch of 2 rows")


def _children(pid: int) -> list[int]:
    """The worker processes of `pid` (not multiprocessing's resource tracker)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(c) for c in path.read_text().split()] if path.exists() else []
    return [k for k in kids if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()]


def _ended(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _long_run(corpus: Path, run_dir: Path, workers: int = 2) -> list[str]:
    sets = [*SMALL, *STREAM, "data.batch_size=4", "train.steps=100000", "train.checkpoint_every=5"]
    return ["train", "--corpus", corpus, "--run-dir", run_dir, "--workers", workers, "--quiet",
            *[a for s in sets for a in ("--set", s)]]


def _start_long_run(corpus: Path, run_dir: Path, cwd: Path) -> tuple[subprocess.Popen, list[int]]:
    """A two-process run started in the background, once its first checkpoint is written: (main, workers)."""
    p = start(*_long_run(corpus, run_dir), cwd=cwd)
    wait_for(run_dir / "last.npz", p)
    return p, _children(p.pid)


def _wait_ended(pids: list[int], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not all(_ended(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc to find the workers")
def test_ctrl_c_stops_every_worker_at_one_step_and_resumes_with_one(corpus, tmp_path):
    run_dir = tmp_path / "r"
    p, workers = _start_long_run(corpus, run_dir, tmp_path)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    stopped = load_checkpoint(run_dir / "last.npz").step
    assert f"interrupted at step {stopped}" in err and "Traceback" not in err, err
    _wait_ended(workers, 10)
    assert workers and all(_ended(w) for w in workers), workers
    # resume with one process to a fixed step == one uninterrupted process
    total = stopped + 4
    sets = [*SMALL, *STREAM, "data.batch_size=4", f"train.steps={total}"]
    r = cli("train", "--corpus", corpus, "--run-dir", run_dir, "--resume", "--workers", "1", "--quiet",
            *[a for s in sets for a in ("--set", s)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    whole = run_in_process(cfg_of(corpus, *STREAM, steps=total), tmp_path / "whole", 1)
    assert_close(load_checkpoint(run_dir / "last.npz").params, params_of(whole))


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc to find the workers")
def test_killed_worker_ends_the_run_with_a_clear_error_and_a_good_checkpoint(corpus, tmp_path):
    run_dir = tmp_path / "r"
    p, (worker,) = _start_long_run(corpus, run_dir, tmp_path)
    os.kill(worker, signal.SIGKILL)
    _, err = p.communicate(timeout=60)  # no hang: bounded by the timeout
    assert p.returncode == 1, err
    assert "worker 1 of 2" in err and "SIGKILL" in err and "without saving" in err, err
    assert "Traceback" not in err and "Warning" not in err, err  # no leaked-semaphore warning either
    assert load_checkpoint(run_dir / "last.npz").step % 5 == 0


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc to find the workers")
def test_workers_end_when_the_main_process_is_killed(corpus, tmp_path):
    run_dir = tmp_path / "r"
    p, (worker,) = _start_long_run(corpus, run_dir, tmp_path)
    p.kill()
    p.communicate(timeout=30)
    _wait_ended([worker], 20)
    assert _ended(worker)


def test_core_and_cli_import_neither_mpi4py_nor_the_parallel_modules():
    code = ("import sys; import rnnchar.mat, rnnchar.fused, rnnchar.graph, rnnchar.optim, rnnchar.cells,"
            " rnnchar.model; bad = {'rnnchar.comm', 'rnnchar.workers', 'mpi4py'} & set(sys.modules);"
            " import rnnchar.cli; bad |= {'mpi4py'} & set(sys.modules);"
            " print(sorted(bad)); sys.exit(bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _mpi(n: int, args: list, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([MPIEXEC, "-n", str(n), *CLI, *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@needs_mpi
@pytest.mark.parametrize("mode", ["sentences", "stream"])
def test_mpi_two_ranks_train_like_one_process_and_resume(corpus, tmp_path, mode):
    sets = [*SMALL, *(STREAM if mode == "stream" else []), "data.batch_size=5"]
    flags = [a for s in sets for a in ("--set", s)]
    r = _mpi(2, ["train", "--corpus", corpus, "--run-dir", tmp_path / "mpi", "--quiet", *flags,
                 "--set", "train.steps=10"], tmp_path)
    assert r.returncode == 0, r.stderr
    r = cli("train", "--corpus", corpus, "--run-dir", tmp_path / "mpi", "--quiet", "--resume", *flags,
            "--set", "train.steps=20", "--workers", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    whole = run_in_process(cfg_of(corpus, *sets, steps=20, batch=5), tmp_path / "whole", 1)
    assert_close(load_checkpoint(tmp_path / "mpi" / "last.npz").params, params_of(whole))
    one = run_in_process(cfg_of(corpus, *sets, steps=10, batch=5), tmp_path / "one", 1)
    mpi_history = load_checkpoint(tmp_path / "mpi" / "last.npz").history
    assert mpi_history[0]["val_bpc"] == pytest.approx(one.history[0]["val_bpc"], rel=1e-9, abs=1e-6)


@needs_mpi
def test_mpi_refuses_local_workers_inside_a_job(corpus, tmp_path):
    r = _mpi(2, ["train", "--corpus", corpus, "--run-dir", tmp_path / "r", "--workers", "2"], tmp_path)
    assert r.returncode == 2, r.stderr
    assert "each of the 2 ranks is one worker" in r.stderr and "Traceback" not in r.stderr, r.stderr


@needs_mpi
def test_mpi_ctrl_c_stops_both_ranks_and_rank_0_saves(corpus, tmp_path):
    run_dir = tmp_path / "r"
    p = subprocess.Popen([MPIEXEC, "-n", "2", *CLI, *map(str, _long_run(corpus, run_dir, workers=1))],
                         cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(run_dir / "last.npz", p)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    stopped = load_checkpoint(run_dir / "last.npz").step
    assert err.count(f"interrupted at step {stopped}") == 1 and "Traceback" not in err, err


def test_divergence_is_seen_by_every_worker_at_once(corpus, tmp_path):
    sets = ["train.lr=1e30", "train.clip=0", "model.dtype=float32", "data.batch_size=4", "train.steps=50"]
    r = cli("train", "--corpus", corpus, "--run-dir", tmp_path / "r", "--workers", "2", "--quiet",
            *[a for s in sets for a in ("--set", s)], cwd=tmp_path, timeout=60)
    assert_fails(r, 1, "non-finite", "train.lr", "no checkpoint was written")
    assert "worker" not in r.stderr, r.stderr  # the workers stop together: none is reported lost


@needs_mpi
def test_mpi_rank_0_refusing_to_start_ends_every_rank(corpus, tmp_path):
    run_dir = tmp_path / "r"
    run_in_process(cfg_of(corpus, steps=2), run_dir, 1)  # a checkpoint is there: no --resume, refused
    flags = [a for s in SMALL for a in ("--set", s)]
    r = _mpi(2, ["train", "--corpus", corpus, "--run-dir", run_dir, *flags], tmp_path, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "already holds a run" in r.stderr and "rank 0 could not start the run" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
