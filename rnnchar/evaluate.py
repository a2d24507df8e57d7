"""Scoring text with a trained model: bits per character and perplexity.

    result = score_text(model, vocab, text, mode="sentences")
    print(result.bits_per_char, result.perplexity, result.unknown_chars)
    held_out = validation_score(model, vocab, cfg)  # the run's own validation split

Characters the model never saw are counted and map to the unknown token; as
targets they are not scored (a model cannot predict what it never saw), so
the figures describe the known characters. A stream model reads the text as
parallel streams with the state carried between windows; a sentence model
reads each non-empty line as one sentence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
from tqdm import tqdm

from .batches import Batch, sentence_batches, stream_batches
from .config import LN2, Config
from .corpus import load_corpus
from .data import UNKNOWN, DataError, Vocab, encode_sentences, sentence_lines
from .model import CharModel

EVAL_BUDGET = 1 << 22  # logits (B x T_chunk x V numbers) held at once while scoring: 16 MB in float32
EVAL_TOKENS = 4096  # and characters (B x T_chunk) per chunk, which bounds the recurrent activations
PROGRESS_CHARS = 200_000  # texts at least this long show a progress bar (on a terminal)


@dataclass
class EvalResult:
    bits_per_char: float
    perplexity: float
    chars: int          # characters scored
    unknown_chars: int  # characters the model never saw (counted, not scored)

    def as_dict(self) -> dict:
        """The fields for JSON: NaN or infinite figures become None (null), never invalid JSON tokens."""
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v
                for k, v in asdict(self).items()}


def perplexity(nats_per_char: float) -> float:
    """exp(nats per char), inf beyond float range (above ~709 nats) instead of OverflowError."""
    try:
        return math.exp(nats_per_char)
    except OverflowError:
        return math.inf


def result_from_nats(nats: float, n: int, unknown: int) -> EvalResult:
    """Bits per char and perplexity from total nats over n scored characters (NaN when n is 0)."""
    if n == 0:
        return EvalResult(float("nan"), float("nan"), 0, unknown)
    return EvalResult(nats / n / LN2, perplexity(nats / n), n, unknown)


def batch_nats(model: CharModel, batches: Iterable[Batch], should_stop: Callable[[], bool] = lambda: False,
               budget: int = EVAL_BUDGET) -> tuple[float, int]:
    """Total nats and scored characters over batches, carrying state unless a batch resets it.

    Each (T, B) batch is scored in time chunks of at most `budget // (B x V)` steps (and at most
    EVAL_TOKENS // B), the state carried from chunk to chunk, so the logits held at once stay near
    `budget` numbers whatever the vocabulary and window (the sums are the whole batch's up to float
    rounding).
    """
    nats, n, state = 0.0, 0, None
    for b in batches:
        mask = b.mask * (b.targets != UNKNOWN)  # (T, B)
        T, B = b.inputs.shape
        step = max(1, min(budget // (B * model.V), EVAL_TOKENS // B))
        state = None if b.reset else state
        for t in range(0, T, step):
            res = model.loss(b.inputs[t : t + step], b.targets[t : t + step], mask[t : t + step], state,
                             needs_backprop=False)
            nats, state = nats + res.nats, res.state
        n += int(mask.sum())
        if should_stop():
            break
    return nats, n


def line_batches(model_vocab: Vocab, lines: list[str]) -> list[Batch]:
    return list(sentence_batches(encode_sentences(lines, model_vocab))) if lines else []


def score_text(model: CharModel, vocab: Vocab, text: str, mode: str, max_line_len: int = 10**9) -> EvalResult:
    """Bits per char and perplexity of `text` under the model."""
    unknown = vocab.count_unknown(text.replace("\n", "") if mode == "sentences" else text)
    if mode == "sentences":
        lines, _ = sentence_lines(text, max_line_len)
        batches = line_batches(vocab, lines)
    else:
        ids = vocab.encode(text)
        if len(ids) < 2:
            return result_from_nats(0.0, 0, unknown)
        batches = stream_batches(ids)
    hide = None if len(text) >= PROGRESS_CHARS else True  # None: tqdm shows it only on a terminal
    nats, n = batch_nats(model, tqdm(batches, desc="scoring", unit="batch", leave=False, disable=hide))
    return result_from_nats(nats, n, unknown)


def score_lines(model: CharModel, vocab: Vocab, lines: list[str], mode: str) -> Iterator[float]:
    """Bits per char of each line on its own (NaN for a line with nothing to score), in input order.

    A sentence model scores `BOUNDARY line BOUNDARY`; a stream model scores the
    line's characters and its newline, read from a fresh state after a newline.
    Scores are yielded one at a time, so `eval --per-line big.txt | head` answers at once.
    """
    for line in lines:
        if mode == "sentences":
            nats, n = batch_nats(model, line_batches(vocab, [line]) if line.strip() else [])
        else:
            ids = vocab.encode("\n" + line + "\n")
            mask = (ids[1:] != UNKNOWN).astype(np.float32)[:, None]
            res = model.loss(ids[:-1, None], ids[1:, None], mask, needs_backprop=False)
            nats, n = res.nats, int(mask.sum())
        yield nats / n / LN2 if n else float("nan")


def validation_score(model: CharModel, vocab: Vocab, cfg: Config) -> EvalResult:
    """Bits per char on the held-out split of the corpus the model was trained on."""
    corpus = load_corpus(cfg, vocab=vocab)
    nats, n = batch_nats(model, corpus.val_batches())
    if n == 0:
        raise DataError("the run has no validation split (data.val_fraction is 0): pass a FILE to score")
    val = [corpus.val] if corpus.mode == "stream" else corpus.val  # one id array, or one per sentence
    unknown = sum(int(np.count_nonzero(ids == UNKNOWN)) for ids in val)  # counted, not scored
    return result_from_nats(nats, n, unknown)
