"""model.dropout: gradients with a fixed mask, off outside training, resume-exact, workers == one process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_procs import CORPUS_TEXT, corpus_file, params_of, run_in_process
from click.testing import CliRunner

from rnnchar.checkpoint import load_checkpoint, save_checkpoint
from rnnchar.cli import main
from rnnchar.config import ConfigError, load_config
from rnnchar.data import Vocab
from rnnchar.evaluate import batch_nats, line_batches
from rnnchar.graph import Graph
from rnnchar.model import CharModel
from rnnchar.sample import beam_search, sample_sentences

from gradcheck import directional_check, numeric_grad, rel_error

V, E = 7, 3
SMALL = ["model.hidden_sizes=[12, 10]", "model.embed_size=6", "model.dtype=float64", "train.eval_every=3",
         "train.checkpoint_every=3", "train.sample_every=0", "train.clip_norm=1.0", "data.val_fraction=0.1"]
STREAM = ["data.mode=stream", "data.seq_len=8"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return corpus_file(tmp_path_factory.mktemp("corpus"))


def cfg_of(corpus: Path, *sets: str, steps: int = 6, dropout: float = 0.5):
    return load_config(None, [*SMALL, f"data.corpus={corpus}", "data.batch_size=4", f"train.steps={steps}",
                              f"model.dropout={dropout}", *sets])


@pytest.mark.parametrize("cell,sizes", [("lstm", [3, 4, 2]), ("gru", [3, 2]), ("gf-gru", [3, 2])])
def test_whole_model_gradient_with_a_fixed_mask(cell, sizes):
    rng = np.random.default_rng(0)
    model = CharModel(V, cell, sizes, E, dtype="float64", dropout=0.4, rng=rng)
    for p in model.params.values():
        p.w[...] = rng.normal(0, 0.5, p.shape)
    seq = rng.integers(0, V, (6, 2))
    masks = model.dropout_masks(np.random.default_rng(3), 5, 2)
    assert len(masks) == (len(sizes) if cell in ("lstm", "gru") else 1)  # gated feedback: decoder only
    assert all(set(np.unique(m)) == {0.0, 1 / 0.6} for m in masks)

    def f():
        return model.loss(seq[:-1], seq[1:], needs_backprop=False, dropout_masks=masks).loss

    assert f() != model.loss(seq[:-1], seq[1:], needs_backprop=False).loss  # the masks are applied
    model.loss(seq[:-1], seq[1:], dropout_masks=masks).graph.backward()
    g = {n: p.dw.copy() for n, p in model.params.items()}
    assert directional_check(f, [p.w for p in model.params.values()], list(g.values()),
                             np.random.default_rng(2)) < 1e-6
    for name in ("embed.W", "layer0.Wx", "decoder.W"):
        assert rel_error(g[name], numeric_grad(f, model.params[name].w, eps=1e-4)) < 1e-6, name


def test_masks_are_scaled_keep_masks_of_the_batch_shape():
    model = CharModel(V, "lstm", [4, 3], E, dropout=0.3)
    masks = model.dropout_masks(np.random.default_rng(5), 40, 50)
    assert [m.shape for m in masks] == [(40, 50, 4), (40, 50, 3)] and masks[0].dtype == np.float32
    assert set(np.unique(masks[0])) == {np.float32(0), np.float32(1 / 0.7)}
    assert abs(float(np.mean(masks[0] == 0)) - 0.3) < 0.03
    assert CharModel(V, "lstm", [4, 3], E).dropout_masks(np.random.default_rng(5), 4, 5) is None


def test_groups_of_rows_use_the_whole_batch_masks(corpus, tmp_path):
    whole = run_in_process(cfg_of(corpus), tmp_path / "whole")
    grouped = run_in_process(cfg_of(corpus, "data.max_batch_tokens=40"), tmp_path / "grouped")
    for k, w in params_of(whole).items():
        assert np.allclose(params_of(grouped)[k], w, rtol=1e-9, atol=1e-12), k


def test_dropout_is_off_in_sampling_beam_search_and_evaluation():
    vocab = Vocab.build(CORPUS_TEXT.splitlines())
    on, off = (CharModel(len(vocab), "lstm", [8, 6], 4, dropout=p, rng=np.random.default_rng(1))
               for p in (0.5, 0.0))
    assert all(np.array_equal(on.params[k].w, off.params[k].w) for k in on.params)
    assert (list(sample_sentences(on, vocab, np.random.default_rng(2), n=3))
            == list(sample_sentences(off, vocab, np.random.default_rng(2), n=3)))
    assert ([b.text for b in beam_search(on, vocab, 3, max_len=20)]
            == [b.text for b in beam_search(off, vocab, 3, max_len=20)])
    batches = line_batches(vocab, CORPUS_TEXT.splitlines())
    assert batch_nats(on, batches) == batch_nats(off, batches)


def test_training_uses_masks_from_its_own_generator(corpus, tmp_path):
    on = run_in_process(cfg_of(corpus), tmp_path / "on")
    off = run_in_process(cfg_of(corpus, dropout=0.0), tmp_path / "off")
    assert on.history[-1]["train_bpc"] != off.history[-1]["train_bpc"]
    # the batch order does not depend on dropout; the masks' generator moved only when dropout was on
    assert on.rng.bit_generator.state == off.rng.bit_generator.state
    fresh = np.random.default_rng([on.cfg.train.seed, 0xD80]).bit_generator.state
    assert off.dropout_rng.bit_generator.state == fresh != on.dropout_rng.bit_generator.state
    # validation scores the model as it is: a different mask stream changes nothing
    before = on.validate(lambda: False)
    on.dropout_rng = np.random.default_rng(99)
    assert on.validate(lambda: False) == before


def test_dropout_zero_adds_no_op_to_the_training_step(corpus, tmp_path, monkeypatch):
    def refuse(*_):
        raise AssertionError("dropout op recorded at model.dropout=0")
    monkeypatch.setattr(Graph, "dropout", refuse)
    trainer = run_in_process(cfg_of(corpus, dropout=0.0), tmp_path / "off")
    assert trainer.step == 6


@pytest.mark.parametrize("mode", ["sentences", "stream"])
def test_resumed_run_with_dropout_equals_an_uninterrupted_one(corpus, tmp_path, mode):
    sets = STREAM if mode == "stream" else []
    whole = run_in_process(cfg_of(corpus, *sets), tmp_path / "whole")
    run_in_process(cfg_of(corpus, *sets, steps=3), tmp_path / "split")
    assert "dropout_rng_state" in load_checkpoint(tmp_path / "split" / "last.npz").meta
    resumed = run_in_process(cfg_of(corpus, *sets), tmp_path / "split", resume=True)
    assert resumed.step == 6
    for k, w in params_of(whole).items():
        assert np.array_equal(params_of(resumed)[k], w), k


def test_checkpoint_without_the_mask_state_still_resumes(corpus, tmp_path):
    run_in_process(cfg_of(corpus, steps=3), tmp_path / "old")
    path = tmp_path / "old" / "last.npz"
    ckpt = load_checkpoint(path)
    del ckpt.meta["dropout_rng_state"]  # as written before dropout existed
    save_checkpoint(path, ckpt)
    resumed = run_in_process(cfg_of(corpus, dropout=0.2), tmp_path / "old", resume=True)  # dropout may change
    assert resumed.step == 6 and np.isfinite(resumed.history[-1]["val_bpc"])


@pytest.mark.parametrize("mode", ["sentences", "stream"])
def test_two_workers_with_dropout_train_like_one_process(corpus, tmp_path, mode):
    sets = STREAM if mode == "stream" else []
    one = run_in_process(cfg_of(corpus, *sets, "data.batch_size=5"), tmp_path / "one")
    two = run_in_process(cfg_of(corpus, *sets, "data.batch_size=5"), tmp_path / "two", workers=2)
    for k, w in params_of(one).items():
        diff = float(np.abs(params_of(two)[k] - w).max())
        assert diff <= 1e-9 * max(float(np.abs(w).max()), 1e-30), (k, diff)


@pytest.mark.parametrize("value", ["1", "1.5", "-0.1", "nan"])
def test_dropout_outside_zero_to_one_is_a_config_error(value):
    with pytest.raises(ConfigError, match=r"model.dropout: expected auto or a number in \[0, 1\)"):
        load_config(None, [f"model.dropout={value}"])


def test_cli_trains_with_dropout_and_samples(corpus, tmp_path):
    run_dir = tmp_path / "r"
    sets = [*SMALL, "model.dropout=0.2", "train.steps=4"]
    args = ["train", "--corpus", str(corpus), "--run-dir", str(run_dir), "--quiet",
            *[a for s in sets for a in ("--set", s)]]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run_dir / "last.npz").config["model"]["dropout"] == 0.2
    sample = ["sample", "--checkpoint", str(run_dir / "last.npz"), "-n", "2", "--seed", "1"]
    result = CliRunner().invoke(main, sample)
    assert result.exit_code == 0, result.output
