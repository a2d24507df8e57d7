"""Input, output and the id cache under attack: full disks, signals, closed streams, endless files.

Most tests drive the real CLI in a subprocess (exit codes, signals and file descriptors exactly
as a shell user sees them) and fails on the code before the fix it guards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from cli_procs import (
    CLI,
    CORPUS_TEXT,
    STREAM,
    TINY,
    assert_fails,
    assert_ok,
    cli,
    run_limited,
    start,
    trained_run,
)

from rnnchar import idcache
from rnnchar.checkpoint import load_checkpoint
from rnnchar.data import DataError


@pytest.fixture
def work(tmp_path):
    (tmp_path / "c.txt").write_text(CORPUS_TEXT, encoding="utf-8")
    return tmp_path


def _big_corpus(path, mib: int) -> None:
    line = "the quick brown fox jumps over the lazy dog, again and again.\n"
    path.write_text(line * (mib * (1 << 20) // len(line)), encoding="utf-8")


# --- the id cache -------------------------------------------------------------------------------

NO_MOUNT = os.geteuid() != 0 or shutil.which("unshare") is None


@pytest.mark.skipif(NO_MOUNT, reason="needs root to mount a tmpfs")
def test_full_disk_while_writing_the_id_cache_is_exit_1_and_leaves_no_temp_file(work):
    _big_corpus(work / "big.txt", 2)  # 2 MiB of ids into a 1 MiB file system
    train = " ".join([*CLI, "train", "--corpus", "big.txt", *TINY, *STREAM, "--run-dir", "run"])
    script = (f"mkdir -p run/cache && mount -t tmpfs -o size=1m none run/cache || exit 77; {train}; "
              "rc=$?; ls -a run/cache; exit $rc")
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=work, capture_output=True, text=True,
                       timeout=120)
    if r.returncode == 77:
        pytest.skip("cannot mount a tmpfs here")
    assert r.returncode == 1, (r.returncode, r.stderr)  # was 135 (SIGBUS)
    assert "cannot write the id cache" in r.stderr and "No space left" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert ".tmp.npy" not in r.stdout, r.stdout  # `ls -a run/cache` inside the mount


def test_full_disk_simulated_in_process_is_a_data_error(tmp_path, monkeypatch):
    """Where no tmpfs can be mounted: ENOSPC from the ordinary writes of the cache file."""
    path = tmp_path / "c.txt"
    path.write_text(CORPUS_TEXT, encoding="utf-8")

    def full(f, chunks, n, dtype):
        f.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(idcache, "_write_ids", full)
    with pytest.raises(DataError, match="No space left"):
        idcache.encode_file_to_ids(path, None, 1, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob(".*"))


def test_sigterm_while_encoding_the_corpus_exits_130_and_cleans_up(work):
    _big_corpus(work / "big.txt", 150)
    proc = start("train", "--corpus", "big.txt", *TINY, *STREAM, "--run-dir", "run", cwd=work)
    deadline = time.monotonic() + 60
    while not list((work / "run/cache").glob(".*.tmp.npy")):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the cache was never written"
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err)  # was 143, temporary file left
    assert "interrupted" in err and "Traceback" not in err, err
    assert not list((work / "run/cache").glob(".*"))


def test_rewritten_corpus_with_same_size_and_mtime_is_encoded_again(work):
    corpus = work / "c.txt"
    first = cli("train", "--corpus", "c.txt", *TINY, *STREAM, "--run-dir", "run", cwd=work)
    assert_ok(first)
    st = corpus.stat()
    corpus.write_text(CORPUS_TEXT.replace("cat", "bat"), encoding="utf-8")  # same size
    os.utime(corpus, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = cli("train", "--corpus", "c.txt", *TINY, *STREAM, "--run-dir", "run", "--overwrite", cwd=work)
    assert_ok(again)
    caches = list((work / "run/cache").glob("ids-*.npy"))
    assert len(caches) == 1  # the old corpus's cache was removed
    vocab = load_checkpoint(work / "run/last.npz").vocab.tolist()
    b_id = vocab.index(ord("b")) + 2
    ids = np.load(caches[0])  # the new text's ids, not the stale ones
    assert np.count_nonzero(ids == b_id) == CORPUS_TEXT.count("b") + CORPUS_TEXT.count("cat")


def test_first_resume_of_a_stream_run_reuses_the_cache(work):
    assert_ok(cli("train", "--corpus", "c.txt", *TINY, *STREAM, "--run-dir", "run", cwd=work))
    cached = sorted((work / "run/cache").iterdir())
    mtimes = [p.stat().st_mtime_ns for p in cached]
    assert_ok(cli("train", "--corpus", "c.txt", *TINY, *STREAM, "--set", "train.steps=5", "--resume",
                  "--run-dir", "run", cwd=work))
    assert sorted((work / "run/cache").iterdir()) == cached  # no second full-size cache
    assert [p.stat().st_mtime_ns for p in cached] == mtimes


@pytest.mark.parametrize("tamper", ["id beyond the vocabulary", "float array"])
def test_tampered_id_cache_is_rebuilt(work, tamper):
    assert_ok(cli("train", "--corpus", "c.txt", *TINY, *STREAM, "--run-dir", "run", cwd=work))
    [ids_path] = (work / "run/cache").glob("ids-*.npy")
    good = np.load(ids_path)
    bad = good.copy()
    bad[3] = 250
    np.save(ids_path, bad if tamper == "id beyond the vocabulary" else good.astype(np.float64))
    r = cli("train", "--corpus", "c.txt", *TINY, *STREAM, "--overwrite", "--run-dir", "run", cwd=work)
    assert_ok(r)  # was IndexError / ValueError
    assert np.array_equal(np.load(ids_path), good)


# --- standard streams ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny sentence model: (work dir, checkpoint path)."""
    work = trained_run(tmp_path_factory.mktemp("io"), "run")
    return work, work / "run/last.npz"


def test_training_with_stderr_closed_goes_on_and_keeps_stdout_clean(work):
    r = run_limited("train", "--corpus", "c.txt", *TINY[:-1], "--run-dir", "run", cwd=work, close_fd=2)
    assert r.returncode == 0 and r.stdout == "", (r.returncode, r.stdout)  # was exit 1, log on stdout
    assert load_checkpoint(work / "run/last.npz").step == 3


@pytest.mark.parametrize("args, closed, message", [
    (["eval", "-"], 0, "stdin: it is closed"),
    (["sample"], 1, "stdout is closed"),
    (["eval", "c.txt"], 1, "stdout is closed"),  # was exit 0 with the result thrown away
], ids=["eval - <&-", "sample >&-", "eval FILE >&-"])
def test_closed_standard_streams_are_exit_1(trained, args, closed, message):
    work, ckpt = trained
    r = run_limited(*args, "--checkpoint", ckpt, cwd=work, close_fd=closed)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr, (r.returncode, r.stderr)


def test_eval_with_stdin_closed_scores_the_validation_split(trained):
    work, ckpt = trained
    r = run_limited("eval", "--checkpoint", ckpt, "--json", cwd=work, close_fd=0)
    assert r.returncode == 0, r.stderr  # was AttributeError
    assert json.loads(r.stdout)["chars"] > 0


def test_train_from_closed_stdin_is_exit_1(work):
    r = run_limited("train", "--corpus", "-", *TINY, "--run-dir", "run", cwd=work, close_fd=0)
    assert_fails(r, 1, "stdin: it is closed")


# --- endless files and FIFOs --------------------------------------------------------------------

def test_endless_inputs_end_in_a_clear_error(trained):
    work, ckpt = trained
    with open("/dev/zero", "rb") as zero:
        from_stdin = run_limited("train", "--corpus", "-", *TINY, "--run-dir", "z1", cwd=work, stdin=zero)
    assert_fails(from_stdin, 1, "more than 256 MiB")  # was MemoryError
    assert_fails(run_limited("eval", "--checkpoint", ckpt, "/dev/zero", cwd=work), 1, "more than 256 MiB")
    for mode in ([], STREAM):  # sentences: MemoryError; stream: ran forever
        r = run_limited("train", "--set", "data.corpus=/dev/zero", *TINY, *mode, "--run-dir", "z2", cwd=work,
                     timeout=30)
        assert_fails(r, 1, "/dev/zero", "not a regular file")


def test_fifos_are_refused_where_a_file_is_seeked_or_read_twice(trained):
    work, ckpt = trained
    os.mkfifo(work / "f")
    assert_fails(cli("sample", "--checkpoint", "f", cwd=work, timeout=20), 1, "FIFO")
    r = cli("train", "--set", "data.corpus=f", *TINY, *STREAM, "--run-dir", "zf", cwd=work, timeout=20)
    assert_fails(r, 1, "FIFO")
    (work / "fr").mkdir()
    os.mkfifo(work / "fr/last.npz")
    r = cli("train", "--corpus", "c.txt", *TINY, "--resume", "--run-dir", "fr", cwd=work, timeout=20)
    assert_fails(r, 1, "last.npz is not a regular file")
