"""Cells: finite differences, plain-NumPy references (forward and BPTT), gated-feedback reductions, init."""

from __future__ import annotations

import numpy as np
import pytest

from rnnchar.cells import CELLS, Layer, make_stack
from rnnchar.graph import Graph, Mat
from rnnchar.model import CharModel

from gradcheck import directional_check, numeric_grad, rel_error

V, E, B, T = 6, 3, 3, 4
MASK = (np.arange(T)[:, None] < np.array([4, 2, 3])).astype(float)  # (T, B): trailing steps are padding
VARIANTS = [(c, "scalar") for c in CELLS] + [(c, "vector") for c in CELLS if c.startswith("gf-")]


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def make(cell, sizes, gate="scalar", seed=0, std=0.5) -> CharModel:
    """A float64 model with every parameter (biases too) drawn from N(0, std)."""
    rng = np.random.default_rng(seed)
    model = CharModel(V, cell, sizes, E, gate=gate, dtype="float64", rng=rng)
    for p in model.params.values():
        p.w[...] = rng.normal(0, std, p.shape)
    return model


def data(model, seed=1):
    """Inputs, targets (T, B) and a random non-zero initial state."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, (T + 1, B))
    state = [tuple(rng.normal(0, 0.5, a.shape) for a in s) for s in model.zero_state(B)]
    return ids[:-1], ids[1:], state, rng


def same_state(got, want) -> bool:
    """Per layer (h,) or (h, c) against a reference whose missing c is None."""
    want = [[a for a in s if a is not None] for s in want]
    return [len(s) for s in got] == [len(s) for s in want] and all(
        np.allclose(a, b, rtol=1e-10, atol=1e-12) for s, w in zip(got, want) for a, b in zip(s, w))


def layer(model, j) -> dict:
    return {k.split(".")[1]: p.w for k, p in model.params.items() if k.startswith(f"layer{j}.")}


# -- plain NumPy references, no graph --------------------------------------------------------------

def np_step(kind, p, x, h, c):
    """One step of a plain cell: (h, c, cache). "gru-after" resets the candidate's product, not h."""
    H = h.shape[1]
    xp = x @ p["Wx"] + p["b"]
    if kind == "rnn":
        h2 = np.tanh(xp + h @ p["Wh"])
        return h2, c, (x, h, h2)
    if kind == "lstm":
        a = xp + h @ p["Wh"]
        i, f, o = (sigmoid(a[:, k * H:(k + 1) * H]) for k in range(3))
        gg = np.tanh(a[:, 3 * H:])
        c2 = f * c + i * gg
        return o * np.tanh(c2), c2, (x, h, c, i, f, o, gg, c2)
    zr = sigmoid(xp[:, :2 * H] + h @ p["Wh"])
    z, r = zr[:, :H], zr[:, H:]
    rec = (r * h) @ p["Whn"] if kind == "gru" else r * (h @ p["Whn"])
    n = np.tanh(xp[:, 2 * H:] + rec)
    return (1 - z) * h + z * n, c, (x, h, z, r, n)


def np_forward(kind, layers, model, inputs, state):
    """Stacked plain cells over T steps, then the decoder: logits (T, B, V), top outputs, caches, state."""
    P = model.params
    state = [(s[0], s[1] if len(s) > 1 else None) for s in state]
    caches, outs = [[] for _ in layers], []
    for ids in inputs:
        x = P["embed.W"].w[ids]
        for j, p in enumerate(layers):
            h, c, cache = np_step(kind, p, x, *state[j])
            state[j], x = (h, c), h
            caches[j].append(cache)
        outs.append(x)
    hs = np.stack(outs)
    return hs @ P["decoder.W"].w + P["decoder.b"].w, hs, caches, state


def np_loss(logits, targets, mask):
    """Masked softmax cross-entropy summed over steps, averaged over the batch, and d loss / d logits."""
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    onehot = np.eye(logits.shape[-1])[targets]
    n = mask.shape[1]
    return -(mask * (logp * onehot).sum(-1)).sum() / n, (np.exp(logp) - onehot) * mask[..., None] / n


def np_backward(kind, p, model, inputs, hs, caches, dlogits):
    """Hand-written BPTT through one layer, the embedding and the decoder."""
    P = model.params
    grads = {f"layer0.{k}": np.zeros_like(v) for k, v in p.items()}
    gw = {k.split(".")[1]: v for k, v in grads.items()}
    grads["decoder.W"] = np.einsum("tbh,tbv->hv", hs, dlogits)
    grads["decoder.b"] = dlogits.sum((0, 1))[None]
    dhs = dlogits @ P["decoder.W"].w.T
    dh_next, dc_next = np.zeros_like(hs[0]), np.zeros_like(hs[0])
    dxs = np.zeros(inputs.shape + (P["embed.W"].shape[1],))
    for t in reversed(range(len(inputs))):
        dh = dhs[t] + dh_next
        if kind == "rnn":
            x, h, h2 = caches[t]
            dxp = dh * (1 - h2**2)
            dh_next = dxp @ p["Wh"].T
        elif kind == "lstm":
            x, h, c, i, f, o, gg, c2 = caches[t]
            tc = np.tanh(c2)
            dc = dh * o * (1 - tc**2) + dc_next
            dxp = np.concatenate([dc * gg * i * (1 - i), dc * c * f * (1 - f), dh * tc * o * (1 - o),
                                  dc * i * (1 - gg**2)], 1)
            dc_next, dh_next = dc * f, dxp @ p["Wh"].T
        else:
            x, h, z, r, n = caches[t]
            dan = dh * z * (1 - n**2)
            drh = dan @ p["Whn"].T
            gw["Whn"] += (r * h).T @ dan
            dzr = np.concatenate([dh * (n - h) * z * (1 - z), drh * h * r * (1 - r)], 1)
            dh_next = dh * (1 - z) + drh * r + dzr @ p["Wh"].T
            dxp = np.concatenate([dzr, dan], 1)
        gw["Wh"] += h.T @ dxp[:, :p["Wh"].shape[1]]
        gw["Wx"] += x.T @ dxp
        gw["b"] += dxp.sum(0, keepdims=True)
        dxs[t] = dxp @ p["Wx"].T
    grads["embed.W"] = np.zeros_like(P["embed.W"].w)
    np.add.at(grads["embed.W"], inputs, dxs)
    return grads


# -- tests ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell,gate", VARIANTS)
def test_cell_gradients_match_finite_differences(cell, gate):
    model = make(cell, [5, 4], gate)
    inputs, targets, state, rng = data(model)
    out = model.loss(inputs, targets, MASK, state)
    out.graph.backward()
    names = sorted(model.params)
    grads = [model.params[n].dw.copy() for n in names]
    for n, g in zip(names, grads):
        assert np.abs(g).max() > 0, f"{cell}/{gate}: no gradient reached {n}"

    def f():
        return model.loss(inputs, targets, MASK, state, needs_backprop=False).loss

    assert directional_check(f, [model.params[n].w for n in names], grads, rng) < 1e-6
    own = {"rnn": ["Wh"], "lstm": ["Wh"], "gru": ["Wh", "Whn"], "gf-rnn": []}.get(cell, ["Wh"])
    small = own if not cell.startswith("gf-") else own + ["U", "Ug"]
    for name in (f"layer1.{k}" for k in small):
        num = numeric_grad(f, model.params[name].w, eps=1e-4)  # rounding vs truncation
        assert rel_error(grads[names.index(name)], num) < 1e-6, name


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_plain_cells_match_numpy_forward_and_bptt(cell):
    model = make(cell, [5])
    inputs, targets, state, _ = data(model)
    p = layer(model, 0)
    logits, hs, caches, final = np_forward(cell, [p], model, inputs, state)
    loss, dlogits = np_loss(logits, targets, MASK)
    expected = np_backward(cell, p, model, inputs, hs, caches[0], dlogits)

    out = model.loss(inputs, targets, MASK, state)
    out.graph.backward()
    assert np.isclose(out.loss, loss, rtol=1e-12)
    assert np.isclose(out.nats, loss * B, rtol=1e-12) and out.n_chars == MASK.sum()
    assert same_state(out.state, final)
    assert set(expected) == set(model.params)
    for name, g in expected.items():
        assert np.allclose(model.params[name].dw, g, rtol=1e-10, atol=1e-13), name


def stepped_layer(g, layer, x, T, B, state):
    """The per-step path: Layer.step over every step, the input projection made once."""
    xp = layer.input_proj(g, x)
    s, outs = state, []
    for t in range(T):
        s = layer.step(g, g.rows(xp, t * B, (t + 1) * B), s)
        outs.append(s[0])
    return g.stack_rows(*outs), s


def whole_layer(g, lay, x, state):
    """The whole-sequence op with the initial state as Mats (so their gradients can be compared)."""
    p = lay.params
    if lay.kind == "lstm":
        return g.lstm_layer(x, p["Wx"], p["b"], p["Wh"], *state)
    if lay.kind == "gru":
        return g.gru_layer(x, p["Wx"], p["b"], p["Wh"], p["Whn"], *state)
    return g.rnn_layer(x, p["Wx"], p["b"], p["Wh"], *state, activation=lay.activation)


@pytest.mark.parametrize("kind,activation,Bn", [("lstm", "tanh", 3), ("lstm", "tanh", 1), ("gru", "tanh", 3),
                                                ("rnn", "tanh", 3), ("rnn", "relu", 3)])
def test_whole_sequence_layer_op_equals_the_per_step_cells(kind, activation, Bn):
    """Outputs, final state and every gradient (weights, inputs, initial state) in float64; the LSTM
    also at B = 1, where its steps run as (1, 4H) rows."""
    Tn, D, H = 5, 4, 6
    rng = np.random.default_rng(7)
    lay = Layer(kind, D, H, rng, np.float64, activation=activation)
    for p in lay.params.values():
        p.w[...] = rng.normal(0, 0.5, p.shape)
    x0 = rng.normal(0, 1, (Tn * Bn, D))
    s0 = [rng.normal(0, 0.5, a.shape) for a in lay.zero_state(Bn, np.float64)]
    proj = [rng.normal(0, 1, (Tn * Bn, H))] + [rng.normal(0, 1, (Bn, H)) for _ in s0]
    results = []
    for whole in (True, False):
        for p in lay.params.values():
            p.dw = np.zeros_like(p.w)
        g, x, state = Graph(), Mat(x0.copy()), tuple(Mat(a.copy()) for a in s0)
        if whole:
            outs = whole_layer(g, lay, x, state)
        else:
            hs, final = stepped_layer(g, lay, x, Tn, Bn, state)
            outs = (hs, *final)
        for o, d in zip(outs, proj):
            o.dw = d.copy()
        g.backward()
        grads = [x.dw.copy()] + [s.dw.copy() for s in state] + [p.dw.copy() for p in lay.params.values()]
        results.append(([o.w.copy() for o in outs], grads))
    (vals_a, grads_a), (vals_b, grads_b) = results
    assert all(np.allclose(a, b, rtol=1e-12, atol=1e-13) for a, b in zip(vals_a, vals_b))
    assert all(np.abs(a).max() > 0 for a in grads_a)
    assert all(np.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(grads_a, grads_b))


def saturate_gates(model, H, L):
    """Vector gates forced open for i == j and shut for i != j: the gated sum is h_j U(j->j)."""
    for j in range(L):
        p = layer(model, j)
        p["Wg"][...], p["Ug"][...] = 0, 0
        p["bg"][...] = -1e3
        p["bg"][0, j * H:(j + 1) * H] = 1e3


def stepped_logits(model, inputs, state):
    out = []
    for ids in inputs:
        logits, state = model.step(ids, state)
        out.append(logits)
    return np.stack(out)


@pytest.mark.parametrize("cell", ["gf-rnn", "gf-gru", "gf-lstm"])
def test_gated_feedback_with_diagonal_gates_reduces_to_a_plain_cell(cell):
    H, L = 4, 2
    gf = make(cell, [H, H], "vector")
    saturate_gates(gf, H, L)
    inputs, targets, state, _ = data(gf)
    own = {j: layer(gf, j) for j in range(L)}
    diag = {j: own[j]["U"][j * H:(j + 1) * H] for j in range(L)}  # U(j->j)
    got = gf.loss(inputs, targets, MASK, state, needs_backprop=False)
    got_logits = stepped_logits(gf, inputs, state)

    if cell == "gf-gru":  # reset applied after the product: a GRU the library does not offer, so NumPy
        layers = [{**own[j], "Whn": diag[j]} for j in range(L)]  # Wx, b, Wh (z, r) and U(j->j)
        logits, _, _, final = np_forward("gru-after", layers, gf, inputs, state)
        want_loss, want_state, want_logits = np_loss(logits, targets, MASK)[0], final, logits
    else:
        plain = make(cell[3:], [H, H], seed=5)
        arrays = {n: gf.params[n].w for n in ("embed.W", "decoder.W", "decoder.b")}
        for j in range(L):
            Wh = np.hstack([own[j]["Wh"], diag[j]]) if cell == "gf-lstm" else diag[j]  # (H, 4H) or (H, H)
            arrays.update({f"layer{j}.Wx": own[j]["Wx"], f"layer{j}.b": own[j]["b"], f"layer{j}.Wh": Wh})
        plain.load_params(arrays)
        ref = plain.loss(inputs, targets, MASK, state, needs_backprop=False)
        want_loss, want_state, want_logits = ref.loss, ref.state, stepped_logits(plain, inputs, state)
    assert np.isclose(got.loss, want_loss, rtol=1e-12)
    assert np.allclose(got_logits, want_logits, rtol=1e-10, atol=1e-12)
    assert same_state(got.state, want_state)


def np_gf_forward(model, kind, gate, sizes, inputs, state):
    """Chung et al. 2015 written out step by step: logits (T, B, V) and the final states."""
    L, edges, P = len(sizes), np.cumsum([0] + sizes), model.params
    state = [list(s) for s in state]
    outs = []
    for ids in inputs:
        hs = [s[0] for s in state]
        hstar, x = np.concatenate(hs, 1), P["embed.W"].w[ids]
        for j, H in enumerate(sizes):
            p, h, w = layer(model, j), hs[j], 1 if gate == "scalar" else H
            gates = sigmoid(x @ p["Wg"] + hstar @ p["Ug"] + p.get("bg", 0))  # gate i->j in block i
            rec = sum(gates[:, i * w:(i + 1) * w] * (hs[i] @ p["U"][edges[i]:edges[i + 1]]) for i in range(L))
            xp = x @ p["Wx"] + p["b"]
            if kind == "gf-rnn":
                state[j] = [np.tanh(xp + rec)]
            elif kind == "gf-gru":
                z, r = np.split(sigmoid(xp[:, :2 * H] + h @ p["Wh"]), 2, axis=1)
                state[j] = [(1 - z) * h + z * np.tanh(xp[:, 2 * H:] + r * rec)]
            else:
                i, f, o = np.split(sigmoid(xp[:, :3 * H] + h @ p["Wh"]), 3, axis=1)
                c = f * state[j][1] + i * np.tanh(xp[:, 3 * H:] + rec)
                state[j] = [o * np.tanh(c), c]
            x = state[j][0]
        outs.append(x)
    return np.stack(outs) @ P["decoder.W"].w + P["decoder.b"].w, state


@pytest.mark.parametrize("cell,gate", [v for v in VARIANTS if v[0].startswith("gf-")])
def test_gated_feedback_unequal_sizes_depth_three(cell, gate):
    sizes, total = [6, 3, 5], 14
    model = make(cell, sizes, gate)
    inputs, targets, state, rng = data(model)
    D = [E] + sizes[:-1]
    for j, H in enumerate(sizes):
        width = len(sizes) * (1 if gate == "scalar" else H)
        p = layer(model, j)
        assert p["U"].shape == (total, H) and p["Ug"].shape == (total, width)
        assert p["Wg"].shape == (D[j], width)
        assert ("bg" in p) == (gate == "vector")
    logits, final = np_gf_forward(model, cell, gate, sizes, inputs, state)
    out = model.loss(inputs, targets, MASK, state)
    assert np.isclose(out.loss, np_loss(logits, targets, MASK)[0], rtol=1e-12)
    n = 2 if cell == "gf-lstm" else 1  # (h, c) or (h,)
    assert [[a.shape for a in s] for s in out.state] == [[(B, H)] * n for H in sizes]
    assert same_state(out.state, final)
    out.graph.backward()
    names = sorted(model.params)

    def f():
        return model.loss(inputs, targets, MASK, state, needs_backprop=False).loss

    arrays, grads = [model.params[n].w for n in names], [model.params[n].dw for n in names]
    assert directional_check(f, arrays, grads, rng) < 1e-6


@pytest.mark.parametrize("gate", ["scalar", "vector"])
def test_gate_block_i_belongs_to_source_layer_i(gate):
    """With U(1->2) zero, the gate 1->2 cannot matter: exactly its columns get no gradient."""
    sizes, edges = [6, 3, 5], [0, 6, 9, 14]
    model = make("gf-rnn", sizes, gate)
    inputs, targets, state, _ = data(model)
    model.params["layer2.U"].w[edges[1]:edges[2]] = 0
    model.loss(inputs, targets, MASK, state).graph.backward()
    w = 1 if gate == "scalar" else sizes[2]
    for name in ("layer2.Wg", "layer2.Ug") + (("layer2.bg",) if gate == "vector" else ()):
        dw = model.params[name].dw
        for i in range(3):
            block = np.abs(dw[:, i * w:(i + 1) * w]).max()
            assert (block == 0) == (i == 1), (name, i, block)


@pytest.mark.parametrize("cell", ["lstm", "gf-lstm"])
def test_lstm_forget_bias_block(cell):
    model = CharModel(V, cell, [7, 5], E, forget_bias=2.5, rng=np.random.default_rng(0))
    for j, H in enumerate([7, 5]):
        b = model.params[f"layer{j}.b"].w
        assert b.shape == (1, 4 * H)
        assert np.all(b[:, H:2 * H] == 2.5)
        assert np.all(b[:, :H] == 0) and np.all(b[:, 2 * H:] == 0)


@pytest.mark.parametrize("cell", CELLS)
def test_init_scale_draws_normal_weights(cell):
    model = CharModel(50, cell, [64, 64], 32, init_scale=0.1, candidate_gain=1.0,
                      rng=np.random.default_rng(0))
    for name, p in model.params.items():
        if p.shape[0] > 1:  # every matrix (biases start at zero or the forget bias)
            w, se = p.w.ravel(), 0.1 / np.sqrt(p.w.size)  # standard error of the mean; the std's is se/sqrt 2
            assert abs(w.std() - 0.1) < 4 * se and abs(w.mean()) < 5 * se, (name, w.std())


@pytest.mark.parametrize("cell", CELLS)
def test_default_init_is_uniform_within_one_over_sqrt_h(cell):
    sizes = [100, 20]
    model = CharModel(V, cell, sizes, E, candidate_gain=1.0, rng=np.random.default_rng(0))
    for j, H in enumerate(sizes):
        for k in ("Wx", "Wh", "Whn", "U"):
            if f"layer{j}.{k}" in model.params:
                w = np.abs(model.params[f"layer{j}.{k}"].w)
                assert w.max() <= 1 / np.sqrt(H) and w.max() > 0.9 / np.sqrt(H), (j, k)


# (first candidate column in Wx as a multiple of H, in Wh or None, Whn scaled) per cell
CANDIDATE = {"lstm": (3, 3, False), "gf-lstm": (3, None, False), "gru": (2, None, True),
             "gf-gru": (2, None, False)}


@pytest.mark.parametrize("cell", CELLS)
def test_candidate_gain_scales_the_candidate_blocks_only(cell):
    sizes, gain = [7, 5], 2.5
    base = CharModel(V, cell, sizes, E, candidate_gain=1.0, rng=np.random.default_rng(0))
    model = CharModel(V, cell, sizes, E, candidate_gain=gain, rng=np.random.default_rng(0))
    x0, h0, whn = CANDIDATE.get(cell, (None, None, False))
    for name, p in model.params.items():
        want = base.params[name].w.copy()
        H = sizes[int(name[5])] if name.startswith("layer") else 0
        key = name.partition(".")[2]
        if key == "Wx" and x0 is not None:
            want[:, x0 * H:] *= gain
        elif key == "Wh" and h0 is not None:
            want[:, h0 * H:] *= gain
        elif key == "Whn" and whn:
            want *= gain
        np.testing.assert_allclose(p.w, want, rtol=1e-6, err_msg=name)
    if x0 is not None:  # and the scaled blocks really are larger than the gates' own
        H = sizes[0]
        wx = np.abs(model.params["layer0.Wx"].w)
        assert wx[:, x0 * H:].max() > 0.9 * gain / np.sqrt(H) >= wx[:, :x0 * H].max()


@pytest.mark.parametrize("opts", [{"gate": "vectr"}, {"activation": "sigmoid"}, {"cell": "lstmm"}])
def test_make_stack_rejects_unknown_options(opts):
    kw = {"cell": "gf-rnn", **opts}
    with pytest.raises(ValueError, match="unknown"):
        make_stack(kw.pop("cell"), 3, [4], np.random.default_rng(0), **kw)
