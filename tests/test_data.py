"""rnnchar.data against hand-computed ids, batches and file handling, plus hypothesis properties."""

from __future__ import annotations

import io
import math
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnchar.batches import SentenceBatcher, StreamBatcher, pad_batch
from rnnchar.data import (
    BOUNDARY,
    UNKNOWN,
    DataError,
    Vocab,
    encode_sentences,
    read_text,
    sentence_lines,
    split_train_val,
)


def write(tmp_path: Path, raw: bytes, name: str = "corpus.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(raw)
    return path


def columns(batch, vocab: Vocab) -> list[str]:
    """The sentence each column of a sentence batch predicts, read from its masked targets."""
    out = []
    for b in range(batch.targets.shape[1]):
        n = int(batch.mask[:, b].sum())
        assert np.all(batch.mask[:n, b] == 1) and np.all(batch.mask[n:, b] == 0), "mask is not a prefix"
        assert batch.targets[n - 1, b] == BOUNDARY, "a sentence must end by predicting BOUNDARY"
        out.append(vocab.decode(batch.targets[: n - 1, b]))
    return out


# ---------------------------------------------------------------- Vocab


def test_vocab_ids_are_sorted_characters_after_boundary_and_unknown():
    vocab = Vocab.build(["cab", "b"])
    assert (BOUNDARY, UNKNOWN) == (0, 1)
    assert vocab.chars == ("a", "b", "c")
    assert len(vocab) == 5
    assert vocab.encode("abcz").tolist() == [2, 3, 4, 1]
    assert vocab.encode("abcz").dtype == np.int32
    assert vocab.encode("").shape == (0,)


def test_vocab_constructor_sorts_deduplicates_and_rejects_non_characters():
    assert Vocab(["b", "a", "b"]).chars == ("a", "b")
    with pytest.raises(ValueError):
        Vocab(["ab"])
    with pytest.raises(ValueError):
        Vocab(["\ud800"])


def test_vocab_min_count_counts_over_all_texts():
    vocab = Vocab.build(["aab", "ac a"], min_count=2)  # a: 4, b: 1, c: 1, space: 1
    assert vocab.chars == ("a",)
    assert vocab.encode("abc a").tolist() == [2, 1, 1, 1, 2]
    assert vocab.count_unknown("abc a") == 3
    assert Vocab.build(["b", "b", "c"], min_count=2).chars == ("b",)  # 2 counts from 2 texts


def test_unseen_characters_are_unknown_and_counted():
    vocab = Vocab.build(["hello"])  # e=2 h=3 l=4 o=5
    assert vocab.encode("help!").tolist() == [3, 2, 4, 1, 1]
    assert vocab.count_unknown("help!") == 2
    assert vocab.count_unknown("hello") == 0


def test_decode_drops_boundary_and_shows_unknown_as_replacement_char():
    vocab = Vocab.build(["hello"])
    assert vocab.decode([0, 3, 2, 4, 1, 0]) == "hel\ufffd"
    assert vocab.decode(np.array([[3], [5]], dtype=np.uint8)) == "ho"
    assert vocab.decode([]) == ""
    with pytest.raises(ValueError):
        vocab.decode([6])
    with pytest.raises(ValueError):
        vocab.decode([-1])


def test_characters_outside_the_bmp_are_one_character_each():
    vocab = Vocab.build(["a\U0001d11e\U0001f600"])  # 𝄞 = U+1D11E sorts before 😀 = U+1F600
    assert vocab.chars == ("a", "\U0001d11e", "\U0001f600")
    assert vocab.encode("\U0001f600a\U0001d11ex").tolist() == [4, 2, 3, 1]
    assert vocab.decode([4, 2, 3]) == "\U0001f600a\U0001d11e"
    assert vocab.to_array().tolist() == [0x61, 0x1D11E, 0x1F600]


def test_to_array_from_array_round_trip_through_npz(tmp_path):
    vocab = Vocab.build(["\n Zaé\U0001f600"])
    arr = vocab.to_array()
    assert arr.dtype == np.int64 and arr.tolist() == [10, 32, 90, 97, 233, 0x1F600]
    np.savez(tmp_path / "v.npz", vocab=arr)
    with np.load(tmp_path / "v.npz", allow_pickle=False) as f:
        again = Vocab.from_array(f["vocab"])
    assert again == vocab and again.chars == vocab.chars
    assert len(Vocab.from_array(np.array([], dtype=np.int64))) == 2


@pytest.mark.parametrize("bad", [
    np.array([[97, 98]]),  # 2-D
    np.array([97.0, 98.0]),  # float
    np.array(["a", "b"]),  # strings
    np.array([-1, 97]),  # negative
    np.array([97, 0x110000]),  # beyond Unicode
    np.array([98, 97]),  # not increasing
    np.array([97, 97]),  # duplicate
    np.array([97, 0xD800]),  # surrogate
])
def test_from_array_rejects_bad_arrays(bad):
    with pytest.raises(DataError):
        Vocab.from_array(bad)


@given(st.text())
def test_encode_decode_round_trip_on_any_text(text):
    vocab = Vocab.build([text])
    ids = vocab.encode(text)
    assert len(ids) == len(text)
    assert vocab.chars == tuple(sorted(set(text)))
    assert ids.tolist() == [vocab.chars.index(c) + 2 for c in text]  # per-character reference
    assert vocab.decode(ids) == text


@given(st.text(), st.text())
def test_encode_of_other_text_matches_a_per_character_reference(seen, other):
    vocab = Vocab.build([seen])
    known = sorted(set(seen))
    assert vocab.encode(other).tolist() == [known.index(c) + 2 if c in known else UNKNOWN for c in other]
    assert vocab.count_unknown(other) == sum(c not in known for c in other)


# ---------------------------------------------------------------- read_text


def test_read_text_normalises_crlf_and_lone_cr(tmp_path):
    assert read_text(write(tmp_path, b"a\r\nb\rc\n\r\n")) == "a\nb\nc\n\n"


def test_read_text_strips_only_a_leading_bom(tmp_path):
    assert read_text(write(tmp_path, b"\xef\xbb\xbfa\xef\xbb\xbfb")) == "a\ufeffb"


@pytest.mark.parametrize("raw, offset", [
    (b"ok\n\xffrest", 3),
    (b"caf\xc3\xa9 \xe2\x82X", 6),  # a valid 2-byte char first; the bad sequence starts at byte 6
    (b"abc\xe2\x82", 3),  # truncated at end of file
])
def test_read_text_reports_the_byte_offset_of_bad_utf8(tmp_path, raw, offset):
    path = write(tmp_path, raw)
    with pytest.raises(DataError, match=rf"byte offset {offset}\b") as info:
        read_text(path)
    assert str(path) in str(info.value)


def test_read_text_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_text(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="directory"):
        read_text(tmp_path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read anything")
def test_read_text_permission_denied(tmp_path):
    path = write(tmp_path, b"secret")
    path.chmod(0)
    with pytest.raises(DataError, match="permission denied"):
        read_text(path)


def test_read_text_dash_reads_stdin_bytes(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\xef\xbb\xbfx\r\ny\xc3\xa9")))
    assert read_text("-") == "x\nyé"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"ab\x80")))
    with pytest.raises(DataError, match=r"<stdin>.*byte offset 2"):
        read_text("-")


# ---------------------------------------------------------------- sentence_lines, split_train_val


def test_sentence_lines_drops_blank_lines_and_strips_trailing_whitespace():
    lines = sentence_lines("  lead\nsecond  \n\n \t \nthird\n", max_len=100)
    assert lines == (["  lead", "second", "third"], 0)


def test_sentence_lines_splits_long_lines_and_counts_them():
    lines, n_split = sentence_lines("abcdefg\nhi\nabcdef\nxyz", max_len=3)
    assert lines == ["abc", "def", "g", "hi", "abc", "def", "xyz"]  # "xyz" is exactly max_len: kept
    assert n_split == 2
    with pytest.raises(ValueError):
        sentence_lines("a", max_len=0)


def test_split_train_val_sizes_order_and_completeness():
    items = [f"s{i}" for i in range(100)][::-1]
    train, val = split_train_val(items, 0.1, seed=3)
    assert len(val) == 10 and len(train) == 90
    assert sorted(train + val) == sorted(items) and not set(train) & set(val)
    assert train == [x for x in items if x not in val]  # original order kept
    assert val == [x for x in items if x in val]
    perm = np.random.default_rng(3).permutation(100)[:10]  # the documented, stable recipe
    assert set(val) == {items[i] for i in perm}


def test_split_train_val_is_deterministic_per_seed():
    items = list(range(50))
    assert split_train_val(items, 0.2, seed=1) == split_train_val(items, 0.2, seed=1)
    assert split_train_val(items, 0.2, seed=1)[1] != split_train_val(items, 0.2, seed=2)[1]


def test_split_train_val_edge_sizes():
    assert len(split_train_val(list(range(5)), 0.01, seed=0)[1]) == 1  # round(0.05) = 0, but at least 1
    assert split_train_val([7], 0.5, seed=0) == ([7], [])  # a single item stays in train
    assert split_train_val([1, 2], 0.9, seed=0)[0] != []  # train is never emptied
    assert split_train_val([1, 2, 3], 0.0, seed=0) == ([1, 2, 3], [])
    with pytest.raises(ValueError):
        split_train_val([1, 2], 1.0, seed=0)


# ---------------------------------------------------------------- sentences: encode, pad, batch


def test_encode_sentences_and_pad_batch_by_hand():
    vocab = Vocab.build(["abc"])  # a=2 b=3 c=4
    seqs = encode_sentences(["ab", "c"], vocab)
    assert [s.tolist() for s in seqs] == [[0, 2, 3, 0], [0, 4, 0]]
    assert all(s.dtype == np.int32 for s in seqs)
    batch = pad_batch(seqs)
    assert batch.inputs.tolist() == [[0, 0], [2, 4], [3, 0]]  # (T=3, B=2), time-major
    assert batch.targets.tolist() == [[2, 4], [3, 0], [0, 0]]
    assert batch.mask.tolist() == [[1, 1], [1, 1], [1, 0]]
    assert batch.mask.dtype == np.float32 and batch.reset is True
    assert batch.n_chars == 5  # "ab" + end, "c" + end


def make_corpus(n: int, max_len: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list("abcde"), size=k)) for k in rng.integers(1, max_len + 1, size=n)]


def test_sentence_batch_shapes_padding_and_alignment():
    lines = make_corpus(300, 60)
    vocab = Vocab.build(lines)
    batcher = SentenceBatcher(encode_sentences(lines, vocab), batch_size=8)
    batch = batcher.batch(np.random.default_rng(0))
    T = batch.inputs.shape[0]
    assert batch.inputs.shape == batch.targets.shape == batch.mask.shape == (T, 8)
    got = columns(batch, vocab)
    assert T == max(len(s) for s in got) + 1
    assert all(s in lines for s in got)
    pad = batch.mask == 0
    assert np.all(batch.inputs[pad] == BOUNDARY) and np.all(batch.targets[pad] == BOUNDARY)
    assert np.all(batch.inputs[0] == BOUNDARY)
    follow = batch.mask[1:] == 1
    assert np.all(batch.targets[:-1][follow] == batch.inputs[1:][follow])
    assert batch.n_chars == sum(len(s) + 1 for s in got)


def test_same_rng_state_gives_the_same_batch_and_batches_vary():
    lines = make_corpus(200, 30)
    batcher = SentenceBatcher(encode_sentences(lines, Vocab.build(lines)), batch_size=4)
    rng = np.random.default_rng(11)
    state = rng.bit_generator.state
    first = batcher.batch(rng)
    rng.bit_generator.state = state
    again = batcher.batch(rng)
    assert np.array_equal(first.inputs, again.inputs) and np.array_equal(first.mask, again.mask)
    others = [batcher.batch(rng).inputs for _ in range(5)]
    assert not all(o.shape == first.inputs.shape and np.array_equal(o, first.inputs) for o in others)


def test_length_bucketing_wastes_little_padding():
    lines = make_corpus(2000, 120, seed=1)
    seqs = encode_sentences(lines, Vocab.build(lines))
    rng = np.random.default_rng(0)
    fill = np.mean([SentenceBatcher(seqs, 16).batch(rng).mask.mean() for _ in range(200)])
    assert fill > 0.8
    unbucketed = np.mean([pad_batch([seqs[i] for i in rng.choice(2000, 16, replace=False)]).mask.mean()
                          for _ in range(200)])
    assert unbucketed < 0.7  # the check above can fail: random batches waste far more


def test_every_sentence_is_equally_likely_including_shortest_and_longest():
    lines = ["x" * k for k in range(1, 41)]  # the length identifies the sentence
    batcher = SentenceBatcher(encode_sentences(lines, Vocab.build(lines)), batch_size=4)
    rng = np.random.default_rng(123)
    hits = Counter()
    for _ in range(4000):
        batch = batcher.batch(rng)
        n = batch.mask.sum(axis=0).astype(int) - 1  # (B,) lengths of the chosen sentences
        assert len(set(n.tolist())) == 4, "a batch must hold B distinct sentences"
        hits.update(n.tolist())
    assert len(hits) == 40
    assert all(300 <= c <= 500 for c in hits.values()), hits  # expected 4000 * 4 / 40 = 400 each


def test_iter_all_covers_every_sentence_once_in_length_order():
    lines = make_corpus(53, 25, seed=4)
    vocab = Vocab.build(lines)
    batches = list(SentenceBatcher(encode_sentences(lines, vocab), batch_size=10).iter_all())
    assert [b.inputs.shape[1] for b in batches] == [10, 10, 10, 10, 10, 3]
    got = [s for b in batches for s in columns(b, vocab)]
    assert Counter(got) == Counter(lines)
    assert [len(s) for s in got] == sorted(len(s) for s in lines)


def test_sentence_batcher_errors_say_what_is_wrong():
    seqs = encode_sentences(["a", "b", "c"], Vocab.build(["abc"]))
    with pytest.raises(DataError, match=r"batch_size 5 .*\(3\)"):
        SentenceBatcher(seqs, batch_size=5)
    with pytest.raises(DataError, match="no sentences"):
        SentenceBatcher([], batch_size=1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(), min_size=1, max_size=12), st.integers(1, 9), st.integers(1, 5),
       st.integers(0, 2**32))
def test_sentence_batches_of_any_text(parts, max_len, batch_size, seed):
    lines, _ = sentence_lines("\n".join(parts), max_len)
    if not lines:
        with pytest.raises(DataError):
            SentenceBatcher(encode_sentences(lines, Vocab.build(lines)), batch_size=1)
        return
    vocab = Vocab.build(lines)
    B = min(batch_size, len(lines))
    batcher = SentenceBatcher(encode_sentences(lines, vocab), B)
    batches = [*batcher.iter_all(), batcher.batch(np.random.default_rng(seed))]
    for batch in batches:
        T = max(len(s) for s in columns(batch, vocab)) + 1
        assert batch.inputs.shape == batch.targets.shape == batch.mask.shape == (T, batch.inputs.shape[1])
        follow = batch.mask[1:] == 1
        assert np.all(batch.targets[:-1][follow] == batch.inputs[1:][follow])
        assert batch.reset
    assert sum(b.n_chars for b in batches[:-1]) == sum(len(s) + 1 for s in lines)  # chars + end boundaries
    assert Counter(s for b in batches[:-1] for s in columns(b, vocab)) == Counter(lines)
    assert batches[-1].inputs.shape[1] == B


# ---------------------------------------------------------------- streams


def test_stream_windows_by_hand():
    batcher = StreamBatcher(np.arange(23), batch_size=3, seq_len=3)  # L = 22 // 3 = 7: windows 3, 3, 1
    assert batcher.windows_per_epoch == 3
    w0, w1, w2 = batcher.iter_all()
    assert w0.inputs.tolist() == [[0, 7, 14], [1, 8, 15], [2, 9, 16]]
    assert w0.targets.tolist() == [[1, 8, 15], [2, 9, 16], [3, 10, 17]]
    assert w1.inputs.tolist() == [[3, 10, 17], [4, 11, 18], [5, 12, 19]]
    assert w2.inputs.tolist() == [[6, 13, 20]] and w2.targets.tolist() == [[7, 14, 21]]  # short last
    assert [w.reset for w in (w0, w1, w2)] == [True, False, False]
    assert np.array_equal(w1.inputs[0], w0.targets[-1])  # each stream continues: carry the state
    assert w0.mask.tolist() == [[1.0] * 3] * 3 and w2.n_chars == 3
    assert w0.inputs.dtype == np.int32
    again = batcher.batch(3)  # the next epoch starts over, statelessly
    assert again.reset and np.array_equal(again.inputs, w0.inputs)
    assert np.array_equal(batcher.batch(4).inputs, w1.inputs) and not batcher.batch(4).reset


def test_stream_batcher_reads_a_memmap(tmp_path):
    np.save(tmp_path / "ids.npy", np.arange(2, 42, dtype=np.uint8))
    ids = np.load(tmp_path / "ids.npy", mmap_mode="r")
    batch = StreamBatcher(ids, batch_size=2, seq_len=5).batch(1)  # L = 19
    assert batch.inputs.dtype == np.int32
    assert batch.inputs[:, 0].tolist() == [7, 8, 9, 10, 11]
    assert batch.inputs[:, 1].tolist() == [26, 27, 28, 29, 30]


def test_stream_too_short_says_how_much_is_needed():
    with pytest.raises(DataError, match=r"(?s)13.*12.*smaller batch_size or seq_len"):
        StreamBatcher(np.arange(12), batch_size=3, seq_len=4)
    assert StreamBatcher(np.arange(13), batch_size=3, seq_len=4).windows_per_epoch == 1


@settings(max_examples=80, deadline=None)
@given(st.text(min_size=2), st.data())
def test_stream_batches_of_any_text(text, draw):
    vocab = Vocab.build([text])
    ids = vocab.encode(text)
    B = draw.draw(st.integers(1, min(4, len(ids) - 1)))
    T = draw.draw(st.integers(1, (len(ids) - 1) // B))
    batcher = StreamBatcher(ids, B, T)
    L = (len(ids) - 1) // B
    batches = list(batcher.iter_all())
    assert len(batches) == batcher.windows_per_epoch == math.ceil(L / T)
    assert [b.inputs.shape for b in batches] == [(T, B)] * (L // T) + [(L % T, B)] * (L % T > 0)
    assert [b.reset for b in batches] == [True] + [False] * (len(batches) - 1)
    assert sum(b.n_chars for b in batches) == B * L
    inputs = np.concatenate([b.inputs for b in batches])  # (L, B)
    targets = np.concatenate([b.targets for b in batches])
    for b in range(B):
        assert vocab.decode(inputs[:, b]) == text[b * L : (b + 1) * L]
        assert vocab.decode(targets[:, b]) == text[b * L + 1 : (b + 1) * L + 1]
    assert np.array_equal(targets[:-1], inputs[1:])  # every target is the next input


def test_stream_random_batch_windows_are_contiguous_and_reproducible():
    ids = np.arange(1000, dtype=np.int64) % 251  # position recoverable from each id's neighbours
    sb = StreamBatcher(ids, batch_size=5, seq_len=7)
    b = sb.random_batch(np.random.default_rng(3))
    assert b.inputs.shape == (7, 5) and b.reset and b.mask.all()
    assert np.array_equal(b.targets[:-1], b.inputs[1:])  # each column is one contiguous window
    assert np.all((b.inputs[1:] - b.inputs[:-1]) % 251 == 1)
    again = sb.random_batch(np.random.default_rng(3))
    assert np.array_equal(again.inputs, b.inputs)
    other = sb.random_batch(np.random.default_rng(4))
    assert not np.array_equal(other.inputs, b.inputs)
