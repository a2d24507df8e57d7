"""Helpers for the robustness tests: drive the real `rnnchar` CLI in subprocesses.

Every run is `python -m rnnchar.cli ...` in its own process, so exit codes, stderr and
signals are exactly what a shell user sees. Independent runs go through `run_many`, which
starts them a few at a time (process start-up, ~0.4 s, dominates these tiny trainings).
Argument checks that never touch a file or signal use `invoke` (CliRunner, in process).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SENTENCES = [
    "The cat sat on the warm mat.", "A dog ran down the long road.", "We ate bread and cheese at noon.",
    "The rain fell all night long.", "She sang a song to the sea.", "He read the old map by the fire.",
    "Birds fly south in the autumn.", "The train left the station late.", "I like tea with milk.",
    "The moon rose over the hill.",
]
CORPUS_TEXT = "\n".join(SENTENCES) + "\n"  # 10 lines: 9 train, 1 validation; 284 characters
TINY = ["--set", "model.hidden_sizes=[8]", "--set", "model.embed_size=4", "--set", "data.batch_size=2",
        "--set", "train.steps=3", "--quiet"]
STREAM = ["--set", "data.mode=stream", "--set", "data.seq_len=8"]
CLI = [sys.executable, "-m", "rnnchar.cli"]
WORKERS = 3
AS_LIMIT = 1536 << 20  # run_limited: an endless read or a big allocation must fail well before this


def cli(*args, cwd: Path, input: str | bytes | None = None, timeout: float = 60):
    """Run `rnnchar ARGS` to completion; text output unless `input` is bytes."""
    return subprocess.run([*CLI, *map(str, args)], cwd=cwd, input=input, capture_output=True,
                          text=not isinstance(input, bytes), timeout=timeout)


def run_limited(*args, cwd, stdin=None, timeout=60, close_fd=None):
    """`rnnchar ARGS` with its address space capped at AS_LIMIT (and fd `close_fd` closed at start)."""
    def pre():
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
        if close_fd is not None:
            os.close(close_fd)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([*CLI, *map(str, args)], cwd=cwd, stdin=stdin, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=pre, env=env)


def start(*args, cwd: Path, **kw) -> subprocess.Popen:
    """Start `rnnchar ARGS` in the background (stdout and stderr piped unless given)."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([*CLI, *map(str, args)], cwd=cwd, text=True, **kw)


def invoke(*args, input: str | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in this process with CliRunner (for cheap argument checks); paths must be absolute."""
    from click.testing import CliRunner

    from rnnchar.cli import main

    r = CliRunner().invoke(main, list(map(str, args)), input=input)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)  # no traceback
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


def run_many(cases: dict, cwd: Path) -> dict:
    """{name: args or (args, stdin)} -> {name: CompletedProcess}, WORKERS processes at a time."""
    def one(spec):
        args, stdin = spec if isinstance(spec, tuple) else (spec, None)
        return cli(*args, cwd=cwd, input=stdin)
    with ThreadPoolExecutor(WORKERS) as pool:
        return dict(zip(cases, pool.map(one, cases.values())))


def assert_fails(r: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    """Exit `code`, each fragment in stderr, no traceback, stdout untouched, one short message."""
    assert r.returncode == code, (r.returncode, r.stderr)
    for fragment in fragments:
        assert fragment in r.stderr, (fragment, r.stderr)
    assert "Traceback" not in r.stderr and "Warning" not in r.stderr, r.stderr
    assert r.stdout == "", r.stdout
    assert r.stderr.count("Error:") == 1 and len(r.stderr.splitlines()) <= 12, r.stderr


def assert_ok(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "Error" not in r.stderr, r.stderr


def trained_run(folder: Path, run_dir: str = "good") -> Path:
    """`folder` with the tiny corpus `c.txt` and one finished tiny run in `folder/run_dir`."""
    (folder / "c.txt").write_text(CORPUS_TEXT, encoding="utf-8")
    assert_ok(cli("train", "--corpus", "c.txt", *TINY, "--run-dir", run_dir, cwd=folder))
    return folder


def corpus_here(tmp_path: Path, monkeypatch, sentences: list[str]) -> Path:
    """`tmp_path/tiny.txt` holding `sentences` one a line, with `tmp_path` the working directory."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "tiny.txt"
    path.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    return path


def corpus_file(folder: Path) -> Path:
    """The ten test sentences twelve times over in folder/c.txt: enough rows for a few batches."""
    path = folder / "c.txt"
    path.write_text(CORPUS_TEXT * 12, encoding="utf-8")
    return path


def params_of(trainer) -> dict:
    """A copy of every parameter of a trainer's model, by name."""
    return {k: p.w.copy() for k, p in trainer.model.params.items()}


def run_in_process(cfg, run_dir: Path, workers: int = 1, resume: bool = False):
    """Open (or resume) a run and train it to its steps here, with `workers` local workers."""
    from rnnchar.train import open_trainer, train
    from rnnchar.workers import local_workers

    trainer = open_trainer(cfg, run_dir, resume)
    if workers == 1:
        train(trainer, quiet=True)
    else:
        with local_workers(trainer, workers, resume):
            train(trainer, quiet=True)
    return trainer


def wait_for(path: Path, proc: subprocess.Popen | None = None, timeout: float = 30) -> None:
    """Poll until `path` exists (fail early if `proc` ends first)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended ({proc.returncode}) before {path} appeared: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def temp_files(run_dir: Path) -> list[Path]:
    """Half-written checkpoint or cache files a crash could leave behind."""
    return sorted([*run_dir.glob(".*.tmp"), *run_dir.glob("cache/.*.tmp.npy")])
