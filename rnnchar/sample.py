"""Sampling text from a trained model, one character at a time, streamed as it is made.

    for sentence in sample_sentences(model, vocab, rng, n=5, temp=0.7):
        print(sentence)
    for piece in sample_stream(model, vocab, rng, length=300, prime="The "):
        print(piece, end="")

Sentence models start after the boundary token (and the prime) and stop at the
next boundary; all n sentences are generated together as one batch. Stream
models continue the prime for `length` characters. A prime may only use
characters the model knows: `unknown_chars` lists the others so the caller can
refuse it with a clear message.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .data import BOUNDARY, UNKNOWN, Vocab
from .model import CharModel

MAX_SENTENCE = 1000  # a sentence model that never emits the boundary stops here


def unknown_chars(vocab: Vocab, text: str) -> list[str]:
    """Distinct characters of `text` the vocabulary does not know, in order of appearance."""
    known = set(vocab.chars)
    return list(dict.fromkeys(c for c in text if c not in known))


def pick(logits: np.ndarray, rng: np.random.Generator, temp: float = 1.0, top_k: int = 0,
         argmax: bool = False, banned: tuple[int, ...] = (UNKNOWN,)) -> np.ndarray:
    """One id per row of (B, V) logits; `banned` ids (the unknown token) are never chosen."""
    z = logits.astype(np.float64)
    z[:, list(banned)] = -np.inf
    if argmax:
        return z.argmax(axis=1)
    with np.errstate(over="ignore"):  # a tiny temp: every non-top logit goes to -inf, i.e. argmax
        z = (z - z.max(axis=1, keepdims=True)) / temp  # (B, V), max 0: no inf - inf = nan
    if 0 < top_k < z.shape[1]:
        kth = np.partition(z, -top_k, axis=1)[:, -top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    cum = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
    u = rng.random((len(z), 1))
    return np.minimum((cum < u).sum(axis=1), z.shape[1] - 1)


def _feed(model: CharModel, ids: np.ndarray, state) -> tuple[np.ndarray, list]:
    """Feed a (T, B) block of ids one step at a time; return the last logits and the state."""
    logits = None
    for row in ids:
        logits, state = model.step(row, state)
    return logits, state


def sample_sentences(model: CharModel, vocab: Vocab, rng: np.random.Generator, n: int = 5, temp: float = 1.0,
                     top_k: int = 0, argmax: bool = False, prime: str = "",
                     max_len: int = MAX_SENTENCE) -> Iterator[str]:
    """Yield n sentences (prime included), each as soon as it ends."""
    start = np.concatenate([[BOUNDARY], vocab.encode(prime)]).astype(np.int64)
    logits, state = _feed(model, np.repeat(start[:, None], n, axis=1), None)
    pieces: list[list[int]] = [[] for _ in range(n)]
    alive = np.ones(n, bool)
    for _ in range(max_len):
        ids = pick(logits, rng, temp, top_k, argmax)
        for b in np.flatnonzero(alive):
            if ids[b] == BOUNDARY:
                alive[b] = False
                yield prime + vocab.decode(pieces[b])
            else:
                pieces[b].append(int(ids[b]))
        if not alive.any():
            return
        logits, state = model.step(ids, state)
    for b in np.flatnonzero(alive):  # never reached a boundary
        yield prime + vocab.decode(pieces[b])


def sample_stream(model: CharModel, vocab: Vocab, rng: np.random.Generator, length: int = 300,
                  temp: float = 1.0, top_k: int = 0, argmax: bool = False, prime: str = "") -> Iterator[str]:
    """Yield the prime, then `length` characters one at a time."""
    if not prime:  # a stream model has no start token: begin as after a line break
        start = vocab.encode("\n") if "\n" in vocab.chars else np.array([BOUNDARY])
    else:
        start = vocab.encode(prime)
        yield prime
    logits, state = _feed(model, start.astype(np.int64)[:, None], None)
    for _ in range(length):
        ids = pick(logits, rng, temp, top_k, argmax, banned=(BOUNDARY, UNKNOWN))  # no sentences here
        yield vocab.decode(ids)
        logits, state = model.step(ids, state)
