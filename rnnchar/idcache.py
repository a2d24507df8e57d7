"""Large stream corpora: encode a file once, chunk by chunk, into a memory-mapped id array.

    vocab, ids = encode_file_to_ids("big.txt", None, min_count=1, cache_dir=Path("runs/x/cache"))

Memory grows with nothing but the id array (uint8 for up to 256 symbols),
which is cached under a hash of the file's content and vocabulary and written
atomically with ordinary writes (a full disk is an error, not a crash), so a
second run (or a resume) maps it after one hashing read of the text.
Only numpy and the standard library are imported here.
"""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .data import DataError, Vocab, count_code_points, normalise_newlines, read_error, utf8_error
from .fileio import not_regular, write_atomically


def _iter_text_chunks(path: Path, chunk_bytes: int, digest=None) -> Iterator[str]:
    """A file's text chunk by chunk: strict UTF-8, leading BOM dropped, CRLF/CR -> LF.

    `digest` (a hashlib object), if given, is fed every byte read.
    """
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset, carry, at_start = 0, "", True  # bytes read so far; a held-back trailing "\r"
    try:
        with open(path, "rb") as f:
            while True:
                data = f.read(chunk_bytes)
                if digest is not None:
                    digest.update(data)
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


def _content_digest(path: Path, chunk_bytes: int) -> str:
    """blake2b of the file's bytes: the cache key, so a rewritten file is never mistaken for the old."""
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            while data := f.read(chunk_bytes):
                h.update(data)
    except OSError as err:
        raise read_error(path, err) from None
    return h.hexdigest()


def _id_dtype(vocab: Vocab) -> np.dtype:
    return np.dtype(np.uint8 if len(vocab) <= 256 else np.uint16 if len(vocab) <= 65536 else np.int32)


def _encode_chunks(path: Path, vocab: Vocab, n: int, chunk_chars: int, digest: str) -> Iterator[np.ndarray]:
    """Pass 2: the file's ids chunk by chunk (id dtype); DataError if it is not the file pass 1 read."""
    h, pos = hashlib.blake2b(digest_size=16), 0
    for text in _iter_text_chunks(path, chunk_chars, h):
        ids = vocab.encode(text).astype(_id_dtype(vocab))  # (chunk,)
        pos += len(ids)
        if pos > n:
            break
        yield ids
    if pos != n or h.hexdigest() != digest:
        raise DataError(f"{path} changed while it was being encoded; try again")


def _write_ids(f: BinaryIO, chunks: Iterator[np.ndarray], n: int, dtype: np.dtype) -> None:
    """An .npy file of n ids written with ordinary writes: a full disk is an OSError, never SIGBUS."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (n,)}
    np.lib.format.write_array_header_1_0(f, header)
    for ids in chunks:
        f.write(ids.tobytes())


def _save_atomically(final: Path, write: Callable[[BinaryIO], object]) -> None:
    """write(f) into a temporary file renamed over final, so no reader ever sees a half-written cache
    file; a Ctrl-C or SIGTERM (KeyboardInterrupt in the CLI) removes it, a failed write is a DataError."""
    try:
        write_atomically(final, write, suffix=".tmp.npy")  # `.*.tmp.npy`: what RunLock sweeps in cache/
    except OSError as err:
        raise DataError(f"cannot write the id cache {final}: {err.strerror or err}") from err


def _key(digest: str, what: str | bytes) -> str:
    """24 hex digits of a hash of the content digest and the vocabulary (or min_count)."""
    h = hashlib.sha256(f"rnnchar-ids-v2\0{digest}\0".encode())
    h.update(what if isinstance(what, bytes) else what.encode())
    return h.hexdigest()[:24]


def _ids_path(cache_dir: Path, digest: str, vocab: Vocab) -> Path:
    return cache_dir / f"ids-{_key(digest, vocab.to_array().tobytes())}.npy"


def _load_vocab(vocab_path: Path) -> Vocab | None:
    try:
        return Vocab.from_array(np.load(vocab_path, allow_pickle=False))
    except (OSError, ValueError):
        return None  # missing or unreadable: build it again


def _load_ids(ids_path: Path, vocab: Vocab) -> np.ndarray | None:
    """The cached ids, or None when missing or not what this cache writes (a tampered or foreign file)."""
    try:
        ids = np.load(ids_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if ids.ndim != 1 or ids.dtype != _id_dtype(vocab) or (len(ids) and int(ids.max()) >= len(vocab)):
        return None  # encode again over it
    return ids


def _remove_stale(cache_dir: Path, keep: set[Path]) -> None:
    """Cache files of another corpus, vocabulary or cache version: one corpus per run directory."""
    for old in [*cache_dir.glob("ids-*.npy"), *cache_dir.glob("vocab-*.npy")]:
        if old not in keep:
            old.unlink(missing_ok=True)


def encode_file_to_ids(path, vocab: Vocab | None, min_count: int, cache_dir,
                       chunk_chars: int = 1 << 22) -> tuple[Vocab, np.ndarray]:
    """(vocab, ids) of a large file read in chunks of chunk_chars bytes; memory grows only with ids.

    The file must be a regular file (it is read more than once). A first pass hashes its bytes
    (blake2b): the cache key is that content hash and the vocabulary (or min_count, when the vocab
    is built and cached beside the ids), never the path or mtime. On a miss, pass 1 decodes the file
    (strict UTF-8, BOM dropped, CRLF/CR -> LF) to count its characters and, if vocab is None, build
    the Vocab with min_count; pass 2 encodes it chunk by chunk into cache_dir/ids-<key>.npy
    (uint8/uint16/int32 by vocabulary size) with ordinary writes, returned memory-mapped read-only.
    A resumed run (vocab given) finds the same file as the run that built the vocab. Cache files are
    written atomically; a tampered one is rebuilt; files of other corpora are removed. With cache_dir
    None the ids are an in-memory array.
    """
    if str(path) == "-":
        raise DataError("a stream corpus to encode must be a file, not stdin (-)")
    path = Path(path)
    if path.exists() and (why := not_regular(path)) is not None:  # a FIFO blocks pass 2, /dev/zero never ends
        raise DataError(f"{path} is not a regular file: {why}")
    digest = _content_digest(path, chunk_chars)
    cache_dir = Path(cache_dir) if cache_dir is not None else None
    vocab_key = _key(digest, f"min_count={min_count}")
    vocab_path = None if cache_dir is None else cache_dir / f"vocab-{vocab_key}.npy"
    use = vocab if vocab is not None or vocab_path is None else _load_vocab(vocab_path)
    if use is not None and cache_dir is not None:
        if (ids := _load_ids(_ids_path(cache_dir, digest, use), use)) is not None:
            return use, ids
    built = use is None
    if built:  # pass 1: count the characters (and each code point, for the vocab)
        counts = count_code_points(_iter_text_chunks(path, chunk_chars))
        use, n = Vocab.from_counts(counts, min_count), int(counts.sum())
    else:
        n = sum(len(text) for text in _iter_text_chunks(path, chunk_chars))
    dtype = _id_dtype(use)
    chunks = _encode_chunks(path, use, n, chunk_chars, digest)
    if cache_dir is None:
        return use, np.concatenate([np.zeros(0, dtype), *chunks])
    ids_path = _ids_path(cache_dir, digest, use)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the cache directory {cache_dir}: {err.strerror or err}") from None
    _save_atomically(ids_path, lambda f: _write_ids(f, chunks, n, dtype))
    if built:
        _save_atomically(vocab_path, lambda f: np.save(f, use.to_array()))
    _remove_stale(cache_dir, {ids_path, vocab_path})
    return use, np.load(ids_path, mmap_mode="r", allow_pickle=False)
