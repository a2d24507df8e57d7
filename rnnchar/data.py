"""Text -> ids: vocabulary, strict reading, sentence lines, train/val splits.

Encoding a big file chunk by chunk into a memory-mapped cache is in idcache.py; batching in batches.py.
NumPy and the standard library only; nothing prints (functions return counts, callers report).
Input problems a person can fix raise `DataError`, whose message says what and where.

    lines, n_split = sentence_lines(read_text("corpus.txt"), max_len=500)
    vocab = Vocab.build(lines, min_count=1)
    seqs = encode_sentences(lines, vocab)  # one int32 array per sentence, BOUNDARY at both ends
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .fileio import STDIN_CAP, TooLong, not_regular, read_capped

BOUNDARY = 0  # start/end-of-sentence token id
UNKNOWN = 1  # id for characters below min_count or unseen at training time


class DataError(ValueError):
    """A problem with input text a person can fix; the message says what and where."""


def _code_points(text: str) -> np.ndarray:
    """(n,) uint32 code points of `text`, with no Python loop per character."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def count_code_points(texts: Iterable[str], flush_chars: int = 1 << 20) -> np.ndarray:
    """(max code point + 1,) int64 counts; short texts are joined so each bincount sees many chars."""
    counts, pending, n_pending = np.zeros(0, dtype=np.int64), [], 0
    for text in texts:
        pending.append(text)
        n_pending += len(text)
        if n_pending >= flush_chars:
            counts, pending, n_pending = _add_counts(counts, "".join(pending)), [], 0
    return _add_counts(counts, "".join(pending))


def _add_counts(counts: np.ndarray, text: str) -> np.ndarray:
    new = np.bincount(_code_points(text))
    counts = np.pad(counts, (0, max(len(new) - len(counts), 0)))
    counts[: len(new)] += new
    return counts


class Vocab:
    """Known characters, sorted by code point: chars[k] has id k + 2; 0 is BOUNDARY, 1 UNKNOWN."""

    def __init__(self, chars: Iterable[str]):
        chars = list(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1 or 0xD800 <= ord(c) <= 0xDFFF:
                raise ValueError(f"a vocabulary character must be one code point (no surrogate), got {c!r}")
        self.chars: tuple[str, ...] = tuple(sorted(set(chars)))
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)  # (V - 2,) sorted
        self._table = np.concatenate([[0, 0xFFFD], self._codes]).astype("<u4")  # (V,) id -> code point

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1) -> Vocab:
        """Count code points over all texts; characters seen fewer than min_count times are left out."""
        return cls.from_counts(count_code_points(texts), min_count)

    @classmethod
    def from_counts(cls, counts: np.ndarray, min_count: int) -> Vocab:
        """The characters whose count_code_points count reaches min_count (the big-file path)."""
        codes = np.flatnonzero(counts >= max(min_count, 1))
        return cls(chr(c) for c in codes.tolist() if not 0xD800 <= c <= 0xDFFF)  # lone surrogates: UNKNOWN

    def __len__(self) -> int:
        return len(self.chars) + 2

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars

    def __hash__(self) -> int:
        return hash(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """(n,) int32 ids of the n code points of `text`; unknown characters -> UNKNOWN."""
        cps = _code_points(text)  # (n,)
        if len(self._codes) == 0:
            return np.full(len(cps), UNKNOWN, dtype=np.int32)
        pos = np.minimum(np.searchsorted(self._codes, cps), len(self._codes) - 1)  # (n,)
        return np.where(self._codes[pos] == cps, pos + 2, UNKNOWN).astype(np.int32)

    def decode(self, ids) -> str:
        """Text of `ids`: BOUNDARY -> "" and UNKNOWN -> U+FFFD."""
        ids = np.asarray(ids).ravel()
        if ids.size == 0:
            return ""
        if (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= len(self)):
            raise ValueError(f"ids must be integers in 0..{len(self) - 1}")
        return self._table[ids[ids != BOUNDARY]].tobytes().decode("utf-32-le")

    def count_unknown(self, text: str) -> int:
        """How many characters of `text` map to UNKNOWN."""
        return int(np.count_nonzero(self.encode(text) == UNKNOWN))

    def to_array(self) -> np.ndarray:
        """(V - 2,) int64 code points, for the checkpoint."""
        return self._codes.astype(np.int64)

    @classmethod
    def from_array(cls, arr) -> Vocab:
        """Inverse of to_array; DataError unless a 1-D, strictly increasing array of code points."""
        arr = np.asarray(arr)
        if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
            raise DataError(f"vocabulary must be a 1-D integer array, got {arr.dtype} of shape {arr.shape}")
        arr = arr.astype(np.int64)
        if np.any((arr < 0) | (arr > 0x10FFFF)):
            raise DataError("vocabulary holds a value outside the Unicode range 0..0x10FFFF")
        if np.any(np.diff(arr) <= 0):
            raise DataError("vocabulary code points are not strictly increasing")
        if np.any((arr >= 0xD800) & (arr <= 0xDFFF)):
            raise DataError("vocabulary holds a surrogate code point (U+D800..U+DFFF)")
        return cls(map(chr, arr.tolist()))


_WHY = {FileNotFoundError: "no such file", IsADirectoryError: "it is a directory, not a text file",
        PermissionError: "permission denied"}


def read_error(name, err: OSError) -> DataError:
    """The DataError for a file that cannot be read (shared with idcache's chunked reader)."""
    return DataError(f"cannot read {name}: {_WHY.get(type(err), err.strerror or str(err))}")


def utf8_error(name, offset: int, err: UnicodeDecodeError) -> DataError:
    """The DataError for bytes that are not UTF-8, at a byte offset into the whole file."""
    return DataError(f"{name}: not valid UTF-8 at byte offset {offset} (byte 0x{err.object[err.start]:02x}: "
                     f"{err.reason}); convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8")


def normalise_newlines(text: str) -> str:
    """CRLF and lone CR -> LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_bytes(path, name: str):
    """A regular file whole; stdin, a pipe or a device up to STDIN_CAP bytes (TooLong beyond)."""
    if str(path) == "-":
        if sys.stdin is None:  # started with stdin closed (`<&-`)
            raise DataError("cannot read stdin: it is closed; pass a FILE or pipe text into -")
        return read_capped(sys.stdin.buffer, STDIN_CAP, name)
    if not_regular(path) is None or not Path(path).exists():
        return Path(path).read_bytes()  # a missing file: read_bytes raises the error read_error words
    with open(path, "rb") as f:
        return read_capped(f, STDIN_CAP, name)


def read_text(path) -> str:
    """Whole text of a file (or stdin for "-"): strict UTF-8, leading BOM dropped, CRLF/CR -> LF.

    A regular file is read whole; stdin, a pipe or a device at most fileio.STDIN_CAP bytes (DataError
    beyond), so `/dev/zero` cannot exhaust memory.
    """
    name = "<stdin>" if str(path) == "-" else str(path)
    try:
        data = _read_bytes(path, name)
    except OSError as err:
        raise read_error(name, err) from None
    except TooLong as err:
        raise DataError(str(err)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise utf8_error(name, err.start, err) from None
    return normalise_newlines(text.removeprefix("\ufeff"))


def sentence_lines(text: str, max_len: int) -> tuple[list[str], int]:
    """Sentences of `text`, one per line, and how many lines were split.

    Lines are cut at "\\n" only (read_text normalised newlines); trailing whitespace is stripped and
    lines left empty are dropped. Long lines: a line longer than max_len characters is split into
    consecutive pieces of at most max_len characters, each its own sentence, so no text is lost.
    Returns (lines, number_of_lines_split).
    """
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    lines, n_split = [], 0
    for line in text.split("\n"):
        line = line.rstrip()
        n_split += len(line) > max_len
        lines.extend(line[i : i + max_len] for i in range(0, len(line), max_len))
    return lines, n_split


def split_train_val(items: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """(train, val), deterministic from seed; each keeps the original order of its items.

    val gets round(len * val_fraction) items, at least 1 when val_fraction > 0 and len >= 2, and
    at most len - 1 so that train is never empty.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(items)
    n_val = max(round(n * val_fraction), int(val_fraction > 0 and n >= 2))
    is_val = np.zeros(n, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n)[: min(n_val, max(n - 1, 0))]] = True
    train = [x for x, v in zip(items, is_val, strict=True) if not v]
    return train, [x for x, v in zip(items, is_val, strict=True) if v]


def encode_sentences(lines: list[str], vocab: Vocab) -> list[np.ndarray]:
    """Each line -> int32 [BOUNDARY, c1, ..., cn, BOUNDARY], as views into one shared buffer."""
    lengths = np.array([len(line) for line in lines], dtype=np.int64)  # (N,)
    ids = vocab.encode("".join(lines))  # (sum lengths,)
    starts = np.concatenate([[0], np.cumsum(lengths + 2)])  # (N + 1,) where each sentence starts
    buf = np.full(starts[-1], BOUNDARY, dtype=np.int32)
    line_of_char = np.repeat(np.arange(len(lines)), lengths)  # (sum lengths,)
    buf[np.arange(len(ids)) + 2 * line_of_char + 1] = ids
    return [buf[starts[i] : starts[i + 1]] for i in range(len(lines))]
