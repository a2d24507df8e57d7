"""Large stream corpora: encode a file once, chunk by chunk, into a memory-mapped id array.

    vocab, ids = encode_file_to_ids("big.txt", None, min_count=1, cache_dir=Path("runs/x/cache"))

Memory grows with nothing but the id array (uint8 for up to 256 symbols),
which is cached under a hash of the file's path, size, mtime and vocabulary
and written atomically, so a second run maps it without reading the text.
Only numpy and the standard library are imported here.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .data import DataError, Vocab, count_code_points, normalise_newlines, read_error, utf8_error


def _iter_text_chunks(path: Path, chunk_bytes: int) -> Iterator[str]:
    """A file's text chunk by chunk: strict UTF-8, leading BOM dropped, CRLF/CR -> LF."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset, carry, at_start = 0, "", True  # bytes read so far; a held-back trailing "\r"
    try:
        with open(path, "rb") as f:
            while True:
                data = f.read(chunk_bytes)
                pending = len(decoder.getstate()[0])  # undecoded bytes kept from the last chunk
                try:
                    text = decoder.decode(data, final=not data)
                except UnicodeDecodeError as err:
                    raise utf8_error(path, offset - pending + err.start, err) from None
                offset += len(data)
                if at_start and text:
                    text, at_start = text.removeprefix("\ufeff"), False
                text, carry = carry + text, ""
                if data and text.endswith("\r"):  # maybe the first half of a CRLF split by the chunk
                    text, carry = text[:-1], "\r"
                if text:
                    yield normalise_newlines(text)
                if not data:
                    return
    except OSError as err:
        raise read_error(path, err) from None


def _encode_into(out: np.ndarray, path: Path, vocab: Vocab, chunk_chars: int, stat: os.stat_result) -> None:
    """Pass 2: encode the file chunk by chunk into `out`, which pass 1 sized."""
    pos = 0
    for text in _iter_text_chunks(path, chunk_chars):
        ids = vocab.encode(text)  # (chunk,)
        if pos + len(ids) > len(out):
            break
        out[pos : pos + len(ids)] = ids
        pos += len(ids)
    now = path.stat()
    if pos != len(out) or (now.st_size, now.st_mtime_ns) != (stat.st_size, stat.st_mtime_ns):
        raise DataError(f"{path} changed while it was being encoded; try again")


def _save_atomically(final: Path, write) -> None:
    """write(tmp) then rename tmp over final, so no reader ever sees a half-written cache file."""
    tmp = final.with_name(f".{final.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npy")
    try:
        write(tmp)
        os.replace(tmp, final)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise DataError(f"cannot write the id cache {final}: {err.strerror or err}") from err
        raise


def _write_memmap(tmp: Path, n: int, dtype, path: Path, vocab: Vocab, chunk_chars: int, stat) -> None:
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n,))
    _encode_into(out, path, vocab, chunk_chars, stat)
    out.flush()
    del out  # unmap before the rename


def _cache_paths(path: Path, stat: os.stat_result, vocab: Vocab | None, min_count: int, cache_dir) -> tuple:
    """cache_dir/{ids,vocab}-<hash of absolute path, size, mtime_ns and vocab (or min_count)>.npy"""
    where = f"rnnchar-ids-v1\0{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0"
    h = hashlib.sha256(where.encode("utf-8", "surrogateescape"))
    h.update(f"min_count={min_count}".encode() if vocab is None else vocab.to_array().tobytes())
    key = h.hexdigest()[:24]
    return Path(cache_dir) / f"ids-{key}.npy", Path(cache_dir) / f"vocab-{key}.npy"


def _load_cache(ids_path: Path, vocab_path: Path, vocab: Vocab | None) -> tuple[Vocab, np.ndarray] | None:
    if not ids_path.exists() or (vocab is None and not vocab_path.exists()):
        return None
    try:
        if vocab is None:
            vocab = Vocab.from_array(np.load(vocab_path, allow_pickle=False))
        return vocab, np.load(ids_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None  # unreadable cache: encode again over it


def encode_file_to_ids(path, vocab: Vocab | None, min_count: int, cache_dir,
                       chunk_chars: int = 1 << 22) -> tuple[Vocab, np.ndarray]:
    """(vocab, ids) of a large file read in chunks of chunk_chars bytes; memory grows only with ids.

    Pass 1 decodes the file (strict UTF-8, BOM dropped, CRLF/CR -> LF) to count its characters and,
    if vocab is None, to build the Vocab with min_count. Pass 2 encodes it chunk by chunk into
    cache_dir/ids-<hash>.npy (uint8/uint16/int32 by vocabulary size), returned memory-mapped
    read-only. The hash covers the absolute path, size, mtime_ns and vocab (or min_count; the built
    vocab is then cached beside the ids), so a second call reuses the cache without reading the
    file. Cache files are written atomically. With cache_dir None the ids are an in-memory array.
    """
    if str(path) == "-":
        raise DataError("a stream corpus to encode must be a file, not stdin (-)")
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as err:
        raise read_error(path, err) from None
    if cache_dir is not None:
        ids_path, vocab_path = _cache_paths(path, stat, vocab, min_count, cache_dir)
        if (cached := _load_cache(ids_path, vocab_path, vocab)) is not None:
            return cached
    built = vocab is None
    if built:  # pass 1: count the characters (and each code point, for the vocab)
        counts = count_code_points(_iter_text_chunks(path, chunk_chars))
        vocab, n = Vocab.from_counts(counts, min_count), int(counts.sum())
    else:
        n = sum(len(text) for text in _iter_text_chunks(path, chunk_chars))
    dtype = np.uint8 if len(vocab) <= 256 else np.uint16 if len(vocab) <= 65536 else np.int32
    if cache_dir is None:
        out = np.empty(n, dtype=dtype)  # (n,)
        _encode_into(out, path, vocab, chunk_chars, stat)
        return vocab, out
    try:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the cache directory {cache_dir}: {err.strerror or err}") from None
    _save_atomically(ids_path, lambda tmp: _write_memmap(tmp, n, dtype, path, vocab, chunk_chars, stat))
    if built:
        _save_atomically(vocab_path, lambda tmp: np.save(tmp, vocab.to_array()))
    return vocab, np.load(ids_path, mmap_mode="r", allow_pickle=False)
