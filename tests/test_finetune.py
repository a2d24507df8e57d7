"""`rnnchar train --init-from CKPT`: a new run from a checkpoint's weights, the vocabulary extended."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rnnchar.checkpoint import load_checkpoint
from rnnchar.cli import main
from rnnchar.data import Vocab
from rnnchar.finetune import extend_vocab, move_rows
from rnnchar.model import CharModel

OLD_TEXT = ["the cat sat on the mat.", "a dog ran down the road.", "we ate bread at noon."] * 4
NEW_TEXT = ["Zoe ate crème brûlée.", "the cat sat on the mat.", "Zed ran down the road."] * 4
TINY = ["--set", "model.hidden_sizes=[10]", "--set", "model.embed_size=5", "--set", "data.batch_size=3",
        "--set", "train.eval_every=4", "--set", "train.sample_every=0"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_move_rows_maps_old_rows_by_character_and_keeps_fresh_rows_for_new_ones():
    old, new = Vocab("ac"), extend_vocab(Vocab("ac"), Vocab("b"))
    assert new.chars == ("a", "b", "c")  # sorted: c moves from id 3 to id 4
    embed_old = np.arange(4 * 2, dtype=float).reshape(4, 2)       # rows: boundary, unknown, a, c
    dec_old = 100 + np.arange(3 * 4, dtype=float).reshape(3, 4)   # columns likewise
    fresh = {"embed.W": -np.ones((5, 2)), "decoder.W": -np.ones((3, 5)), "decoder.b": -np.ones((1, 5)),
             "layer0.W": np.zeros((2, 3))}
    out = move_rows({"embed.W": embed_old, "decoder.W": dec_old, "decoder.b": np.array([[1.0, 2, 3, 4]]),
                     "layer0.W": np.full((2, 3), 7.0)}, fresh, old, new)
    assert out["embed.W"].tolist() == [[0, 1], [2, 3], [4, 5], [-1, -1], [6, 7]]
    assert out["decoder.W"][:, 3].tolist() == [-1, -1, -1]
    assert out["decoder.W"][:, [0, 1, 2, 4]].tolist() == dec_old.tolist()
    assert out["decoder.b"].tolist() == [[1, 2, 3, -1, 4]]
    assert out["layer0.W"].tolist() == np.full((2, 3), 7.0).tolist()  # not indexed by character: as is


@pytest.fixture
def base_run(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    Path("old.txt").write_text("\n".join(OLD_TEXT) + "\n", encoding="utf-8")
    Path("new.txt").write_text("\n".join(NEW_TEXT) + "\n", encoding="utf-8")
    r = run("train", "--corpus", "old.txt", *TINY, "--set", "train.steps=8", "--run-dir", "runs/base", "-q")
    assert r.exit_code == 0, r.output
    return tmp_path / "runs" / "base" / "last.npz"


def test_init_from_extends_the_vocabulary_and_copies_weights_by_character(base_run):
    r = run("train", "--init-from", base_run, "--corpus", "new.txt", "--set", "train.steps=0")
    assert r.exit_code == 0, r.output
    added = sorted(set("".join(NEW_TEXT)) - set("".join(OLD_TEXT)))
    assert f"{len(added)} characters added to the vocabulary" in r.stderr, r.stderr
    old, new = load_checkpoint(base_run), load_checkpoint("runs/base-finetune/last.npz")
    assert new.step == 0 and not new.opt_state.get("t") and new.history == []
    old_chars, new_chars = [chr(c) for c in old.vocab], [chr(c) for c in new.vocab]
    assert new_chars == sorted(set(old_chars) | set(added))
    new_id = {c: k + 2 for k, c in enumerate(new_chars)}
    for k, c in enumerate(old_chars):
        assert np.array_equal(new.params["embed.W"][new_id[c]], old.params["embed.W"][k + 2]), c
        assert np.array_equal(new.params["decoder.W"][:, new_id[c]], old.params["decoder.W"][:, k + 2]), c
    for name in old.params:
        if name not in ("embed.W", "decoder.W", "decoder.b"):
            assert np.array_equal(new.params[name], old.params[name]), name
    # new characters: as a fresh model of the new size would start (same config, same seed)
    fresh = CharModel(len(new_chars) + 2, cell="lstm", hidden_sizes=[10], embed_size=5,
                      rng=np.random.default_rng(1))
    for c in added:
        assert np.array_equal(new.params["embed.W"][new_id[c]], fresh.params["embed.W"].w[new_id[c]]), c


def test_init_from_trains_a_new_run_with_the_old_config(base_run):
    r = run("train", "--init-from", base_run, "--corpus", "new.txt", "--set", "train.steps=4", "-q")
    assert r.exit_code == 0, r.output
    ckpt = load_checkpoint("runs/base-finetune/last.npz")
    assert ckpt.step == 4 and ckpt.config["model"]["hidden_sizes"] == [10]
    assert ckpt.config["data"]["corpus"].endswith("new.txt") and ckpt.config["train"]["lr_decay_steps"] == 4
    r = run("sample", "--checkpoint", "runs/base-finetune/last.npz", "--prime", "Zoé", "-n", 1, "--seed", 1)
    assert r.exit_code == 0 and r.stdout.startswith("Zoé"), r.output  # the new characters are known


@pytest.mark.parametrize("args, code, message", [
    (["--set", "model.hidden_sizes=[12]"], 2, "--init-from keeps the model's shape: model.hidden_sizes"),
    (["--config", "gru"], 2, "model.cell: 'lstm'"),
    (["--resume"], 2, "pick one"),
])
def test_init_from_bad_invocations(base_run, args, code, message):
    r = run("train", "--init-from", base_run, "--corpus", "new.txt", *args)
    assert r.exit_code == code and message in r.output, r.output
    assert "Traceback" not in r.output and not Path("runs/base-finetune/last.npz").exists()


def test_init_from_a_missing_or_broken_checkpoint(base_run):
    r = run("train", "--init-from", "nope.npz", "--corpus", "new.txt")
    assert r.exit_code == 2 and "nope.npz" in r.output, r.output
    Path("broken.npz").write_bytes(b"PK\x03\x04 not really")
    r = run("train", "--init-from", "broken.npz", "--corpus", "new.txt")
    assert r.exit_code == 1 and "broken.npz" in r.output and "Traceback" not in r.output, r.output
