"""The character model: embedding -> stacked recurrent cells -> linear decoder -> softmax.

    model = CharModel(vocab_size=80, cell="lstm", hidden_sizes=[128, 128], rng=rng)
    out = model.loss(inputs, targets, mask)          # (T, B) id arrays, time-major
    out.graph.backward()                             # gradients in model.params[...].dw
    logits, state = model.step(ids, state)           # sampling: one id per batch row

The loss is summed over time steps and averaged over the batch, so batch 1
reproduces RecurrentJS's numbers. Parameters have dotted names ("embed.W",
"layer0.Wx", "decoder.W"). Imports numpy and the standard library only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .cells import init_weight, make_stack, stack_shapes
from .graph import Graph, Mat
from .mat import FlatParams


class ShapeError(ValueError):
    """Parameters that do not fit the model (e.g. a checkpoint from another configuration)."""


@dataclass
class LossResult:
    loss: float          # summed over steps, averaged over the batch (what the gradient is of)
    nats: float          # total negative log-likelihood over every predicted character
    n_chars: int         # predicted characters (mask sum)
    state: list          # final hidden state, detached numpy arrays, for truncated BPTT
    graph: Graph


def param_shapes(vocab_size: int, cell: str = "lstm", hidden_sizes=(128, 128), embed_size: int = 32,
                 gate: str = "scalar", **_init) -> dict[str, tuple[int, int]]:
    """{name: shape} of CharModel(vocab_size, cell, ...)'s parameters, without building it."""
    shapes = {"embed.W": (vocab_size, embed_size)}
    shapes.update(stack_shapes(cell, embed_size, list(hidden_sizes), gate))
    shapes.update({"decoder.W": (hidden_sizes[-1], vocab_size), "decoder.b": (1, vocab_size)})
    return shapes


# data.max_batch_tokens: auto, in sentences mode: the activation memory of 2,048 characters of the
# default model ([128, 128], embedding 32, ~96 characters, float32): about 45 MB a forward/backward pass
AUTO_BATCH_BYTES = 2048 * 4 * (20 * 256 + 4 * 96 + 32)


UNIGRAM_START_CELLS = ("lstm", "gf-lstm")  # decoder_bias "auto": measured in README, "Initialisation"


def starts_at_unigram(decoder_bias: str, cell: str) -> bool:
    """Whether a new run's decoder bias starts at the unigram log frequencies. `auto` does so for the
    LSTM cells only: their half-open gates pass the decoder a weak signal at first, and the prior
    saves them ~0.07 bits/char at 2,000 steps; a GRU or a tanh RNN ends ~0.01 worse with it."""
    return decoder_bias == "unigram" or (decoder_bias == "auto" and cell in UNIGRAM_START_CELLS)


# model.dropout: auto, from the effective passes X = passes planned over the training text x min(1, model
# parameters / training characters): a model that can hold its text memorises it when it sees it often
# enough; a smaller one, in proportion. 0 up to 8, then log-linear to 0.4 at 32 and beyond, fitted to the
# bundled corpus at 300, 600 and 1,150 steps of lstm.yaml and a megabyte at 4 passes (README, "Dropout:
# auto"); 0.4 is the most measured to help. Known short: a long run of a model much bigger than its
# text (book.yaml: 0.1 here, 0.25 measured 0.05 bits/char better), which therefore sets its own.
AUTO_DROPOUT_FROM, AUTO_DROPOUT_FULL, AUTO_DROPOUT_MAX = 8.0, 32.0, 0.4


def auto_dropout(n_params: int, train_chars: int, planned_chars: float) -> float:
    """model.dropout `auto` for a new run, in steps of 0.05: 0 for X <= 8 effective passes, 0.4 for X >= 32,
    log-linear between; X = planned_chars / train_chars x min(1, n_params / train_chars), planned_chars
    being train.steps x the characters of a step."""
    n = max(train_chars, 1)
    x = planned_chars / n * min(1.0, n_params / n)
    lo, hi = AUTO_DROPOUT_FROM, AUTO_DROPOUT_FULL
    ramp = math.log(max(x, lo) / lo) / math.log(hi / lo)
    return round(round(AUTO_DROPOUT_MAX * min(1.0, ramp) / 0.05) * 0.05, 2)


class CharModel:
    """Embedding (V, E) -> cells -> decoder (H_top, V) with bias."""

    def __init__(self, vocab_size: int, cell: str = "lstm", hidden_sizes=(128, 128), embed_size: int = 32,
                 activation: str = "tanh", gate: str = "scalar", forget_bias: float = 0.0,
                 dtype: str = "float32", init_scale: float = 0.0, candidate_gain: float = 2.0,
                 dropout: float = 0.0, rng: np.random.Generator | None = None):
        rng = rng if rng is not None else np.random.default_rng(0)
        self.V, self.dtype, self.dropout = vocab_size, np.dtype(dtype), float(dropout)
        self.hidden_sizes, self.embed_size = list(hidden_sizes), embed_size
        self.stack = make_stack(cell, embed_size, list(hidden_sizes), rng, self.dtype, gate=gate,
                                init_scale=init_scale, forget_bias=forget_bias, activation=activation,
                                candidate_gain=candidate_gain)
        H = hidden_sizes[-1]
        embed_std = init_scale if init_scale > 0 else 1.0  # PyTorch's nn.Embedding draws N(0, 1)
        embed = Mat.randn(vocab_size, embed_size, embed_std, rng, self.dtype)
        self.params: dict[str, Mat] = {"embed.W": embed}
        self.params.update(self.stack.params)
        self.params["decoder.W"] = init_weight(H, vocab_size, H, init_scale, rng, self.dtype)
        self.params["decoder.b"] = Mat.zeros(1, vocab_size, self.dtype)
        self.params = FlatParams(self.params)  # every w and dw a view into one flat buffer each
        # dropout sites: every plain layer's output (the top one's before the decoder); gated feedback
        # mixes all layers inside one step, so there only the top layer's output before the decoder
        between = getattr(self.stack, "takes_dropout_masks", False)
        self.dropout_widths = list(hidden_sizes) if between else [H]

    def start_at_unigram(self, counts: np.ndarray) -> None:
        """What `decoder_bias="unigram"` asks of whoever knows the corpus (the trainer, for a new run):
        decoder.b = log p(c), the training characters' frequencies (add-one smoothed): the untrained
        model predicts the unigram distribution instead of a uniform one, so training does not spend its
        first hundred steps learning character frequencies (README, "Initialisation, and why")."""
        counts = np.asarray(counts, np.float64).reshape(-1)
        if counts.shape != (self.V,):
            raise ShapeError(f"{counts.shape[0]} character counts for a vocabulary of {self.V}")
        self.params["decoder.b"].w[...] = np.log((counts + 1) / (counts.sum() + self.V))

    def bytes_per_token(self) -> int:
        """About what one character of a batch holds in memory through its forward and backward pass:
        ~20 values per hidden unit of each layer (gates, activations, derivatives, states), 4 per
        vocabulary entry (logits, softmax, their gradient) and its embedding row."""
        return self.dtype.itemsize * (20 * sum(self.hidden_sizes) + 4 * self.V + self.embed_size)

    def tokens_within(self, budget_bytes: int) -> int:
        """Characters per forward/backward pass that fit in `budget_bytes` of activations (at least 1)."""
        return max(1, budget_bytes // self.bytes_per_token())

    @property
    def flat_grad(self) -> np.ndarray:
        """Every parameter's gradient in one flat array (the views' buffer): what data parallelism sums."""
        return self.params.dw

    def zero_state(self, B: int) -> list:
        return self.stack.zero_state(B, self.dtype)

    def dropout_masks(self, rng: np.random.Generator, T: int, B: int) -> list | None:
        """Inverted-dropout masks for a (T, B) batch, one (T, B, H) per site; None when dropout is off.

        Kept units are scaled by 1 / (1 - p), so that evaluation uses the model unchanged. Cut a
        part of the batch with m[:t, rows] (data-parallel workers, groups of rows): the masks
        then are those the whole batch would use.
        """
        if self.dropout == 0:
            return None
        scale = self.dtype.type(1 / (1 - self.dropout))
        return [(rng.random((T, B, H)) >= self.dropout).astype(self.dtype) * scale  # (T, B, H)
                for H in self.dropout_widths]

    def _logits(self, g: Graph, ids: np.ndarray, state: list, masks=None) -> tuple[Mat, list]:
        T, B = ids.shape
        x = g.embed(self.params["embed.W"], ids.reshape(-1))  # (T*B, E)
        if masks:  # training with dropout: between layers (plain stacks), then before the decoder
            masks = [np.reshape(m, (T * B, m.shape[2])) for m in masks]  # (T*B, H) each
            top, state = (self.stack.forward(g, x, T, B, state, masks[:-1]) if len(masks) > 1
                          else self.stack.forward(g, x, T, B, state))
            top = g.dropout(top, masks[-1])
        else:
            top, state = self.stack.forward(g, x, T, B, state)  # (T*B, H): one decoder product
        logits = g.add(g.matmul(top, self.params["decoder.W"]), self.params["decoder.b"])  # (T*B, V)
        return logits, [tuple(m.w for m in s) for s in state]

    def loss(self, inputs, targets, mask=None, state=None, needs_backprop: bool = True,
             dropout_masks: list | None = None) -> LossResult:
        """Loss of a batch of (T, B) sequences; `state` None starts from zeros.

        Dropout applies only when the caller passes `dropout_masks` ((T, B, H) each, from
        `dropout_masks()`): training does, validation and evaluation do not."""
        inputs, targets = np.asarray(inputs), np.asarray(targets)
        T, B = inputs.shape
        mask = np.ones((T, B), self.dtype) if mask is None else np.asarray(mask, self.dtype)
        g = Graph(needs_backprop)
        state = state if state is not None else self.zero_state(B)
        logits, state = self._logits(g, inputs, state, dropout_masks)
        loss = g.softmax_cross_entropy(logits, targets.reshape(-1), mask.reshape(-1), denom=B)
        return LossResult(loss, loss * B, int(mask.sum()), state, g)

    def step(self, ids, state=None) -> tuple[np.ndarray, list]:
        """Next-character logits (B, V) after feeding one id per row; no gradient is recorded."""
        ids = np.asarray(ids).reshape(1, -1)
        g = Graph(needs_backprop=False)
        logits, state = self._logits(g, ids, state if state is not None else self.zero_state(ids.shape[1]))
        return logits.w, state

    def load_params(self, arrays: dict[str, np.ndarray]) -> None:
        """Copy named arrays into the parameters; any missing, extra or misshapen name is a ShapeError."""
        missing, extra = sorted(set(self.params) - set(arrays)), sorted(set(arrays) - set(self.params))
        if missing or extra:
            raise ShapeError(f"parameters do not match the model: missing {missing}, unexpected {extra}")
        for name, p in self.params.items():
            a = np.asarray(arrays[name])
            if a.shape != p.shape:
                raise ShapeError(f"parameter {name} has shape {a.shape}, the model needs {p.shape}")
            p.w[...] = a  # into the flat buffer (cast to the model's dtype)
            p.dw[...] = 0

    def n_params(self) -> int:
        return sum(p.w.size for p in self.params.values())
