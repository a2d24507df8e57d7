"""Ids -> batches: padded sentence batches and parallel streams (truncated BPTT), for training and scoring.

Every batch is time-major (T, B) int32 ids with a float32 mask; nothing here reads files or prints.

    from rnnchar.data import Vocab, encode_sentences
    seqs = encode_sentences(["The cat.", "A dog ran."], Vocab.build(["The cat.", "A dog ran."]))
    batch = SentenceBatcher(seqs, batch_size=2).batch(np.random.default_rng(0))  # (T, B) = (10, 2)
    windows = list(stream_batches(np.arange(100, dtype=np.int32) % 7, streams=4, seq_len=8))
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .data import BOUNDARY, DataError

EVAL_BATCH = 32  # sentences or parallel streams scored at once (validation, eval)
EVAL_SEQ = 256  # window length when scoring a stream (state carried across windows)


@dataclass
class Batch:
    """One batch, time-major: targets[t] is what the model should predict after reading inputs[t]."""

    inputs: np.ndarray  # (T, B) int32 ids
    targets: np.ndarray  # (T, B) int32 ids
    mask: np.ndarray  # (T, B) float32: 1.0 where a target is predicted, 0.0 for padding
    reset: bool  # True: the caller must start from a zero hidden state

    @property
    def n_chars(self) -> int:
        """Number of predicted characters (= mask.sum())."""
        return int(np.count_nonzero(self.mask))


def pad_batch(seqs: list[np.ndarray]) -> Batch:
    """Batch of encoded sentences: inputs seq[:-1], targets seq[1:], padded with masked BOUNDARY."""
    if not seqs or min(len(s) for s in seqs) < 2:
        raise ValueError("pad_batch needs at least one sequence, each of at least 2 ids")
    T, B = max(len(s) for s in seqs) - 1, len(seqs)
    inputs = np.full((T, B), BOUNDARY, dtype=np.int32)  # (T, B)
    targets = np.full((T, B), BOUNDARY, dtype=np.int32)  # (T, B)
    mask = np.zeros((T, B), dtype=np.float32)  # (T, B)
    for b, seq in enumerate(seqs):
        n = len(seq) - 1
        inputs[:n, b], targets[:n, b], mask[:n, b] = seq[:-1], seq[1:], 1.0
    return Batch(inputs, targets, mask, reset=True)


class SentenceBatcher:
    """Random batches of B sentences of similar length; no state but the caller's rng.

    Sentences are kept sorted by length. A batch cuts that order into buckets of ~4B neighbours at
    a random offset, picks a bucket with probability proportional to its size, then B distinct
    sentences in it: little padding, random composition, and each sentence has the same chance
    B/N to be in a batch (the shortest and longest ones are not under-sampled).
    """

    def __init__(self, seqs: list[np.ndarray], batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not seqs:
            raise DataError("no sentences to batch: the corpus has no non-empty lines")
        if batch_size > len(seqs):
            raise DataError(f"batch_size {batch_size} is larger than the number of sentences ({len(seqs)}); "
                            "use a smaller batch_size or a bigger corpus")
        self.seqs, self.batch_size = seqs, batch_size
        self._order = np.argsort([len(s) for s in seqs], kind="stable")  # (N,) shortest first

    def batch(self, rng: np.random.Generator) -> Batch:
        """A random batch; the same rng state gives the same batch."""
        N, B = len(self.seqs), self.batch_size
        W = min(N, 4 * B)  # bucket width, >= B
        edges = np.unique(np.concatenate([[0], np.arange(rng.integers(W), N, W), [N]]))
        if len(edges) > 2 and edges[1] - edges[0] < B:  # a short first bucket joins the next
            edges = np.delete(edges, 1)
        if len(edges) > 2 and edges[-1] - edges[-2] < B:  # a short last bucket joins the previous
            edges = np.delete(edges, -2)
        k = np.searchsorted(edges, rng.integers(N), side="right") - 1  # bucket of a uniform position
        chosen = edges[k] + rng.choice(edges[k + 1] - edges[k], size=B, replace=False)  # (B,)
        return pad_batch([self.seqs[i] for i in self._order[chosen]])

    def iter_all(self) -> Iterator[Batch]:
        """Every sentence once, shortest first, in batches of batch_size (the last may be smaller)."""
        for i in range(0, len(self.seqs), self.batch_size):
            yield pad_batch([self.seqs[j] for j in self._order[i : i + self.batch_size]])


class StreamBatcher:
    """B parallel streams through one long id sequence, in windows of seq_len (truncated BPTT).

    Stream b reads ids[b*L : (b+1)*L] and predicts ids[b*L + 1 : (b+1)*L + 1], L = (len(ids)-1)//B,
    so column b's hidden state after window k is the right start for window k + 1. The last window
    of an epoch is shorter when seq_len does not divide L; at most B - 1 final ids are never read.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int):
        if getattr(ids, "ndim", None) != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError("ids must be a 1-D integer array")
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be at least 1, got {batch_size}, {seq_len}")
        needed = batch_size * seq_len + 1
        if len(ids) < needed:
            raise DataError(f"the text is too short for {batch_size} streams of {seq_len}+1 characters: "
                            f"needs at least {needed} characters (batch_size x seq_len + 1), has {len(ids)}; "
                            "use a smaller batch_size or seq_len")
        self.ids, self.batch_size, self.seq_len = ids, batch_size, seq_len  # ids is never copied whole
        self.stream_len = (len(ids) - 1) // batch_size  # L
        self.windows_per_epoch = -(-self.stream_len // seq_len)

    def batch(self, step: int) -> Batch:
        """Window step % windows_per_epoch of every stream; reset=True on the first window."""
        k = step % self.windows_per_epoch
        t0 = k * self.seq_len
        T = min(self.seq_len, self.stream_len - t0)
        pos = np.arange(self.batch_size) * self.stream_len + t0 + np.arange(T + 1)[:, None]  # (T+1, B)
        block = np.asarray(self.ids[pos], dtype=np.int32)  # (T+1, B): reads only these ids
        return Batch(block[:-1], block[1:].copy(), np.ones((T, self.batch_size), np.float32), reset=k == 0)

    def random_batch(self, rng: np.random.Generator) -> Batch:
        """B windows of seq_len at random offsets anywhere in the text, each from a zero state."""
        T = self.seq_len
        starts = rng.integers(0, len(self.ids) - T, size=self.batch_size)  # (B,)
        block = np.asarray(self.ids[starts + np.arange(T + 1)[:, None]], dtype=np.int32)  # (T+1, B)
        return Batch(block[:-1], block[1:].copy(), np.ones((T, self.batch_size), np.float32), reset=True)

    def iter_all(self) -> Iterator[Batch]:
        """One pass over all windows in order (reset only on the first)."""
        return (self.batch(k) for k in range(self.windows_per_epoch))


def sentence_batches(seqs: list[np.ndarray], batch_size: int = EVAL_BATCH) -> Iterator[Batch]:
    """Every encoded sentence once, in batches of up to batch_size (nothing for no sentences)."""
    return SentenceBatcher(seqs, min(batch_size, len(seqs))).iter_all() if seqs else iter(())


def stream_batches(ids: np.ndarray, streams: int = EVAL_BATCH, seq_len: int = EVAL_SEQ) -> Iterator[Batch]:
    """Windows over `ids` (at least 2) in up to `streams` parallel streams (fewer for short texts)."""
    B = max(1, min(streams, (len(ids) - 1) // 2))
    T = max(1, min(seq_len, (len(ids) - 1) // B - 1))
    return StreamBatcher(ids, B, T).iter_all()
