"""Figures and bounds: eval with huge vocabularies or losses, sample's numbers, batch memory.

Scores never overflow into tracebacks or invalid JSON, eval and training memory stay bounded
whatever the vocabulary or line length, and the bounded versions compute the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_procs import CORPUS_TEXT, TINY, assert_fails, assert_ok, cli, run_limited, trained_run

from rnnchar.batches import sentence_batches, stream_batches
from rnnchar.checkpoint import Checkpoint, save_checkpoint
from rnnchar.config import build_model, config_to_dict, load_config
from rnnchar.data import Vocab
from rnnchar.evaluate import batch_nats
from rnnchar.model import CharModel


@pytest.fixture
def work(tmp_path):
    (tmp_path / "c.txt").write_text(CORPUS_TEXT, encoding="utf-8")
    return tmp_path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny sentence model: (work dir, checkpoint path)."""
    work = trained_run(tmp_path_factory.mktemp("numbers"), "run")
    return work, work / "run/last.npz"


# --- eval: big vocabularies, overconfident models -------------------------------------------------

def _checkpoint_for(path, chars: str, sets: list[str], decoder_scale: float = 1.0) -> None:
    """A freshly initialised model over `chars`, saved as a checkpoint (no training needed)."""
    cfg = load_config(None, sets)
    vocab = Vocab(chars)
    model = build_model(cfg, len(vocab))
    params = {k: p.w * (decoder_scale if k == "decoder.W" else 1.0) for k, p in model.params.items()}
    rng_state = np.random.default_rng(0).bit_generator.state
    save_checkpoint(path, Checkpoint(config=config_to_dict(cfg), vocab=vocab.to_array(), params=params,
                                     opt_state={}, step=0, rng_state=rng_state, history=[], meta={}))


def test_eval_memory_does_not_grow_with_vocabulary_times_window(tmp_path):
    chars = "".join(chr(0x4E00 + i) for i in range(30_000))  # 30,002 ids: old logits were 8192 x 30002
    _checkpoint_for(tmp_path / "big.npz", chars, ["model.hidden_sizes=[8]", "model.embed_size=4",
                                                  "data.mode=stream"])
    text = "".join(np.random.default_rng(0).choice(list(chars[:500]), size=8_800))
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    r = run_limited("eval", "--checkpoint", "big.npz", "t.txt", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr  # was "out of memory" (exit 1) under the 1.5 GB cap
    assert json.loads(r.stdout)["chars"] == 32 * ((8_800 - 1) // 32)  # 32 streams of 274 predictions


@pytest.mark.parametrize("mode", ["sentences", "stream"])
def test_chunked_scoring_equals_whole_batches(mode):
    rng = np.random.default_rng(3)
    model = CharModel(40, "lstm", [12, 9], embed_size=5, dtype="float64", rng=rng)
    if mode == "stream":
        batches = list(stream_batches(rng.integers(2, 40, size=3000).astype(np.int32)))
    else:
        seqs = [np.concatenate([[0], rng.integers(1, 40, size=n), [0]]).astype(np.int32)
                for n in rng.integers(1, 60, size=50)]
        batches = list(sentence_batches(seqs))
    whole = batch_nats(model, batches, budget=10**12)
    chunked = batch_nats(model, batches, budget=32 * 40 * 3)  # 3 steps at a time
    assert chunked[1] == whole[1] > 0
    assert chunked[0] == pytest.approx(whole[0], rel=1e-12)


def test_overconfident_model_reports_infinite_perplexity_as_null(tmp_path):
    (tmp_path / "c.txt").write_text(CORPUS_TEXT, encoding="utf-8")
    _checkpoint_for(tmp_path / "hot.npz", sorted(set(CORPUS_TEXT) - {"\n"}),
                    ["model.hidden_sizes=[8]", "model.embed_size=4"], decoder_scale=1e6)
    r = cli("eval", "--checkpoint", "hot.npz", "c.txt", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr  # was OverflowError in math.exp

    def no_constants(token):
        raise AssertionError(f"{token} is not JSON")
    result = json.loads(r.stdout, parse_constant=no_constants)
    assert result["perplexity"] is None and result["bits_per_char"] > 709 / np.log(2)
    plain = cli("eval", "--checkpoint", "hot.npz", "c.txt", cwd=tmp_path)
    assert plain.returncode == 0 and "perplexity inf" in plain.stdout, plain.stderr


def test_training_with_a_huge_validation_loss_records_null_perplexity(work):
    r = cli("train", "--corpus", "c.txt", *TINY, "--set", "train.lr=16", "--run-dir", "run", cwd=work)
    assert_ok(r)  # was OverflowError in math.exp
    rec = json.loads((work / "run/metrics.jsonl").read_text().splitlines()[-1])
    assert rec["val_bpc"] > 709 / np.log(2) and rec["val_perplexity"] is None


# --- sample arguments ---------------------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (["--seed", "-1"], "--seed"),  # was ValueError
    (["-n", "1000000000000000000000000000000"], "-n"),  # was OverflowError
], ids=["negative seed", "huge n"])
def test_sample_refuses_impossible_numbers_with_exit_2(trained, args, fragment):
    work, ckpt = trained
    r = cli("sample", "--checkpoint", ckpt, *args, cwd=work)
    assert_fails(r, 2, fragment)


def test_a_tiny_temperature_samples_like_argmax(trained):
    work, ckpt = trained
    tiny = cli("sample", "--checkpoint", ckpt, "--temp", "1e-320", "-n", "3", "--seed", "1", cwd=work)
    greedy = cli("sample", "--checkpoint", ckpt, "--argmax", cwd=work)  # one sentence: argmax never varies
    assert_ok(tiny)
    assert "Warning" not in tiny.stderr, tiny.stderr  # was a RuntimeWarning and empty samples
    # a 3-step model starts at the unigram distribution: its argmax sentence may be all spaces, not empty
    assert tiny.stdout == greedy.stdout * 3 and greedy.stdout.strip("\n"), (tiny.stdout, greedy.stdout)


# --- sentence-mode memory -------------------------------------------------------------------------

def _one_long_step(max_batch_tokens: int):
    """(params after one step, loss, peak traced bytes) on a batch of 16 lines of ~200 characters."""
    import tracemalloc

    from rnnchar.batches import SentenceBatcher, pad_batch
    from rnnchar.corpus import Corpus
    from rnnchar.data import encode_sentences
    from rnnchar.train import Trainer

    rng = np.random.default_rng(5)
    lines = ["".join(rng.choice(list("abcdefgh "), size=n)) for n in rng.integers(150, 200, size=16)]
    vocab = Vocab("abcdefgh ")
    seqs = encode_sentences(lines, vocab)
    cfg = load_config(None, ["model.hidden_sizes=[24, 16]", "model.embed_size=6", "model.dtype=float64",
                             "data.batch_size=16", f"data.max_batch_tokens={max_batch_tokens}"])
    corpus = Corpus("sentences", vocab, SentenceBatcher(seqs, 16), [], "test")
    corpus.train_batch = lambda step, rng: pad_batch(seqs)
    trainer = Trainer(cfg, Path("unused"), corpus)
    tracemalloc.start()
    loss, n = trainer.train_step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {k: p.w.copy() for k, p in trainer.model.params.items()}, loss, n, peak


def test_long_sentence_batches_run_in_row_groups_with_the_same_step():
    whole, loss, n, peak_whole = _one_long_step(0)
    split, loss_split, n_split, peak_split = _one_long_step(600)  # 3 rows (~600 characters) at a time
    assert n_split == n and loss_split == pytest.approx(loss, rel=1e-12)
    for k in whole:
        np.testing.assert_allclose(split[k], whole[k], rtol=1e-9, atol=1e-12, err_msg=k)
    assert peak_split < 0.4 * peak_whole, (peak_split, peak_whole)


def test_per_line_json_writes_null_for_a_line_with_nothing_to_score(trained):
    work, ckpt = trained
    r = cli("eval", "--checkpoint", ckpt, "--per-line", "--json", "-", cwd=work, input="The cat.\n\nA dog.\n")
    assert_ok(r)

    def no_constants(token):
        raise AssertionError(f"{token} is not JSON")
    scores = [json.loads(out, parse_constant=no_constants)["bits_per_char"] for out in r.stdout.splitlines()]
    assert scores[1] is None and scores[0] > 0 and scores[2] > 0  # was NaN, which is not JSON


def test_stream_row_groups_carry_the_state_like_whole_batches(tmp_path):
    from rnnchar.corpus import load_corpus
    from rnnchar.train import Trainer

    rng = np.random.default_rng(2)
    (tmp_path / "s.txt").write_text("".join(rng.choice(list("abcde \n"), size=4000)), encoding="utf-8")
    runs = []
    for cap in (0, 40):  # 8 streams x 16 steps = 128 characters: groups of 2 streams
        cfg = load_config(None, [f"data.corpus={tmp_path / 's.txt'}", "data.mode=stream", "data.seq_len=16",
                                 "data.batch_size=8", "model.hidden_sizes=[10]", "model.embed_size=4",
                                 "model.dtype=float64", f"data.max_batch_tokens={cap}"])
        trainer = Trainer(cfg, tmp_path, load_corpus(cfg))
        losses = [trainer.train_step()[0] for _ in range(3)]  # the carried state feeds steps 2 and 3
        runs.append((losses, trainer.carry, {k: p.w.copy() for k, p in trainer.model.params.items()}))
    (loss_a, carry_a, params_a), (loss_b, carry_b, params_b) = runs
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-10)
    for layer_a, layer_b in zip(carry_a, carry_b, strict=True):
        for a, b in zip(layer_a, layer_b, strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-12)
    for k in params_a:
        np.testing.assert_allclose(params_b[k], params_a[k], rtol=1e-8, atol=1e-12, err_msg=k)


def test_auto_batch_cap_holds_the_default_models_memory_for_any_model_size():
    from rnnchar.model import AUTO_BATCH_BYTES
    from rnnchar.train import _token_cap

    def cap(*sets):
        cfg = load_config(None, list(sets))
        return _token_cap(cfg, build_model(cfg, 96)), cfg
    default, cfg = cap()
    assert default == 2048  # the default model: the memory of 2,048 characters, as the cap was before
    demo, _ = cap("model.hidden_sizes=[20, 20]", "model.embed_size=5")
    assert demo > 32 * 200  # the RecurrentJS demo model: a batch of 32 long sentences in one pass
    wide, _ = cap("model.hidden_sizes=[512, 512]")
    assert 400 < wide < 600  # 4x the units: about a quarter of the characters
    double, _ = cap("model.dtype=float64")
    assert double == 1024
    assert cap("data.mode=stream")[0] == 0  # B x seq_len is fixed by the config: never split
    assert cap("data.max_batch_tokens=300")[0] == 300 and cap("data.max_batch_tokens=0")[0] == 0
    assert cap("data.mode=stream", "data.max_batch_tokens=40")[0] == 40
    assert build_model(cfg, 96).bytes_per_token() * default <= AUTO_BATCH_BYTES


def test_a_new_run_starts_at_the_training_texts_unigram_and_zero_opts_out(tmp_path):
    from rnnchar.corpus import load_corpus
    from rnnchar.train import Trainer

    text = "abca\nbbba\naab\n" * 5
    (tmp_path / "s.txt").write_text(text, encoding="utf-8")
    for mode in ("sentences", "stream"):
        sets = [f"data.corpus={tmp_path / 's.txt'}", f"data.mode={mode}", "data.val_fraction=0",
                "data.seq_len=4", "data.batch_size=2", "model.hidden_sizes=[4]", "model.dtype=float64"]
        corpus = load_corpus(load_config(None, sets))
        v = corpus.vocab
        counts = corpus.target_counts(len(v))
        by_char = {c: counts[v.encode(c)[0]] for c in "abc"}
        if mode == "sentences":  # every character and each sentence's closing boundary, no opening one
            assert by_char == {"a": 25, "b": 25, "c": 5} and counts[0] == 15 and counts.sum() == 70
        else:  # every character of the running text, the line ends included
            assert by_char == {"a": 25, "b": 25, "c": 5} and counts.sum() == len(text)
        b = Trainer(load_config(None, sets), tmp_path, corpus).model.params["decoder.b"].w[0]
        np.testing.assert_allclose(np.exp(b), (counts + 1) / (counts.sum() + len(v)), rtol=1e-12)
        def bias(*more, sets=sets, corpus=corpus):
            trainer = Trainer(load_config(None, sets + list(more)), tmp_path, corpus)
            return trainer.model.params["decoder.b"].w[0]

        assert not bias("model.decoder_bias=zero").any()
        # auto (the default): the unigram start for the LSTM cells only; unigram asks for it for any cell
        np.testing.assert_array_equal(bias("model.cell=gf-lstm"), b)
        for cell in ("gru", "rnn", "gf-gru", "gf-rnn"):
            assert not bias(f"model.cell={cell}").any()
            np.testing.assert_array_equal(bias(f"model.cell={cell}", "model.decoder_bias=unigram"), b)


def test_counting_a_big_corpus_ids_takes_chunks_not_an_8_byte_copy_of_them():
    """np.bincount widens its input to 8-byte integers: on the memory-mapped ids of a 500 MB corpus
    that was a 4 GB transient at the start of every new run (the unigram start's count)."""
    import tracemalloc

    from rnnchar.corpus import count_ids

    ids = np.random.default_rng(0).integers(0, 70, 8_000_000).astype(np.uint8)
    np.testing.assert_array_equal(count_ids(ids, 80, chunk=1 << 20), np.bincount(ids, minlength=80))
    assert count_ids(ids[:0], 5).tolist() == [0] * 5
    tracemalloc.start()
    try:
        count_ids(ids, 80, chunk=1 << 20)  # (the default chunk, 16M ids: an 8-byte copy of <= 128 MB)
        assert tracemalloc.get_traced_memory()[1] < 16 * 2**20  # a whole copy would be 64 MB
        tracemalloc.reset_peak()
        np.bincount(ids, minlength=80)  # what it replaces: the test can tell
        assert tracemalloc.get_traced_memory()[1] >= 60 * 2**20
    finally:
        tracemalloc.stop()
