"""rnnchar.evaluate: scoring the validation split of the corpus a model was trained on."""

from __future__ import annotations

import pytest

from rnnchar.config import build_model, load_config
from rnnchar.corpus import load_corpus
from rnnchar.data import DataError, split_train_val
from rnnchar.evaluate import validation_score

LINES = ["the cat sat", "a dog ran", "we ate bread", "the rain fell", "she sang", "he read the map"] * 4


def model_and_config(tmp_path, *overrides):
    (tmp_path / "c.txt").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    small = ["model.hidden_sizes=[8]", "data.batch_size=4"]
    cfg = load_config(None, [f"data.corpus={tmp_path / 'c.txt'}", *small, *overrides])
    corpus = load_corpus(cfg)
    return build_model(cfg, len(corpus.vocab)), corpus.vocab, cfg


def test_validation_score_counts_every_held_out_character(tmp_path):
    model, vocab, cfg = model_and_config(tmp_path, "data.val_fraction=0.25")
    result = validation_score(model, vocab, cfg)
    _, held_out = split_train_val(LINES, 0.25, seed=cfg.train.seed)
    assert result.chars == sum(len(line) + 1 for line in held_out)  # characters and each end boundary
    assert result.unknown_chars == 0 and result.bits_per_char > 0


def test_validation_score_without_a_split_says_what_to_do(tmp_path):
    model, vocab, cfg = model_and_config(tmp_path, "data.val_fraction=0")
    with pytest.raises(DataError, match="no validation split.*pass a FILE"):
        validation_score(model, vocab, cfg)
