"""model.dropout: auto: the rule (model.auto_dropout), and its pinning to a number (runs.pin_dropout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_procs import corpus_file, params_of, run_in_process

from rnnchar.checkpoint import load_checkpoint
from rnnchar.config import ConfigError, load_config
from rnnchar.corpus import load_corpus
from rnnchar.model import AUTO_DROPOUT_MAX, auto_dropout, param_shapes
from rnnchar.train import open_trainer, train

SMALL = ["model.hidden_sizes=[12, 10]", "model.embed_size=6", "model.dtype=float64", "train.eval_every=3",
         "train.checkpoint_every=0", "train.sample_every=0", "data.val_fraction=0.1", "data.batch_size=4",
         "model.dropout=auto"]
STREAM = ["data.mode=stream", "data.seq_len=8"]
ONE_MB = 1_003_854  # tinyshakespeare's first 90%: the text the README's figures for 1 MB were measured on


def n_params(V: int, E: int, sizes: list[int], cell: str = "lstm") -> int:
    return sum(int(np.prod(s)) for s in param_shapes(V, cell, sizes, E).values())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return corpus_file(tmp_path_factory.mktemp("corpus"))


def test_no_dropout_up_to_8_effective_passes():
    assert auto_dropout(1000, 1000, 8 * 1000) == 0  # a model that could hold its text, 8 passes
    assert auto_dropout(10**7, 10**6, 7.9 * 10**6) == 0  # bigger than its text: still the passes count
    assert auto_dropout(100, 10**6, 10**9) == 0  # 1,000 passes of a model of 1e-4 parameters a character


def test_rule_grows_with_passes_in_steps_of_005_up_to_04_and_capacity_counts_up_to_1():
    values = [auto_dropout(10**5, 10**5, 10**5 * x) for x in np.logspace(0, 3, 60)]  # 1 to 1,000 passes
    assert values == sorted(values) and values[0] == 0 and values[-1] == AUTO_DROPOUT_MAX == 0.4
    assert all(abs(v * 20 - round(v * 20)) < 1e-9 for v in values) and len(set(values)) == 9
    assert auto_dropout(10**5, 10**5, 32 * 10**5) == 0.4
    assert auto_dropout(5 * 10**4, 10**5, 32 * 10**5) == auto_dropout(10**5, 10**5, 16 * 10**5) > 0  # P/N 1/2
    assert auto_dropout(10**6, 10**5, 16 * 10**5) == auto_dropout(10**5, 10**5, 16 * 10**5)  # P/N 10 as 1


def test_the_measured_settings_get_the_dropout_found_best_for_them():
    """README, "Dropout: auto": the settings the rule was fitted to, counted independently of the trainer."""
    # tinyshakespeare, [128, 128] LSTM, 2,000 steps of 32 x 64, ~1 effective pass: best without (0.1: +0.02)
    assert auto_dropout(n_params(67, 64, [128, 128]), ONE_MB, 2000 * 32 * 64) == 0
    # lstm.yaml on the bundled corpus (76,239 targets, 32 sentences of ~64.1 a step), [192, 192]:
    lstm_yaml = dict(n_params=n_params(81, 32, [192, 192]), train_chars=76_239)
    assert auto_dropout(**lstm_yaml, planned_chars=300 * 32 * 64.07) == 0  # 300 steps: 0 best, 0.1 +0.01
    assert auto_dropout(**lstm_yaml, planned_chars=600 * 32 * 64.07) == 0.2  # 600 steps: 0.2 / 0.3 best
    assert auto_dropout(**lstm_yaml, planned_chars=1150 * 32 * 64.07) == 0.4  # its 1,150: 0.3-0.4 best


def test_bundled_lstm_yaml_asks_for_auto_and_gets_04_on_its_corpus(tmp_path):
    cfg = load_config("lstm", ["train.checkpoint_every=0", "train.eval_every=0", "train.sample_every=0"])
    assert cfg.model.dropout == "auto"
    trainer = open_trainer(cfg, tmp_path / "r", resume=False)
    assert trainer.model.dropout == cfg.model.dropout == 0.4
    assert "dropout: 0.4" in (tmp_path / "r" / "config.yaml").read_text()


@pytest.mark.parametrize("mode", ["sentences", "stream"])
def test_a_new_run_pins_the_number_it_computed(corpus, tmp_path, mode):
    sets = [*SMALL, "model.hidden_sizes=[48, 40]", f"data.corpus={corpus}", "train.steps=300",
            *(STREAM if mode == "stream" else []), "data.seq_len=32"]
    trainer = run_in_process(load_config(None, sets), tmp_path / "r")
    c, model = trainer.corpus, trainer.model
    planned = 300 * (4 * 32 if mode == "stream" else 4 * c.train_chars() / len(c.batcher.seqs))
    want = auto_dropout(model.flat_grad.size, c.train_chars(), planned)
    assert want > 0 and model.dropout == want  # ~24k parameters on ~3k characters, > 10 passes
    assert load_checkpoint(tmp_path / "r" / "last.npz").config["model"]["dropout"] == want
    assert load_config(tmp_path / "r" / "config.yaml").model.dropout == want


def test_a_resumed_run_keeps_its_dropout_and_trains_like_an_uninterrupted_one(corpus, tmp_path):
    sets = [*SMALL, "model.hidden_sizes=[48, 40]", f"data.corpus={corpus}", "train.steps=300"]
    whole = open_trainer(load_config(None, sets), tmp_path / "whole", resume=False)
    train(whole, should_stop=lambda: whole.step >= 6, quiet=True)
    split = open_trainer(load_config(None, sets), tmp_path / "split", resume=False)
    train(split, should_stop=lambda: split.step >= 3, quiet=True)  # as Ctrl-C at step 3: last.npz saved
    assert split.step == 3
    more = load_config(None, [*sets[:-1], "train.steps=30"])  # 10 times fewer planned passes: auto gives 0
    resumed = open_trainer(more, tmp_path / "split", resume=True)
    assert resumed.model.dropout == whole.model.dropout > 0
    train(resumed, should_stop=lambda: resumed.step >= 6, quiet=True)
    for k, w in params_of(whole).items():
        assert np.array_equal(params_of(resumed)[k], w), k


def test_two_workers_pin_the_same_dropout_as_one_process(corpus, tmp_path):
    sets = [*SMALL, "model.hidden_sizes=[48, 40]", f"data.corpus={corpus}", "train.steps=200",
            "data.batch_size=5"]
    one = run_in_process(load_config(None, sets), tmp_path / "one")
    two = run_in_process(load_config(None, sets), tmp_path / "two", workers=2)
    assert two.model.dropout == one.model.dropout > 0
    for k, w in params_of(one).items():
        assert np.allclose(params_of(two)[k], w, rtol=0, atol=1e-9 * max(float(np.abs(w).max()), 1e-30)), k


@pytest.mark.parametrize("value", ["Auto", "automatic", "[auto]", "yes"])
def test_anything_but_auto_or_a_probability_is_a_config_error(value):
    with pytest.raises(ConfigError, match=r"model.dropout: expected auto or a number in \[0, 1\)"):
        load_config(None, [f"model.dropout={value}"])


@pytest.mark.parametrize("mode", ["sentences", "stream"])
def test_training_characters_and_a_steps_characters_are_counted_from_the_text(corpus, mode):
    sets = [*SMALL, f"data.corpus={corpus}", *(STREAM if mode == "stream" else [])]
    c = load_corpus(load_config(None, sets))
    text = corpus.read_text(encoding="utf-8")
    if mode == "stream":  # every character is a target, the held-out tail's apart
        assert c.train_chars() + len(c.val) == len(text) and c.chars_per_step(4, 8) == 32
    else:  # a line's characters and its closing boundary; held-out sentences are (boundary, text, boundary)
        lines = text.splitlines()
        assert c.train_chars() + sum(len(v) - 1 for v in c.val) == sum(len(line) + 1 for line in lines)
        assert c.chars_per_step(4, 8) == pytest.approx(4 * c.train_chars() / (len(lines) - len(c.val)))
