"""Training as a user watches and extends it: units, plain progress, --more, the schedule horizon."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from cli_procs import corpus_here
from click.testing import CliRunner

from rnnchar import progress as progress_module
from rnnchar.checkpoint import load_checkpoint
from rnnchar.cli import main

SENTENCES = ["The cat sat on the mat.", "A dog ran down the road.", "We ate bread at noon.",
             "The rain fell all night.", "She sang to the sea.", "He read the old map."] * 3
TINY = ["--set", "model.hidden_sizes=[12]", "--set", "model.embed_size=6", "--set", "data.batch_size=4",
        "--set", "train.eval_every=3", "--set", "train.sample_every=0", "--set", "train.checkpoint_every=3"]
COSINE = ["--set", "train.lr_schedule=cosine", "--set", "train.lr=0.01"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def corpus(tmp_path, monkeypatch) -> Path:
    return corpus_here(tmp_path, monkeypatch, SENTENCES)


def train(corpus, *extra):
    r = run("train", "--corpus", corpus, *TINY, *extra)
    assert r.exit_code == 0, r.output
    return r


def metrics(run_dir="runs/default"):
    return [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]


def params_equal(a, b) -> bool:
    pa, pb = load_checkpoint(a).params, load_checkpoint(b).params
    return all(np.array_equal(pa[k], pb[k]) for k in pa)


def test_log_line_names_units_with_fixed_digits(corpus):
    r = train(corpus, "--set", "train.steps=6")
    lines = [line for line in r.stderr.splitlines() if line.startswith("step ")]
    assert len(lines) == 2, r.stderr
    pattern = r"step (\d+)  train (\d\.\d{4}) bits/char  val (\d\.\d{4}) bits/char  [\d,]+ chars/s"
    for line, rec in zip(lines, metrics()):
        m = re.fullmatch(pattern, line)
        assert m, line
        assert int(m[1]) == rec["step"] and float(m[2]) == pytest.approx(rec["train_bpc"], abs=1e-4)
        assert float(m[3]) == pytest.approx(rec["val_bpc"], abs=1e-4)
        assert rec["train_bpc"] == pytest.approx(rec["train_loss_nats"] / np.log(2), abs=1e-5)


def test_plain_progress_lines_when_stderr_is_not_a_terminal(corpus, monkeypatch):
    monkeypatch.setattr(progress_module, "PROGRESS_EVERY_S", 0.0)  # every step, instead of every 30 s
    r = train(corpus, "--set", "train.steps=5", "--set", "train.eval_every=0")
    progress = re.findall(r"step (\d)/5  train \d\.\d{4} bits/char  [\d,]+ chars/s  ETA \d+:\d\d:\d\d",
                          r.stderr)
    assert progress == ["1", "2", "3", "4", "5"], r.stderr
    quiet = run("train", "--corpus", corpus, *TINY, "--set", "train.steps=2", "--run-dir", "q", "-q")
    assert quiet.exit_code == 0 and "ETA" not in quiet.stderr


def test_plain_progress_is_rate_limited(corpus):
    r = train(corpus, "--set", "train.steps=5")  # a second or two: well under 30 s
    assert "ETA" not in r.stderr


def test_resume_more_trains_beyond_the_checkpoint(corpus):
    train(corpus, "--set", "train.steps=4")
    r = train(corpus, "--resume", "--more", "5", "-q")
    assert load_checkpoint("runs/default/last.npz").step == 9
    assert "steps: 9" in Path("runs/default/config.yaml").read_text()
    r = run("train", "--corpus", corpus, *TINY, "--resume", "--more", "0")
    assert r.exit_code == 0 and "nothing to train" in r.stderr and "--more" in r.stderr, r.output
    assert load_checkpoint("runs/default/last.npz").step == 9


def test_resume_with_no_steps_left_says_so(corpus):
    train(corpus, "--set", "train.steps=4")
    r = train(corpus, "--set", "train.steps=4", "--resume")
    assert "nothing to train: runs/default/last.npz is at step 4 and train.steps is 4" in r.stderr
    assert load_checkpoint("runs/default/last.npz").step == 4


@pytest.mark.parametrize("args, message", [
    (["--more", "3"], "--more N goes with --resume"),
    (["--resume", "--more", "3", "--set", "train.steps=9"], "--more N goes with --resume"),
    (["--resume", "--more", "-1"], "--more"),
])
def test_more_bad_invocations_exit_2(corpus, args, message):
    r = run("train", "--corpus", corpus, *TINY, *args)
    assert r.exit_code == 2 and message in r.output, r.output


def test_extending_a_cosine_run_keeps_its_horizon_and_never_raises_the_rate(corpus):
    train(corpus, *COSINE, "--set", "train.steps=6", "--run-dir", "split")
    r = train(corpus, *COSINE, "--set", "train.steps=12", "--run-dir", "split", "--resume")
    assert "keeps its horizon of 6 steps" in r.stderr, r.stderr
    lrs = [rec["lr"] for rec in metrics("split")]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] == pytest.approx(0.001)  # the floor, 0.1 lr
    train(corpus, *COSINE, "--set", "train.steps=12", "--run-dir", "straight")
    assert not params_equal("split/last.npz", "straight/last.npz")  # 6 steps of decay planned, not 12


def test_same_horizon_makes_split_and_straight_runs_identical(corpus):
    horizon = ["--set", "train.lr_decay_steps=12"]
    train(corpus, *COSINE, *horizon, "--set", "train.steps=6", "--run-dir", "split")
    train(corpus, *COSINE, "--set", "train.steps=12", "--run-dir", "split", "--resume", "-q")  # horizon kept
    train(corpus, *COSINE, *horizon, "--set", "train.steps=12", "--run-dir", "straight")
    assert params_equal("split/last.npz", "straight/last.npz")
    assert [r["lr"] for r in metrics("split")] == [r["lr"] for r in metrics("straight")]


def test_setting_a_new_horizon_on_resume_is_announced(corpus):
    train(corpus, *COSINE, "--set", "train.steps=6")
    r = train(corpus, *COSINE, "--resume", "--more", "6", "--set", "train.lr_decay_steps=12")
    assert "train.lr_decay_steps=12 replaces the checkpoint's 6" in r.stderr, r.stderr
    assert "from 0.001 to 0.0055 at step 7" in r.stderr, r.stderr


def test_elapsed_time_counts_on_across_a_resume(corpus):
    train(corpus, "--set", "train.steps=6")
    train(corpus, "--set", "train.steps=12", "--resume")
    elapsed = [rec["elapsed_s"] for rec in metrics()]
    assert len(elapsed) == 4 and elapsed == sorted(elapsed) and elapsed[2] >= elapsed[1]
