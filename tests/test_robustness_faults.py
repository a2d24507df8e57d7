"""Signals and faults during training never lose the last good checkpoint.

Ctrl-C and SIGTERM save and exit 130; kill -9 leaves the previous checkpoint loadable; an
unusable run directory, a full disk, a second training in the same run directory and a
diverging loss each end with exit 1 and one clear message. All in real processes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from cli_procs import (
    CLI,
    CORPUS_TEXT,
    TINY,
    assert_fails,
    assert_ok,
    cli,
    run_many,
    start,
    temp_files,
    wait_for,
)

from rnnchar.checkpoint import load_checkpoint

LONG = ["--set", "train.steps=1000000", "--set", "train.eval_every=20", "--set", "train.checkpoint_every=20"]


@pytest.fixture
def work(tmp_path):
    (tmp_path / "c.txt").write_text(CORPUS_TEXT, encoding="utf-8")
    return tmp_path


def _train(*extra, run_dir="run"):
    return ["train", "--corpus", "c.txt", *TINY, *extra, "--run-dir", run_dir]


def _stop(proc, *signals, gap=0.0) -> tuple[int, str]:
    for sig in signals:
        proc.send_signal(sig)
        time.sleep(gap)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_saves_exits_130_and_resume_continues(work, sig):
    proc = start(*_train(*LONG), cwd=work)
    wait_for(work / "run/last.npz", proc)
    time.sleep(0.3)
    code, err = _stop(proc, sig)
    assert code == 130 and "interrupted at step" in err and "--resume" in err, err
    assert "Traceback" not in err
    ckpt = load_checkpoint(work / "run/last.npz")
    assert ckpt.step > 20 and f"interrupted at step {ckpt.step}" in err
    steps = [r["step"] for r in ckpt.history]
    assert steps == list(range(20, ckpt.step + 1, 20))  # metrics only as of the checkpoint
    assert temp_files(work / "run") == []
    r = cli(*_train("--resume", "--set", f"train.steps={ckpt.step + 5}"), cwd=work)
    assert_ok(r)
    assert load_checkpoint(work / "run/last.npz").step == ckpt.step + 5


def test_second_ctrl_c_aborts_at_once_keeping_a_good_checkpoint(work):
    proc = start(*_train(*LONG, "--set", "train.checkpoint_every=1"), cwd=work)
    wait_for(work / "run/last.npz", proc)
    code, err = _stop(proc, signal.SIGINT, signal.SIGINT, gap=0.001)
    assert code == 130 and "Traceback" not in err, err
    assert load_checkpoint(work / "run/last.npz").step > 0
    assert temp_files(work / "run") == []


def test_kill_9_leaves_the_previous_checkpoint_loadable(work):
    procs = {d: start(*_train(*LONG, "--set", "train.checkpoint_every=1", run_dir=d), cwd=work)
             for d in ("k0", "k1", "k2")}
    for i, (d, proc) in enumerate(procs.items()):  # three moments: saving every step, so often mid-write
        wait_for(work / d / "last.npz", proc)
        time.sleep(0.05 + 0.2 * i)
        proc.kill()
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        assert load_checkpoint(work / d / "last.npz").step > 0
    (work / "k2/.last.npz.x7q2.tmp").write_bytes(b"PK half")  # as a kill -9 mid-write leaves
    r = cli(*_train("--resume", "--set", "train.steps=1", run_dir="k2"), cwd=work)  # nothing to do
    assert_ok(r)
    assert temp_files(work / "k2") == []  # a resumed run sweeps half-written files away


def test_unusable_run_directory_exit_1(work):
    """A run directory that cannot be created (a --run-dir naming a file is exit 2: test_robustness_runs)."""
    (work / "runs").write_text("I am a file\n")  # the default runs/<name> cannot be made
    r = run_many({"under-file": ["train", "--corpus", "c.txt", *TINY],
                  "proc": _train(run_dir="/proc/rnnchar")}, work)
    assert_fails(r["under-file"], 1, "runs/default", "run directory", "a file is in the way", "--run-dir")
    assert_fails(r["proc"], 1, "/proc/rnnchar", "run directory", "--run-dir")


DISK_FULL = """
import errno, os, sys
import numpy as np
real_replace = os.replace
def full(*args, **kw):
    if {where!r} == "savez":  # a partial write first, as a real full disk does
        args[0].write(b"PK partial")
    elif not str(args[1]).endswith(".npz"):  # config.yaml, metrics.jsonl: the disk fills later
        return real_replace(*args, **kw)
    raise OSError(errno.ENOSPC, "No space left on device")
if {where!r} == "savez":
    np.savez = full
else:
    os.replace = full
from rnnchar.cli import main
sys.argv[0] = "rnnchar"
main()
"""


@pytest.mark.parametrize("where", ["savez", "replace"])
def test_full_disk_keeps_the_previous_checkpoint(work, where):
    assert_ok(cli(*_train(), cwd=work))
    before = (work / "run/last.npz").read_bytes()
    args = _train("--resume", "--set", "train.steps=6")
    r = subprocess.run([sys.executable, "-c", DISK_FULL.format(where=where), *args], cwd=work,
                       capture_output=True, text=True, timeout=60)
    assert_fails(r, 1, "could not write checkpoint", "No space left on device", "untouched")
    assert (work / "run/last.npz").read_bytes() == before
    assert temp_files(work / "run") == []


def test_second_training_in_the_same_run_directory_is_refused(work):
    first = start(*_train(*LONG), cwd=work)
    wait_for(work / "run/last.npz", first)
    r = run_many({flag: _train(flag) for flag in ("--overwrite", "--resume", "-q")}, work)  # -q: neither
    assert first.poll() is None  # still training
    for res in r.values():
        assert_fails(res, 1, "another training", f"pid {first.pid}", "--run-dir")
    code, err = _stop(first, signal.SIGINT)
    assert code == 130, err
    assert load_checkpoint(work / "run/last.npz").step > 20  # the first run's work survived --overwrite


EXPLODE = ["--set", "train.lr=1e30", "--set", "train.clip=0", "--set", "model.dtype=float32"]


def test_divergence_stops_with_advice_and_never_saves_nan(work):
    r = cli(*_train(*EXPLODE, "--set", "train.steps=50", run_dir="fresh"), cwd=work)
    assert_fails(r, 1, "non-finite", "train.lr", "train.clip", "no checkpoint was written")
    assert not (work / "fresh/last.npz").exists()
    assert_ok(cli(*_train("--set", "train.steps=5"), cwd=work))
    good = load_checkpoint(work / "run/last.npz")
    every_step = ["--set", "train.steps=50", "--set", "train.checkpoint_every=1"]
    r = cli(*_train(*EXPLODE, *every_step, "--resume"), cwd=work)
    assert_fails(r, 1, "non-finite", "lower train.lr (now 1e+30)", "last good checkpoint")
    after = load_checkpoint(work / "run/last.npz")  # refuses NaN or inf, so loading is the check
    assert after.step >= good.step and all(np.isfinite(w).all() for w in after.params.values())
    assert temp_files(work / "run") == []


def test_closed_stderr_does_not_stop_training(work):
    """`rnnchar train 2>&1 | head -1`: the logs are lost, the training is not."""
    verbose = [a for a in TINY if a != "--quiet"]
    args = ["train", "--corpus", "c.txt", *verbose, "--set", "train.steps=300", "--set", "train.eval_every=9"]
    proc = subprocess.Popen([*CLI, *args], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    head = subprocess.run(["head", "-1"], stdin=proc.stdout, capture_output=True, timeout=60)
    proc.stdout.close()
    proc.wait(timeout=60)
    assert head.stdout.startswith(b"config:")
    assert proc.returncode == 0
    assert load_checkpoint(work / "runs/default/last.npz").step == 300
