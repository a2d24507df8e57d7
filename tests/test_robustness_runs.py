"""Run directories: never overwritten silently, left as they were by a failed start, locked for real.

Each case runs the real CLI in a subprocess (or CliRunner for pure argument checks) and checks
the exit code, the message and that the files already in the run directory are untouched.
"""

from __future__ import annotations

import os
import shutil
import signal

import pytest
from cli_procs import (
    TINY,
    assert_fails,
    assert_ok,
    cli,
    invoke,
    run_many,
    start,
    trained_run,
    wait_for,
)

from rnnchar.checkpoint import load_checkpoint
from rnnchar.runs import nothing_to_resume

LONG = ["--set", "train.steps=1000000", "--set", "train.eval_every=20", "--set", "train.checkpoint_every=20"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The tiny corpus and one finished run in `good/` (last.npz, best.npz, metrics.jsonl, config.yaml)."""
    return trained_run(tmp_path_factory.mktemp("runs"))


def _train(*extra, run_dir):
    return ["train", "--corpus", "c.txt", *TINY, *extra, "--run-dir", run_dir]


def _snapshot(run_dir):
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}


def _copy_run(work, name, keep):
    """A copy of the good run holding only the files in `keep` (as a run killed early leaves)."""
    shutil.copytree(work / "good", work / name)
    for p in (work / name).iterdir():
        if p.name not in keep:
            p.unlink()
    return _snapshot(work / name)


def test_best_or_metrics_without_last_is_a_run_that_is_not_overwritten(work):
    """kill -9 after the first evaluation, before the first last.npz: running again must not erase it."""
    before = {"killed": _copy_run(work, "killed", {"best.npz", "metrics.jsonl"}),
              "metrics-only": _copy_run(work, "metrics-only", {"metrics.jsonl"})}
    r = run_many({name: _train(run_dir=name) for name in before}, work)
    assert_fails(r["killed"], 1, "already holds a run (best.npz, metrics.jsonl)", "--resume", "--overwrite")
    assert_fails(r["metrics-only"], 1, "already holds a run (metrics.jsonl)")
    for name, files in before.items():
        assert _snapshot(work / name) == files


@pytest.mark.parametrize("held, says", [
    ((), "last.npz does not exist; pass --overwrite"),
    (("metrics.jsonl",), "r holds only metrics.jsonl); pass --overwrite"),
    (("best.npz", "metrics.jsonl"), "r holds best.npz and metrics.jsonl (a run stopped before"),
    (("best.npz",), "r holds best.npz (a run stopped before"),
])
def test_nothing_to_resume_names_what_the_directory_holds(tmp_path, held, says):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "last.npz").symlink_to(tmp_path / "gone.npz")  # dangling: no last.npz to resume
    for name in held:
        (run_dir / name).write_text("x")
    assert says in str(nothing_to_resume(run_dir))


def test_resume_without_last_but_with_best_says_what_to_do(work):
    before = _copy_run(work, "best-only", {"best.npz", "metrics.jsonl"})
    r = cli(*_train("--resume", "--set", "train.steps=5", run_dir="best-only"), cwd=work)
    assert_fails(r, 1, "best-only/last.npz does not exist", "holds best.npz and metrics.jsonl",
                 "copy best-only/best.npz", "--overwrite")
    assert _snapshot(work / "best-only") == before
    shutil.copy(work / "best-only/best.npz", work / "best-only/last.npz")  # the advice works
    assert_ok(cli(*_train("--resume", "--set", "train.steps=5", run_dir="best-only"), cwd=work))
    assert load_checkpoint(work / "best-only/last.npz").step == 5


@pytest.mark.parametrize("in_the_way", ["last.npz", "metrics.jsonl"])
def test_failed_overwrite_leaves_the_run_as_it_was(work, in_the_way):
    name = f"dir-{in_the_way}"
    before = _copy_run(work, name, {"best.npz", "metrics.jsonl", "config.yaml", "last.npz"} - {in_the_way})
    (work / name / in_the_way).mkdir()
    r = cli(*_train("--overwrite", "--set", "train.steps=5", "--set", "model.embed_size=3", run_dir=name),
            cwd=work)
    assert_fails(r, 1, f"{in_the_way} is a directory", "nothing in the run directory was changed")
    assert _snapshot(work / name) == before
    assert sorted(p.name for p in (work / name).iterdir()) == sorted([*before, in_the_way])


def test_run_dir_naming_a_file_is_a_bad_invocation(work):
    (work / "afile").write_text("not a directory\n")
    for run_dir, fragment in ((work / "afile", "afile is a file"), (work / "afile/run", "which is a file")):
        r = invoke(*_train(run_dir=run_dir))
        assert_fails(r, 2, "--run-dir", fragment)
    assert (work / "afile").read_text() == "not a directory\n"


def test_dangling_npz_links_under_runs_are_skipped(work, tmp_path):
    shutil.copytree(work / "good", tmp_path / "runs/good")
    (tmp_path / "runs/broken").mkdir()
    os.symlink(tmp_path / "nowhere.npz", tmp_path / "runs/broken/best.npz")
    os.symlink(tmp_path / "nowhere.npz", tmp_path / "runs/good/old.npz")
    os.symlink(tmp_path / "nowhere", tmp_path / "runs/gone")
    r = cli("sample", "-n", "2", "--seed", "1", cwd=tmp_path)
    assert_ok(r)
    assert len(r.stdout.splitlines()) == 2


def test_no_best_npz_is_claimed_without_a_validation_split(work):
    args = [a for a in _train("--set", "data.val_fraction=0", run_dir="noval") if a != "--quiet"]
    r = cli(*args, cwd=work)
    assert_ok(r)
    assert "no validation score (data.val_fraction=0.0), so no best.npz" in r.stderr, r.stderr
    assert "best validation" not in r.stderr and not (work / "noval/best.npz").exists()


def test_lock_holds_though_the_lock_file_is_deleted_and_none_is_left(work):
    first = start(*_train(*LONG, run_dir="locked"), cwd=work)
    try:
        wait_for(work / "locked/last.npz", first)
        (work / "locked/.lock").unlink()  # a user "cleaning up" a lock that looks stale
        r = run_many({flag: _train(flag, run_dir="locked") for flag in ("--overwrite", "--resume")}, work)
        assert first.poll() is None  # still training
        for res in r.values():
            assert_fails(res, 1, "another training", "locked", "--run-dir")
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
    assert first.returncode == 130, err
    assert load_checkpoint(work / "locked/last.npz").step >= 20  # the first run's work survived
    assert not (work / "locked/.lock").exists() and not (work / "good/.lock").exists()
