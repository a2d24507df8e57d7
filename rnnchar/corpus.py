"""A training corpus as the loop needs it: vocabulary, training batches, validation batches.

    corpus = load_corpus(cfg)                 # data.corpus, or the bundled sentences
    batch = corpus.train_batch(step, rng)     # (T, B) inputs, targets, mask
    for b in corpus.val_batches(): ...

Sentence mode: each non-empty line is a sentence; a deterministic share
`val_fraction` of the lines (from the seed) is held out, and the vocabulary is
built from the training lines only. Stream mode: the text is one sequence, the
last `val_fraction` of it is held out, and a file is encoded once, chunk by
chunk, into a memory-mapped id array (cached in the run directory), so memory
does not grow with the corpus beyond that array.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .batches import SentenceBatcher, StreamBatcher, sentence_batches, stream_batches
from .bundled import bundled_corpus_path
from .config import Config
from .data import DataError, Vocab, encode_sentences, read_text, sentence_lines, split_train_val
from .fileio import not_regular
from .idcache import encode_file_to_ids


@dataclass
class Corpus:
    mode: str
    vocab: Vocab
    batcher: SentenceBatcher | StreamBatcher
    val: list | np.ndarray          # encoded sentences, or an id array
    source: str
    lines_split: int = 0            # sentence mode: over-long lines cut into pieces

    order: str = "sequential"       # stream mode: sequential (truncated BPTT) or random windows

    @property
    def carries_state(self) -> bool:
        """True when a training batch continues the previous one, so its final hidden state is kept."""
        return self.mode == "stream" and self.order == "sequential"

    def train_batch(self, step: int, rng: np.random.Generator):
        if isinstance(self.batcher, SentenceBatcher):
            return self.batcher.batch(rng)
        return self.batcher.random_batch(rng) if self.order == "random" else self.batcher.batch(step)

    def target_counts(self, V: int) -> np.ndarray:
        """(V,) how often each id is a training target: every training character (stream), every
        character and the closing boundary of every training sentence (sentences)."""
        if isinstance(self.batcher, SentenceBatcher):
            return count_ids(np.concatenate([s[1:] for s in self.batcher.seqs]), V)
        return count_ids(self.batcher.ids, V)

    def train_chars(self) -> int:
        """Training targets: the characters (stream), or every sentence's characters and its boundary."""
        if isinstance(self.batcher, SentenceBatcher):
            return sum(len(s) - 1 for s in self.batcher.seqs)
        return len(self.batcher.ids)

    def chars_per_step(self, batch_size: int, seq_len: int) -> float:
        """Targets in a training batch: B x seq_len (stream), B x the mean sentence's (sentences)."""
        if isinstance(self.batcher, SentenceBatcher):
            return batch_size * self.train_chars() / len(self.batcher.seqs)
        return batch_size * seq_len

    def val_batches(self):
        if self.mode == "stream":
            return stream_batches(self.val) if len(self.val) > 2 else iter(())
        return sentence_batches(self.val)

    def describe(self) -> str:
        n_val = len(self.val) if self.mode == "stream" else sum(len(s) - 1 for s in self.val)
        return (f"corpus {self.source}: {self.mode} mode, vocabulary {len(self.vocab)} "
                f"({len(self.vocab) - 2} characters + boundary + unknown), {n_val:,} validation characters")


def count_ids(ids: np.ndarray, V: int, chunk: int = 1 << 24) -> np.ndarray:
    """(V,) occurrences of each id, chunk by chunk: np.bincount copies its input to 8-byte integers,
    which for the memory-mapped ids of a 500 MB corpus would be a 4 GB transient."""
    counts = np.zeros(V, np.int64)
    for start in range(0, len(ids), chunk):
        counts += np.bincount(ids[start:start + chunk], minlength=V)
    return counts


def corpus_path(cfg: Config) -> str:
    return cfg.data.corpus if cfg.data.corpus is not None else str(bundled_corpus_path())


def _name(path: str) -> str:
    return "stdin (--corpus -)" if path == "-" else path


def _cap_sentences(seqs: list, max_chars: int) -> list:
    if max_chars <= 0:
        return seqs
    total, out = 0, []
    for s in seqs:
        if total >= max_chars:
            break
        out.append(s)
        total += len(s) - 1
    return out


def load_sentences(cfg: Config, path: str, vocab: Vocab | None) -> Corpus:
    d = cfg.data
    lines, n_split = sentence_lines(read_text(path), d.max_line_len)
    if not lines:
        raise DataError(f"{_name(path)}: no sentences (the corpus is empty or holds only whitespace)")
    train_lines, val_lines = split_train_val(lines, d.val_fraction, cfg.train.seed)
    vocab = vocab if vocab is not None else Vocab.build(train_lines, d.min_count)
    batcher = SentenceBatcher(encode_sentences(train_lines, vocab), d.batch_size)
    val = _cap_sentences(encode_sentences(val_lines, vocab), cfg.train.eval_max_chars)
    return Corpus("sentences", vocab, batcher, val, path, n_split)


def load_stream(cfg: Config, path: str, vocab: Vocab | None, cache_dir: Path | None) -> Corpus:
    d = cfg.data
    if path == "-":
        text = read_text(path)
        vocab = vocab if vocab is not None else Vocab.build([text], d.min_count)
        ids = vocab.encode(text)
    else:
        vocab, ids = encode_file_to_ids(path, vocab, d.min_count, cache_dir)
    if len(ids) == 0:
        raise DataError(f"{_name(path)}: the corpus is empty")
    n_val = int(math.floor(len(ids) * d.val_fraction))
    train_ids, val = ids[: len(ids) - n_val], ids[len(ids) - n_val:]
    if cfg.train.eval_max_chars > 0:
        val = val[: cfg.train.eval_max_chars]
    return Corpus("stream", vocab, StreamBatcher(train_ids, d.batch_size, d.seq_len), val, path,
                  order=d.stream_order)


def load_corpus(cfg: Config, vocab: Vocab | None = None, cache_dir: Path | None = None) -> Corpus:
    """Read, split and batch the corpus named by the config; `vocab` given when resuming."""
    path = corpus_path(cfg)
    # /dev/zero or a FIFO would be read forever or twice; a missing file is reported by the reader
    if path != "-" and Path(path).exists() and (why := not_regular(path)) is not None:
        raise DataError(f"the corpus {path} is not a regular file: {why}")
    if cfg.data.mode == "sentences":
        return load_sentences(cfg, path, vocab)
    return load_stream(cfg, path, vocab, cache_dir)
