"""CharModel: gradients, masking, the loss convention, carried state, load_params, and learning."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rnnchar.cells import CELLS
from rnnchar.model import CharModel, ShapeError
from rnnchar.optim import Adam

from gradcheck import directional_check, numeric_grad, rel_error

V, E = 7, 3


def make(cell, sizes=(4, 3), seed=0, **opts) -> CharModel:
    """A float64 model with every parameter (biases too) drawn from N(0, 0.5)."""
    rng = np.random.default_rng(seed)
    model = CharModel(V, cell, list(sizes), E, dtype="float64", rng=rng, **opts)
    for p in model.params.values():
        p.w[...] = rng.normal(0, 0.5, p.shape)
    return model


def ids(T, B, seed=1):
    return np.random.default_rng(seed).integers(0, V, (T, B))


def grads(model) -> dict:
    return {n: p.dw.copy() for n, p in model.params.items()}


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


# (cell, sizes, options): single layers (no concat in the gated sum), depth three, relu, both gates
GRAD_CASES = [
    ("rnn", [4], {"activation": "relu"}), ("rnn", [3, 4, 2], {}), ("lstm", [3, 4, 2], {}),
    ("gru", [3, 4, 2], {}), ("gf-rnn", [4], {}), ("gf-lstm", [4], {"gate": "vector"}),
    ("gf-gru", [3, 4, 2], {"gate": "vector"}), ("gf-lstm", [3, 4, 2], {}),
]


@pytest.mark.parametrize("cell,sizes,opts", GRAD_CASES, ids=lambda v: str(v))
def test_whole_model_gradient(cell, sizes, opts):
    """State None (zeros), no mask, T = 5; elementwise on the embedding (repeated ids) and decoder."""
    model = make(cell, sizes, **opts)
    seq = ids(6, 2)
    assert len(np.unique(seq[:-1])) < seq[:-1].size  # some id repeats: embedding rows accumulate

    def f():
        return model.loss(seq[:-1], seq[1:], needs_backprop=False).loss

    model.loss(seq[:-1], seq[1:]).graph.backward()
    g = grads(model)
    assert all(np.abs(d).max() > 0 for d in g.values())
    assert directional_check(f, [p.w for p in model.params.values()], list(g.values()),
                             np.random.default_rng(2)) < 1e-6
    for name in ("embed.W", "decoder.W", "decoder.b"):
        assert rel_error(g[name], numeric_grad(f, model.params[name].w, eps=1e-4)) < 1e-6, name


def test_single_step_sequence_gradient():
    model = make("gf-gru", [3, 2])
    seq = ids(2, 3)
    model.loss(seq[:1], seq[1:]).graph.backward()
    g = grads(model)["layer1.U"]

    def f():
        return model.loss(seq[:1], seq[1:], needs_backprop=False).loss

    assert rel_error(g, numeric_grad(f, model.params["layer1.U"].w, eps=1e-4)) < 1e-6


@pytest.mark.parametrize("cell", CELLS)
def test_padded_positions_change_nothing(cell):
    T, B = 6, 3
    mask = (np.arange(T)[:, None] < np.array([6, 2, 4])).astype(float)
    seq = ids(T + 1, B)
    inputs, targets = seq[:-1], seq[1:]
    model = make(cell, gate="vector" if cell.startswith("gf-") else "scalar")
    out = model.loss(inputs, targets, mask)
    out.graph.backward()
    before = grads(model)
    for p in model.params.values():
        p.dw[...] = 0

    pad = mask == 0
    other_in, other_tg = inputs.copy(), targets.copy()
    other_in[pad], other_tg[pad] = (inputs[pad] + 3) % V, (targets[pad] + 2) % V
    again = model.loss(other_in, other_tg, mask)
    again.graph.backward()
    assert again.loss == out.loss and again.n_chars == out.n_chars == 12
    for name, g in grads(model).items():
        assert np.array_equal(g, before[name]), name
    other_tg[0, 0] = (targets[0, 0] + 1) % V  # a real position does count
    assert model.loss(other_in, other_tg, mask, needs_backprop=False).loss != out.loss


@pytest.mark.parametrize("cell", CELLS)
def test_loss_is_the_sum_of_stepped_log_likelihoods_averaged_over_the_batch(cell):
    model = make(cell)
    seq = ids(8, 1)[:, 0]
    state, nats = None, 0.0
    for x, y in zip(seq[:-1], seq[1:]):
        logits, state = model.step([x], state)
        assert logits.shape == (1, V)
        nats -= log_softmax(logits[0])[y]
    one = model.loss(seq[:-1, None], seq[1:, None])
    assert np.isclose(one.loss, nats, rtol=1e-12) and np.isclose(one.nats, nats, rtol=1e-12)
    assert one.n_chars == 7
    for a, b in zip(one.state, state):
        assert all(np.allclose(u, v, rtol=1e-12, atol=1e-14) for u, v in zip(a, b))

    one.graph.backward()
    g1 = grads(model)
    for p in model.params.values():
        p.dw[...] = 0
    two = model.loss(np.repeat(seq[:-1, None], 2, 1), np.repeat(seq[1:, None], 2, 1))
    two.graph.backward()
    assert np.isclose(two.loss, nats, rtol=1e-12) and np.isclose(two.nats, 2 * nats, rtol=1e-12)
    assert all(np.allclose(g, g1[n], rtol=1e-10, atol=1e-13) for n, g in grads(model).items())

    # a second, shorter row (3 predictions, then padding): the loss is the mean of the rows' sums
    short = ids(4, 1, seed=9)[:, 0]
    inputs, targets = np.zeros((7, 2), int), np.zeros((7, 2), int)
    inputs[:, 0], targets[:, 0], inputs[:3, 1], targets[:3, 1] = seq[:-1], seq[1:], short[:-1], short[1:]
    mask = np.ones((7, 2))
    mask[3:, 1] = 0
    short_nats = model.loss(short[:-1, None], short[1:, None], needs_backprop=False).nats
    mixed = model.loss(inputs, targets, mask, needs_backprop=False)
    assert np.isclose(mixed.loss, (nats + short_nats) / 2, rtol=1e-12) and mixed.n_chars == 10


@pytest.mark.parametrize("cell", CELLS)
def test_carried_state_splits_a_long_window(cell):
    model = make(cell)
    seq = ids(7, 2)
    start = [tuple(np.random.default_rng(3).normal(0, 0.5, a.shape) for a in s) for s in model.zero_state(2)]
    whole = model.loss(seq[:-1], seq[1:], state=start, needs_backprop=False)
    first = model.loss(seq[:3], seq[1:4], state=start, needs_backprop=False)
    second = model.loss(seq[3:6], seq[4:7], state=first.state, needs_backprop=False)
    assert np.isclose(first.nats + second.nats, whole.nats, rtol=1e-12)
    assert first.n_chars + second.n_chars == whole.n_chars == 12
    for a, b in zip(second.state, whole.state):
        assert all(np.allclose(u, v, rtol=1e-12, atol=1e-14) for u, v in zip(a, b))
    fresh = model.loss(seq[3:6], seq[4:7], needs_backprop=False)  # the state is really used
    assert not np.isclose(fresh.nats, second.nats)


def test_load_params_round_trip_and_errors():
    src, dst = make("gf-lstm", seed=0), make("gf-lstm", seed=1)
    seq = ids(5, 2)
    arrays = {n: p.w.copy() for n, p in src.params.items()}
    assert dst.loss(seq[:-1], seq[1:]).loss != src.loss(seq[:-1], seq[1:]).loss
    dst.load_params(arrays)
    assert dst.loss(seq[:-1], seq[1:]).loss == src.loss(seq[:-1], seq[1:]).loss
    arrays["layer0.U"] += 1  # copied, not shared
    assert not np.array_equal(dst.params["layer0.U"].w, arrays["layer0.U"])

    f32 = CharModel(V, "gf-lstm", [4, 3], E, rng=np.random.default_rng(0))
    f32.load_params(arrays)
    assert all(p.w.dtype == np.float32 for p in f32.params.values())

    missing = {n: a for n, a in arrays.items() if n != "layer1.Ug"}
    with pytest.raises(ShapeError, match=r"layer1\.Ug"):
        dst.load_params(missing)
    with pytest.raises(ShapeError, match=r"layer7\.Wx"):
        dst.load_params({**arrays, "layer7.Wx": np.zeros((3, 3))})
    with pytest.raises(ShapeError, match=r"layer1\.Wh"):
        dst.load_params({**arrays, "layer1.Wh": np.zeros((3, 8))})
    with pytest.raises(ShapeError, match=r"decoder\.b"):
        dst.load_params({**arrays, "decoder.b": np.zeros(V)})


# -- learning ---------------------------------------------------------------------------------------

SENTENCES = """the cat sat on the mat.
a dog ran to the park.
she reads a book at night.
we like warm tea in the morning.
the sun is bright today.
birds sing in the old tree.
he rode his bike to school.
my mother bakes fresh bread.
the river runs to the sea.
they play cards after dinner.
it is cold and dark outside.
the train leaves at nine.
a small boat sails on the lake.
the children laugh and run.
rain falls on the green hills.
she paints the door red.
the moon rises over the town.
he drinks milk with honey.
the wind blows the leaves away.
we walk home along the road.""".splitlines()

MEMORISE = ["the quick brown fox jumps over the lazy dog.",
            "a journey of a thousand miles begins with one step.",
            "every cloud has a silver lining, or so they say.",
            "look before you leap, and then leap anyway."]


def encode(sentences):
    """ids = sorted characters + 1, each sentence [0, c.., 0]; padded (T, B) inputs, targets, mask, V."""
    index = {c: i + 1 for i, c in enumerate(sorted(set("".join(sentences))))}
    seqs = [[0] + [index[c] for c in s] + [0] for s in sentences]
    T, B = max(map(len, seqs)) - 1, len(seqs)
    padded, mask = np.zeros((T + 1, B), int), np.zeros((T, B))
    for b, s in enumerate(seqs):
        padded[:len(s), b], mask[:len(s) - 1, b] = s, 1
    return padded[:-1], padded[1:], mask, len(index) + 1


def bigram_entropy(inputs, targets, mask) -> float:
    """Nats per character of the best model that sees only the previous character (on this very data)."""
    counts = np.zeros((inputs.max() + 1, targets.max() + 1))
    np.add.at(counts, (inputs[mask > 0], targets[mask > 0]), 1)
    p = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    return float(-(counts[counts > 0] * np.log(p[counts > 0])).sum() / counts.sum())


def train(model, inputs, targets, mask, steps, lr):
    opt = Adam()
    for _ in range(steps):
        model.loss(inputs, targets, mask).graph.backward()
        opt.step(model.params, lr, clip=5.0)
    out = model.loss(inputs, targets, mask, needs_backprop=False)
    return out.nats / out.n_chars


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
def test_every_cell_learns_the_sentences(cell):
    inputs, targets, mask, vocab = encode(SENTENCES)
    sizes = [24, 24] if cell.startswith("gf-") else [24]  # gated feedback needs layers to feed back
    model = CharModel(vocab, cell, sizes, 16, rng=np.random.default_rng(0))
    start = model.loss(inputs, targets, mask, needs_backprop=False)
    assert abs(start.nats / start.n_chars - math.log(vocab)) < 0.3  # starts near uniform
    per_char = train(model, inputs, targets, mask, steps=60, lr=0.03)
    # below ln V, and below what one character of context allows: the recurrence is doing work
    assert per_char < min(0.6 * math.log(vocab), 0.8 * bigram_entropy(inputs, targets, mask)), per_char


@pytest.mark.slow
def test_tiny_lstm_memorises_a_few_sentences():
    inputs, targets, mask, vocab = encode(MEMORISE)
    model = CharModel(vocab, "lstm", [32], 16, rng=np.random.default_rng(0))
    bits = train(model, inputs, targets, mask, steps=120, lr=0.03) / math.log(2)
    # the first character (which of 4 sentences) costs 2 bits per sentence at best: 8 / 190 = 0.04 bits
    assert bits < 0.1, bits


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("gate", ["scalar", "vector"])
@pytest.mark.parametrize("sizes", [[5], [3, 6, 2]])
def test_param_shapes_are_the_built_models(cell, gate, sizes):
    """The shape table that checks a checkpoint before a model is built matches the model, name for name."""
    from rnnchar.cells import state_shapes
    from rnnchar.model import param_shapes

    model = CharModel(V, cell, sizes, E, gate=gate, rng=np.random.default_rng(0))
    assert param_shapes(V, cell, sizes, E, gate=gate, dtype="float64") == {
        k: p.shape for k, p in model.params.items()}
    assert state_shapes(cell, sizes, 2) == [tuple(a.shape for a in s) for s in model.zero_state(2)]


def test_start_at_unigram_makes_the_untrained_prediction_the_smoothed_character_frequencies():
    model = make("lstm")
    counts = np.array([0, 5, 1, 0, 30, 2, 2])
    model.start_at_unigram(counts)
    model.params["decoder.W"].w[...] = 0  # logits = decoder.b alone
    logits, _ = model.step([1, 2])
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    expected = (counts + 1) / (counts.sum() + V)  # add-one smoothing: an unseen character is not impossible
    np.testing.assert_allclose(p, np.stack([expected, expected]), rtol=1e-12)
    with pytest.raises(ShapeError, match="counts for a vocabulary of 7"):
        model.start_at_unigram(counts[:5])
