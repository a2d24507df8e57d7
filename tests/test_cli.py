"""The CLI as a user drives it: train, sample, eval, configs, checkpoints, exit codes."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_procs import corpus_here
from click.testing import CliRunner

from rnnchar import __version__
from rnnchar.checkpoint import load_checkpoint
from rnnchar.cli import main
from rnnchar.data import split_train_val

SENTENCES = [
    "The cat sat on the warm mat.", "A dog ran down the long road.", "We ate bread and cheese at noon.",
    "The rain fell all night long.", "She sang a song to the sea.", "He read the old map by the fire.",
    "Birds fly south in the autumn.", "The train left the station late.", "I like tea with milk.",
    "The moon rose over the hill.", "They built a boat from wood.", "My sister plays the violin.",
    "Snow covered the quiet town.", "The children laughed at the clown.", "Fresh fish is sold at dawn.",
    "The wind blew the door open.", "He planted roses in the garden.", "We walked along the river.",
    "The clock struck twelve.", "Nobody knew the answer.",
]
TINY = ["--set", "model.hidden_sizes=[16]", "--set", "model.embed_size=8", "--set", "data.batch_size=4",
        "--set", "train.eval_every=5", "--set", "train.sample_every=0", "--set", "train.checkpoint_every=5"]


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


@pytest.fixture
def corpus(tmp_path, monkeypatch) -> Path:
    return corpus_here(tmp_path, monkeypatch, SENTENCES)


def train(corpus, *extra, steps=10):
    r = run("train", "--corpus", corpus, "--quiet", *TINY, "--set", f"train.steps={steps}", *extra)
    assert r.exit_code == 0, r.output
    return r


def params_of(path) -> dict:
    return load_checkpoint(path).params


def test_version_and_help():
    r = run("--version")
    assert r.exit_code == 0 and __version__ in r.output
    for cmd in ("train", "sample", "eval"):
        r = run(cmd, "--help")
        assert r.exit_code == 0 and "rnnchar " + cmd in r.output  # every command shows examples


def test_train_writes_the_run_directory(corpus):
    train(corpus)
    run_dir = Path("runs/default")
    assert {"last.npz", "best.npz", "metrics.jsonl", "config.yaml"} <= {p.name for p in run_dir.iterdir()}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10]
    assert set(records[0]) == {"step", "train_bpc", "train_loss_nats", "val_bpc", "val_perplexity",
                               "chars_per_sec", "lr", "elapsed_s", "train_s", "reduce_s"}
    assert records[0]["train_bpc"] == pytest.approx(records[0]["train_loss_nats"] / np.log(2), abs=1e-5)
    ckpt = load_checkpoint(run_dir / "last.npz")
    assert ckpt.step == 10 and ckpt.config["model"]["hidden_sizes"] == [16]
    vocab = [chr(c) for c in ckpt.vocab]  # built from the training lines only, sorted
    assert vocab == sorted(vocab) and set(vocab) <= set("".join(SENTENCES)) and len(vocab) >= 30


def test_train_prints_resolved_config_to_stderr_only(corpus):
    r = CliRunner().invoke(main, ["train", "--corpus", str(corpus), *TINY, "--set", "train.steps=2"])
    assert r.exit_code == 0, r.output
    assert r.stdout == "" and "hidden_sizes: [16]" in r.stderr


def test_bundled_config_found_from_any_directory(corpus):
    train(corpus, "--config", "gru", steps=2)
    assert load_checkpoint("runs/gru/last.npz").config["model"]["cell"] == "gru"


def test_existing_run_is_not_overwritten_silently(corpus):
    train(corpus, steps=2)
    r = run("train", "--corpus", corpus, "--quiet", *TINY, "--set", "train.steps=2")
    assert r.exit_code == 1 and "--resume" in r.output
    train(corpus, "--overwrite", steps=3)
    assert load_checkpoint("runs/default/last.npz").step == 3


@pytest.mark.parametrize("mode", ["sentences", "stream", "stream-random"])
def test_resume_is_bit_exact(corpus, mode):
    extra = ["--set", f"data.mode={mode.split('-')[0]}", "--set", "data.seq_len=8"]
    if mode.endswith("random"):
        extra += ["--set", "data.stream_order=random"]
    train(corpus, *extra, "--run-dir", "straight", steps=12)
    train(corpus, *extra, "--run-dir", "split", steps=7)
    train(corpus, *extra, "--run-dir", "split", "--resume", steps=12)
    a, b = params_of("straight/last.npz"), params_of("split/last.npz")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    def history(run_dir):
        return {r["step"]: r["val_bpc"] for r in map(json.loads, Path(run_dir, "metrics.jsonl").open())}
    split, straight = history("split"), history("straight")
    assert list(split) == [5, 7, 10, 12]  # the first part also evaluated where it stopped
    assert all(split[k] == v for k, v in straight.items())


def test_resume_from_a_version_1_stream_checkpoint_is_bit_exact(corpus):
    extra = ["--set", "data.mode=stream", "--set", "data.seq_len=8"]
    train(corpus, *extra, "--run-dir", "straight", steps=12)
    train(corpus, *extra, "--run-dir", "split", steps=7)
    with np.load("split/last.npz", allow_pickle=False) as z:  # as version 1 wrote it: carry among the slots
        arrays = {("opt/" + k if k.startswith("carry/") else k): z[k] for k in z.files}
    assert any(k.startswith("opt/carry/") for k in arrays)
    np.savez("split/last.npz", **{**arrays, "format_version": np.array(1, dtype=np.int64)})
    train(corpus, *extra, "--run-dir", "split", "--resume", steps=12)
    a, b = params_of("straight/last.npz"), params_of("split/last.npz")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_resume_with_a_different_model_names_the_difference(corpus):
    train(corpus, steps=2)
    r = run("train", "--corpus", corpus, "--quiet", *TINY, "--set", "model.hidden_sizes=[8]", "--resume")
    assert r.exit_code == 1 and "model.hidden_sizes" in r.output and "[16]" in r.output


def test_sample_same_seed_same_text_after_reload(corpus):
    train(corpus)
    a = run("sample", "-n", 3, "--seed", 7, "--temp", 0.8)
    b = run("sample", "--checkpoint", "runs/default/last.npz", "-n", 3, "--seed", 7, "--temp", 0.8)
    c = run("sample", "--checkpoint", "runs/default/best.npz", "-n", 3, "--seed", 8, "--temp", 0.8)
    assert a.exit_code == 0, a.output
    assert len(a.stdout.splitlines()) == 3
    assert b.stdout == run("sample", "--checkpoint", "runs/default/last.npz", "-n", 3, "--seed", 7,
                           "--temp", 0.8).stdout
    assert c.exit_code == 0


def test_sample_options(corpus):
    train(corpus)
    greedy = run("sample", "--argmax", "-n", 2)
    assert greedy.exit_code == 0 and len(greedy.stdout.splitlines()) == 1  # greedy: two would be the same
    assert "writing 1, not 2" in greedy.stderr
    primed = run("sample", "--prime", "The ", "-n", 2, "--top-k", 3, "--seed", 1)
    assert primed.exit_code == 0 and all(line.startswith("The ") for line in primed.stdout.splitlines())


def test_stream_model_samples_length_characters(corpus):
    train(corpus, "--set", "data.mode=stream", "--set", "data.seq_len=8")
    r = run("sample", "--length", 40, "--prime", "The", "--seed", 3)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("The") and len(r.stdout) == 3 + 40 + 1  # prime, 40 characters, newline


def test_eval_text_json_and_unknown_chars(corpus, tmp_path):
    train(corpus)
    text = tmp_path / "held.txt"
    text.write_text("The dog sat by the fire.\nA cat read the map. Q!\n", encoding="utf-8")
    r = run("eval", text, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert set(out) == {"bits_per_char", "perplexity", "chars", "unknown_chars"}
    known = {chr(c) for c in load_checkpoint("runs/default/best.npz").vocab}
    assert out["unknown_chars"] == sum(c not in known for c in text.read_text().replace("\n", ""))
    assert out["unknown_chars"] >= 2  # at least 'Q' and '!' never occur in the training sentences
    assert 0 < out["bits_per_char"] < 10 and out["perplexity"] == pytest.approx(2 ** out["bits_per_char"])
    plain = run("eval", "-", input=text.read_text())
    assert plain.exit_code == 0 and "bits/char" in plain.stdout


def test_eval_per_line_scores_each_line(corpus, tmp_path):
    train(corpus, steps=40)
    r = run("eval", "--per-line", "-", input="The cat sat on the warm mat.\nxqzj vvkw pppp\n")
    assert r.exit_code == 0, r.output
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert [t for _, t in rows] == ["The cat sat on the warm mat.", "xqzj vvkw pppp"]
    assert float(rows[0][0]) < float(rows[1][0])  # a training sentence surprises less than noise


def test_eval_without_file_on_a_terminal_scores_the_validation_split(corpus):
    train(corpus)
    trained_on, (held_out,) = split_train_val(SENTENCES, 0.05, seed=1)  # val_fraction, seed defaults
    unseen = sum(c not in "".join(trained_on) for c in held_out)
    assert unseen == 1  # the split holds out "A dog ran ...", the one sentence with an "A"
    terminal, stdin = pty.openpty()  # CliRunner replaces stdin, so the command runs in a real process
    try:
        r = _cli("eval", "--json", stdin=stdin, timeout=120)
    finally:
        os.close(stdin)
        os.close(terminal)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["unknown_chars"] == unseen
    assert out["chars"] == len(held_out) + 1 - unseen  # its known characters and the end of the sentence


# Bad --set values, sample options, corpora and contradicting flags: the tables in test_robustness.py
@pytest.mark.parametrize("args, code, message", [
    (["train", "--config", "nope"], 2, "bundled configs"),
    (["train", "--resume"], 1, "nothing to resume"),
    (["sample"], 1, "no checkpoint found"),
    (["eval", "x.txt"], 1, "no checkpoint found"),
    (["sample", "--checkpoint", "missing.npz"], 1, "missing.npz"),
])
def test_error_paths(corpus, args, code, message):
    r = run(*args)
    assert r.exit_code == code, r.output
    assert message in r.output and "Traceback" not in r.output


def test_eval_empty_input_is_an_error(corpus):
    train(corpus, steps=2)
    r = run("eval", "-", input="")
    assert r.exit_code == 1 and "empty" in r.output


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "rnnchar.cli", *map(str, args)], capture_output=True,
                          text=True, **kw)


def test_pipelines_in_real_processes(corpus):
    train(corpus, steps=5)
    head = subprocess.run(f"{sys.executable} -m rnnchar.cli sample -n 2000 --seed 1 | head -1", shell=True,
                          capture_output=True, text=True)
    assert head.returncode == 0 and len(head.stdout.splitlines()) == 1
    assert "Traceback" not in head.stderr and "Broken" not in head.stderr, head.stderr
    ev = _cli("eval", "-", "--json", input="The cat sat on the mat.\n")
    assert ev.returncode == 0 and json.loads(ev.stdout)["chars"] > 0, ev.stderr


def test_resume_with_another_optimizer_is_refused(corpus):
    train(corpus, steps=2)
    r = run("train", "--corpus", corpus, "--quiet", *TINY, "--set", "train.optimizer=adam", "--resume")
    assert r.exit_code == 1 and "train.optimizer" in r.output and "'rmsprop'" in r.output


def test_out_of_memory_is_a_clear_error(corpus, monkeypatch):
    train(corpus, steps=2)

    def no_memory(*args, **kwargs):
        raise MemoryError
    monkeypatch.setattr("rnnchar.sample.sample_sentences", no_memory)
    r = run("sample", "-n", 3)
    assert r.exit_code == 1 and "out of memory" in r.output and "Traceback" not in r.output


def test_stream_order_random_trains_and_differs_from_sequential(corpus):
    base = ["--set", "data.mode=stream", "--set", "data.seq_len=8"]
    train(corpus, *base, "--run-dir", "seq", steps=6)
    train(corpus, *base, "--set", "data.stream_order=random", "--run-dir", "rnd", steps=6)
    train(corpus, *base, "--set", "data.stream_order=random", "--run-dir", "rnd2", steps=6)
    a, b, c = params_of("seq/last.npz"), params_of("rnd/last.npz"), params_of("rnd2/last.npz")
    assert not np.array_equal(a["decoder.W"], b["decoder.W"])  # other batches were drawn
    assert all(np.array_equal(b[k], c[k]) for k in b)  # and drawn reproducibly from the seed
    assert load_checkpoint("rnd/last.npz").carry == {}  # no state carried
    assert "0/0" in load_checkpoint("seq/last.npz").carry  # sequential windows carry it
