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

    for beam in beam_search(model, vocab, width=8, prime="The "):   # most likely first
        print(beam.text, beam.logprob / beam.chars)

Beam search keeps the `width` most likely continuations (by total
log-probability), all fed to the model as one batch: one model step per
character for the whole beam. Sentence models: at every step each live beam
may also end, and the `width` best whole sentences are kept, ranked by
log-probability / chars ** alpha, the end included: alpha 1 (the default) is
per character; alpha 0 is the total, by which a sentence cut short after a
few characters nearly always wins. Stream models: continuations of exactly
`length` characters.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .config import LN2
from .data import BOUNDARY, UNKNOWN, Vocab
from .mat import log_softmax
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


@dataclass
class Beam:
    """One finished (or cut-off) beam-search hypothesis."""

    text: str          # prime + completion
    logprob: float     # natural log-probability of the completion's characters (and of the end)
    chars: int         # characters scored: the completion, plus 1 for the end of a finished sentence
    finished: bool     # sentence models: ended with the boundary (False: cut off at the length limit)

    @property
    def per_char(self) -> float:
        return self.logprob / max(self.chars, 1)

    def as_dict(self) -> dict:
        per_char = self.per_char
        return {"text": self.text, "logprob": round(self.logprob, 6), "logprob_per_char": round(per_char, 6),
                "bits_per_char": round(-per_char / LN2, 6), "chars": self.chars,
                "finished": self.finished}


def _start_ids(vocab: Vocab, prime: str, sentences: bool) -> np.ndarray:
    if sentences:
        return np.concatenate([[BOUNDARY], vocab.encode(prime)]).astype(np.int64)
    if prime:
        return vocab.encode(prime).astype(np.int64)
    return (vocab.encode("\n") if "\n" in vocab.chars else np.array([BOUNDARY])).astype(np.int64)


def beam_search(model: CharModel, vocab: Vocab, width: int, prime: str = "", max_len: int = 300,
                sentences: bool = True, alpha: float = 1.0) -> list[Beam]:
    """The `width` most likely continuations of `prime`, best first (finished sentences first).

    Sentences are ranked by logprob / chars ** alpha: 1 = per character, 0 = the total."""
    def rank(b: Beam) -> float:
        return -b.logprob / max(b.chars, 1) ** alpha

    logits, state = _feed(model, _start_ids(vocab, prime, sentences)[:, None], None)  # one row to start
    banned = [UNKNOWN] if sentences else [BOUNDARY, UNKNOWN]
    seqs, scores, done = [[]], np.zeros(1), []
    for t in range(max_len):
        logp = log_softmax(logits.astype(np.float64))                # (k, V)
        logp[:, banned] = -np.inf
        if sentences:  # every live beam may end here: a whole sentence, kept if among the best so far
            for q, end in zip(seqs, scores + logp[:, BOUNDARY]):
                if len(done) < width or -end / (len(q) + 1) ** alpha < rank(done[-1]):
                    done = sorted([*done, Beam(prime + vocab.decode(q), float(end), len(q) + 1, True)],
                                  key=rank)[:width]
            logp[:, BOUNDARY] = -np.inf                              # the beams themselves go on
        total = (scores[:, None] + logp).ravel()                     # (k * V,)
        n = min(width, int(np.isfinite(total).sum()))
        if n == 0:
            break
        top = np.argpartition(-total, n - 1)[:n]
        top = top[np.argsort(-total[top], kind="stable")]
        parents, ids = np.divmod(top, logp.shape[1])
        seqs, scores = [seqs[p] + [int(c)] for p, c in zip(parents, ids)], total[top]
        if t + 1 < max_len:
            state = [tuple(a[parents] for a in layer) for layer in state]
            logits, state = model.step(ids, state)
    cut = [Beam(prime + vocab.decode(q), float(s), len(q), not sentences) for q, s in zip(seqs, scores)]
    return (done + sorted(cut, key=rank))[:width]
