"""Sampling and beam search: the library against brute force, the CLI options on trained runs."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rnnchar.cli import main
from rnnchar.data import BOUNDARY, Vocab
from rnnchar.model import CharModel
from rnnchar.sample import beam_search

SENTENCES = ["The cat sat on the mat.", "A dog ran down the road.", "We ate bread at noon.",
             "The rain fell all night.", "She sang to the sea.", "He read the old map."] * 3
TINY = ["--set", "model.hidden_sizes=[16]", "--set", "model.embed_size=8", "--set", "data.batch_size=4",
        "--set", "train.eval_every=10", "--set", "train.sample_every=0", "--set", "train.steps=20", "--quiet"]


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def tiny_model(seed=0):
    vocab = Vocab("ab.")
    return CharModel(len(vocab), cell="lstm", hidden_sizes=[6], embed_size=3, dtype="float64",
                     rng=np.random.default_rng(seed)), vocab


def logprob_one_by_one(model, start: list[int], continuation: list[int]) -> float:
    """Log-probability of `continuation` after `start`, one row, one step at a time."""
    state, total = None, 0.0
    for k, i in enumerate(start + continuation[:-1]):
        logits, state = model.step(np.array([i]), state)
        if k >= len(start) - 1:
            z = logits[0].astype(np.float64)
            total += z[continuation[k - len(start) + 1]] - z.max() - math.log(np.exp(z - z.max()).sum())
    return total


def test_wide_beam_finds_every_sentence_with_its_exact_probability():
    model, vocab = tiny_model()
    beams = beam_search(model, vocab, width=50, max_len=3)  # wide enough to be exhaustive
    finished = {b.text: b.logprob for b in beams if b.finished}
    expected = {}
    for n in range(3):  # sentences of 0, 1, 2 characters, then the end
        for chars in itertools.product("ab.", repeat=n):
            ids = vocab.encode("".join(chars)).tolist() + [BOUNDARY]
            expected["".join(chars)] = logprob_one_by_one(model, [BOUNDARY], ids)
    assert finished.keys() == expected.keys()
    for text, lp in expected.items():
        assert finished[text] == pytest.approx(lp, abs=1e-9), text
    per_char = [b.logprob / b.chars for b in beams if b.finished]
    assert per_char == sorted(per_char, reverse=True)  # ranked per character by default
    totals = [b.logprob for b in beam_search(model, vocab, width=50, max_len=3, alpha=0.0) if b.finished]
    assert totals == pytest.approx(sorted(expected.values(), reverse=True), abs=1e-9)  # alpha 0: the total
    assert all(len(b.text) == 3 for b in beams if not b.finished)  # cut off at max_len


def test_narrow_beam_scores_what_it_returns_exactly_and_keeps_the_prime():
    model, vocab = tiny_model(seed=3)
    beams = beam_search(model, vocab, width=3, prime="ab", max_len=6)
    assert len(beams) == 3 and all(b.text.startswith("ab") for b in beams)
    for b in beams:
        ids = vocab.encode(b.text[2:]).tolist() + ([BOUNDARY] if b.finished else [])
        assert b.chars == len(ids)
        start = [BOUNDARY, *vocab.encode("ab").tolist()]
        assert b.logprob == pytest.approx(logprob_one_by_one(model, start, ids), abs=1e-9)


def test_stream_beam_is_exact_for_a_short_continuation():
    model, vocab = tiny_model(seed=5)
    beams = beam_search(model, vocab, width=4, prime="a", max_len=2, sentences=False)
    start = vocab.encode("a").tolist()
    scores = {"".join(c): logprob_one_by_one(model, start, vocab.encode("".join(c)).tolist())
              for c in itertools.product("ab.", repeat=2)}
    best = sorted(scores, key=scores.get, reverse=True)[:4]
    assert [b.text for b in beams] == ["a" + t for t in best]
    assert all(b.finished and b.chars == 2 for b in beams)


@pytest.fixture
def trained(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    r = run("train", "--corpus", corpus, *TINY)
    assert r.exit_code == 0, r.output
    return corpus


def test_sample_beam_json_from_the_cli(trained):
    r = run("sample", "--beam", 4, "--prime", "The ", "--json", "--length", 30)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 4 and all(row["text"].startswith("The ") for row in rows)
    for row in rows:
        assert row["bits_per_char"] == pytest.approx(-row["logprob"] / row["chars"] / math.log(2), abs=1e-5)
        assert row["logprob_per_char"] == pytest.approx(row["logprob"] / row["chars"], abs=1e-5)
        assert len(row["text"]) - 4 <= 30
    done = [row["logprob_per_char"] for row in rows if row["finished"]]
    assert done == sorted(done, reverse=True)
    plain = run("sample", "--beam", 4, "--prime", "The ", "-n", 2, "--length", 30)
    assert plain.exit_code == 0 and plain.stdout.splitlines() == [row["text"] for row in rows[:2]]


def test_sample_beam_on_a_stream_model(trained):
    r = run("train", "--corpus", trained, *TINY, "--set", "data.mode=stream", "--set", "data.seq_len=8",
            "--run-dir", "runs/stream")
    assert r.exit_code == 0, r.output
    r = run("sample", "--checkpoint", "runs/stream/last.npz", "--beam", 3, "--length", 12, "--json")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 3 and all(row["chars"] == 12 == len(row["text"]) for row in rows)
    assert [row["logprob"] for row in rows] == sorted((row["logprob"] for row in rows), reverse=True)


def test_length_is_the_maximum_sentence_length(trained):
    r = run("sample", "-n", 20, "--length", 5, "--temp", 3, "--seed", 1)  # hot: few sentences end early
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert len(lines) == 20 and max(map(len, lines)) == 5
    r = run("sample", "-n", 3, "--length", 0, "--prime", "Th")
    assert r.exit_code == 0 and r.stdout.splitlines() == ["Th"] * 3, r.output


@pytest.mark.parametrize("args, message", [
    (["--beam", "2", "--temp", "0.5"], "--beam"),
    (["--beam", "2", "--argmax"], "--beam"),
    (["--json"], "--json goes with --beam"),
    (["--beam", "0"], "--beam"),
])
def test_sample_beam_bad_combinations_exit_2(trained, args, message):
    r = run("sample", *args)
    assert r.exit_code == 2 and message in r.output, r.output


def test_sample_and_eval_name_the_checkpoint_they_picked(trained):
    r = run("sample", "-n", 1)
    assert r.exit_code == 0, r.output
    best = min(json.loads(line)["val_bpc"] for line in open("runs/default/metrics.jsonl"))
    assert f"using {Path('runs/default/best.npz')} (step " in r.stderr and f"{best:.4f} bits/char" in r.stderr
    r = run("sample", "-n", 1, "--checkpoint", "runs/default/last.npz")
    assert r.exit_code == 0 and "using" not in r.stderr
    r = run("eval", "--val", "--json")
    assert r.exit_code == 0 and "using runs/default/best.npz" in r.stderr, r.output
    assert json.loads(r.stdout)["chars"] > 0


def test_eval_val_is_explicit_and_works_without_a_terminal(trained):
    r = subprocess.run([sys.executable, "-m", "rnnchar.cli", "eval", "--val", "--json"], input="",
                       capture_output=True, text=True)  # stdin a pipe, as in a script
    assert r.returncode == 0, r.stderr
    val = json.loads(r.stdout)
    best = load_best_val_bpc()
    assert val["bits_per_char"] == pytest.approx(best, abs=1e-4)
    for args, message in ((["--val", "x.txt"], "--val"), (["--val", "--per-line"], "--per-line")):
        r2 = run("eval", *args)
        assert r2.exit_code == 2 and message in r2.output, r2.output


def load_best_val_bpc() -> float:
    return min(json.loads(line)["val_bpc"] for line in open("runs/default/metrics.jsonl"))


def test_shell_completion_line_from_the_readme_works():
    env = {**os.environ, "_RNNCHAR_COMPLETE": "bash_source"}
    r = subprocess.run([sys.executable, "-c", "from rnnchar.cli import main; main(prog_name='rnnchar')"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "complete " in r.stdout and "_RNNCHAR_COMPLETE" in r.stdout, r.stderr
    env.update(_RNNCHAR_COMPLETE="bash_complete", COMP_WORDS="rnnchar sa", COMP_CWORD="1")
    r = subprocess.run([sys.executable, "-c", "from rnnchar.cli import main; main(prog_name='rnnchar')"],
                       env=env, capture_output=True, text=True)
    assert "sample" in r.stdout, r.stdout + r.stderr
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert 'eval "$(_RNNCHAR_COMPLETE=bash_source rnnchar)"' in readme
