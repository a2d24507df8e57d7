"""rnnchar.idcache: a big file encoded chunk by chunk into a cached, memory-mapped id array."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnchar import idcache
from rnnchar.data import DataError, Vocab, read_text
from rnnchar.idcache import encode_file_to_ids


def write(tmp_path: Path, raw: bytes, name: str = "corpus.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(raw)
    return path


SMALL = b"\xef\xbb\xbfa\r\nb\xc3\xa9\r\r\n\xf0\x9d\x84\x9e"  # BOM, a CRLF b é CR CRLF 𝄞
SMALL_IDS = [3, 2, 4, 5, 2, 2, 6]  # "a\nbé\n\n𝄞" with \n=2 a=3 b=4 é=5 𝄞=6


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64])
def test_encode_file_by_hand_for_every_chunk_size(tmp_path, chunk):
    path = write(tmp_path, SMALL)  # chunk 1 and 2 split the CRLFs and every multi-byte character
    vocab, ids = encode_file_to_ids(path, None, 1, cache_dir=None, chunk_chars=chunk)
    assert vocab.chars == ("\n", "a", "b", "é", "\U0001d11e")
    assert ids.tolist() == SMALL_IDS and ids.dtype == np.uint8


def test_encode_file_equals_encoding_the_whole_text(tmp_path):
    rng = np.random.default_rng(0)
    alphabet = list("ab \r\n") + ["\r\n", "é", "ж", "\U0001f600", "\u20ac"]
    text = "".join(rng.choice(alphabet, size=3000))
    path = write(tmp_path, text.encode("utf-8"))
    vocab, ids = encode_file_to_ids(path, None, 1, tmp_path / "cache", chunk_chars=37)
    whole = read_text(path)
    assert vocab == Vocab.build([whole])
    assert isinstance(ids, np.memmap) and not ids.flags.writeable
    assert np.array_equal(ids, vocab.encode(whole))
    given_vocab = Vocab.build(["ab\n"])  # with a given vocabulary the rest is UNKNOWN
    same, ids2 = encode_file_to_ids(path, given_vocab, 1, None, chunk_chars=101)
    assert same is given_vocab and np.array_equal(ids2, given_vocab.encode(whole))


def test_encode_file_min_count(tmp_path):
    vocab, ids = encode_file_to_ids(write(tmp_path, b"aab\n"), None, 2, None)
    assert vocab.chars == ("a",) and ids.tolist() == [2, 2, 1, 1]


def test_encode_file_uses_uint16_for_big_vocabularies(tmp_path):
    text = "".join(chr(0x400 + i) for i in range(300))
    vocab, ids = encode_file_to_ids(write(tmp_path, text.encode()), None, 1, tmp_path, chunk_chars=100)
    assert len(vocab) == 302 and ids.dtype == np.uint16 and ids.tolist() == list(range(2, 302))


def test_encode_file_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    path = write(tmp_path, SMALL)
    cache = tmp_path / "cache"
    vocab, ids = encode_file_to_ids(path, None, 1, cache, chunk_chars=4)
    assert sorted(f.name.split("-")[0] for f in cache.iterdir()) == ["ids", "vocab"]  # and no temp files
    _, ids_given = encode_file_to_ids(path, vocab, 1, cache)  # the same vocab, given (a resume): same entry
    assert ids_given.tolist() == SMALL_IDS
    files = sorted(cache.iterdir())
    assert len(files) == 2
    for f in files:
        os.utime(f, ns=(10**18, 10**18))
    with monkeypatch.context() as m:
        m.setattr(idcache, "_iter_text_chunks", lambda *a: pytest.fail("the cached file was read again"))
        vocab2, ids2 = encode_file_to_ids(path, None, 1, cache, chunk_chars=4)
        vocab3, ids3 = encode_file_to_ids(path, Vocab(vocab.chars), 1, cache)
    assert vocab2 == vocab and ids2.tolist() == SMALL_IDS and ids3.tolist() == SMALL_IDS
    assert [f.stat().st_mtime_ns for f in files] == [10**18] * 2  # not rewritten
    assert sorted(cache.iterdir()) == files
    path.write_bytes(b"ba")
    os.utime(path, ns=(10**9, 10**9))
    vocab4, ids4 = encode_file_to_ids(path, None, 1, cache, chunk_chars=4)
    assert vocab4.chars == ("a", "b") and ids4.tolist() == [3, 2]


@pytest.mark.parametrize("raw, chunk, offset", [
    (b"abc\n" * 100 + b"\xff" + b"z" * 50, 16, 400),  # in a later chunk
    (b"a" * 15 + b"\xe2\x82X", 16, 15),  # the bad sequence starts in the previous chunk
    (b"\xc3\xa9" * 10 + b"\x80", 3, 20),
    (b"ab\xf0\x9d", 1, 2),  # truncated at the end of the file
])
def test_encode_file_reports_the_byte_offset_of_bad_utf8(tmp_path, raw, chunk, offset):
    path = write(tmp_path, raw)
    with pytest.raises(DataError, match=rf"byte offset {offset}\b"):
        encode_file_to_ids(path, None, 1, tmp_path / "cache", chunk_chars=chunk)
    with pytest.raises(DataError, match=rf"byte offset {offset}\b"):
        read_text(path)  # the two readers agree
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_encode_file_missing_directory_and_stdin(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        encode_file_to_ids(tmp_path / "nope.txt", None, 1, None)
    with pytest.raises(DataError, match="directory"):
        encode_file_to_ids(tmp_path, None, 1, None)
    with pytest.raises(DataError, match="stdin"):
        encode_file_to_ids("-", None, 1, None)


@settings(max_examples=40, deadline=None)
@given(st.text(st.sampled_from(list("ab\r\n\ufeff") + ["é", "\U0001d11e"])), st.integers(1, 9))
def test_encode_file_matches_read_text_on_any_text(text, chunk):
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), text.encode("utf-8"))
        vocab, ids = encode_file_to_ids(path, None, 1, None, chunk_chars=chunk)
        whole = read_text(path)
        assert vocab == Vocab.build([whole])
        assert vocab.decode(ids) == whole
