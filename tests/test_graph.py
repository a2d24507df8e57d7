"""Every Graph op against float64 central finite differences, driven from one table."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from rnnchar import Graph, Mat
from rnnchar.cells import stack_shapes
from rnnchar.graph import NOT_OPS, OPS
from rnnchar.mat import log_softmax

from gradcheck import numeric_grad, rel_error

RNG = np.random.default_rng(0)


def m(*shape, lo=-1.0, hi=1.0) -> Mat:
    return Mat(RNG.uniform(lo, hi, shape))


IDS = np.array([0, 2, 2, 4, 0])  # repeated ids must accumulate
TARGETS = np.array([1, 0, 3, 3])
MASK = np.array([1.0, 0.0, 1.0, 1.0])
DROP = np.array([[2.0, 0, 2, 2], [0, 2, 0, 2], [2, 2, 2, 0]])  # a fixed inverted-dropout mask, p = 0.5

# name -> (inputs, f(graph, *inputs) -> Mat or float loss). Each case draws fresh inputs.
CASES = {
    "matmul": lambda: ([m(3, 4), m(4, 5)], lambda g, a, b: g.matmul(a, b)),
    "add": lambda: ([m(3, 4), m(3, 4)], lambda g, a, b: g.add(a, b)),
    "add/bias-row": lambda: ([m(3, 4), m(1, 4)], lambda g, a, b: g.add(a, b)),
    "add/column": lambda: ([m(3, 4), m(3, 1)], lambda g, a, b: g.add(a, b)),
    "eltmul": lambda: ([m(3, 4), m(3, 4)], lambda g, a, b: g.eltmul(a, b)),
    "eltmul/column-gate": lambda: ([m(3, 1), m(3, 4)], lambda g, a, b: g.eltmul(a, b)),
    "scale": lambda: ([m(3, 4)], lambda g, a: g.scale(a, -2.5)),
    "dropout": lambda: ([m(3, 4)], lambda g, a: g.dropout(a, DROP)),
    "one_minus": lambda: ([m(3, 4)], lambda g, a: g.one_minus(a)),
    "tanh": lambda: ([m(3, 4, lo=-2, hi=2)], lambda g, a: g.tanh(a)),
    "sigmoid": lambda: ([m(3, 4, lo=-4, hi=4)], lambda g, a: g.sigmoid(a)),
    # keep inputs away from the kink at 0, where relu has no derivative
    "relu": lambda: ([Mat(np.sign(RNG.uniform(-1, 1, (3, 4))) * RNG.uniform(0.1, 1, (3, 4)))],
                     lambda g, a: g.relu(a)),
    "embed": lambda: ([m(5, 3)], lambda g, t: g.embed(t, IDS)),
    "embed/large-table": lambda: ([m(300, 2)], lambda g, t: g.embed(t, np.r_[IDS, 299, 299, 150])),
    "concat": lambda: ([m(3, 2), m(3, 4), m(3, 1)], lambda g, a, b, c: g.concat(a, b, c)),
    "split": lambda: ([m(3, 6)], lambda g, a: g.concat(*reversed(g.split(a, [1, 3, 2])))),
    "columns": lambda: ([m(3, 6)], lambda g, a: g.columns(a, 2, 5)),
    "rows": lambda: ([m(6, 3)], lambda g, a: g.rows(a, 1, 4)),
    "stack_rows": lambda: ([m(2, 3), m(4, 3)], lambda g, a, b: g.stack_rows(a, b)),
    "softmax_cross_entropy": lambda: ([m(4, 5, lo=-3, hi=3)],
                                      lambda g, z: g.softmax_cross_entropy(z, TARGETS, denom=2.0)),
    "softmax_cross_entropy/mask": lambda: ([m(4, 5, lo=-3, hi=3)],
                                           lambda g, z: g.softmax_cross_entropy(z, TARGETS, MASK)),
    "lstm_gates": lambda: ([m(3, 8, lo=-2, hi=2), m(3, 2)], lambda g, pre, c: g.lstm_gates(pre, c)),
    "lstm_gates/h-only": lambda: ([m(3, 8, lo=-2, hi=2), m(3, 2)], lambda g, pre, c: g.lstm_gates(pre, c)[0]),
    "gru_reset": lambda: ([m(3, 4, lo=-2, hi=2), m(3, 4), m(3, 2)],
                          lambda g, x, rec, h: g.gru_reset(x, rec, h)),
    "gru_reset/rh-only": lambda: ([m(3, 4), m(3, 4), m(3, 2)],
                                  lambda g, x, rec, h: g.gru_reset(x, rec, h)[1]),
    "gru_update": lambda: ([m(3, 2), m(3, 2), m(3, 4, lo=0.1, hi=0.9), m(3, 2)],
                           lambda g, x, rec, zr, h: g.gru_update(x, rec, zr, h)),
    "defer_grads": lambda: ([m(2, 3), m(3, 3)], _deferred_recurrence),
    # whole-sequence layers: T = 3 steps of B = 2 rows, D = 3, H = 2; every output carries a gradient
    "lstm_layer": lambda: ([m(6, 3), m(3, 8), m(1, 8), m(2, 8), m(2, 2), m(2, 2)],
                           lambda g, *a: g.lstm_layer(*a)),
    "lstm_layer/one-row": lambda: ([m(3, 3), m(3, 8), m(1, 8), m(2, 8), m(1, 2), m(1, 2)],  # B = 1: rows
                                   lambda g, *a: g.lstm_layer(*a)),
    "lstm_layer/outputs-only": lambda: ([m(6, 3), m(3, 8), m(1, 8), m(2, 8), m(2, 2), m(2, 2)],
                                        lambda g, *a: g.lstm_layer(*a)[0]),
    "gru_layer": lambda: ([m(6, 3), m(3, 6), m(1, 6), m(2, 4), m(2, 2), m(2, 2)],
                          lambda g, *a: g.gru_layer(*a)),
    "gru_layer/outputs-only": lambda: ([m(6, 3), m(3, 6), m(1, 6), m(2, 4), m(2, 2), m(2, 2)],
                                       lambda g, *a: g.gru_layer(*a)[0]),
    "rnn_layer": lambda: ([m(6, 3), m(3, 2), m(1, 2), m(2, 2), m(2, 2)], lambda g, *a: g.rnn_layer(*a)),
    "rnn_layer/relu": lambda: ([m(6, 3), m(3, 2), m(1, 2), m(2, 2), m(2, 2)],
                               lambda g, *a: g.rnn_layer(*a, activation="relu")),
    # a whole gated-feedback stack: T = 3 steps of B = 2 rows, D = 3, unequal layers [2, 3]
    "gated_feedback_stack/gf-lstm-scalar": lambda: _gated_feedback_case("lstm", "scalar"),
    "gated_feedback_stack/gf-gru-vector": lambda: _gated_feedback_case("gru", "vector"),
    "gated_feedback_stack/gf-rnn-scalar": lambda: _gated_feedback_case("rnn", "scalar"),
    "gated_feedback_stack/gf-rnn-vector-outputs-only": lambda: _gated_feedback_case("rnn", "vector", True),
    "reuse/same-input-twice": lambda: ([m(3, 3)], lambda g, a: g.eltmul(g.tanh(a), g.matmul(a, a))),
}


# a whole stack's many outputs make the projected loss big enough that, at eps = 1e-6, its rounding
# (~1e-16 relative, divided by 2 eps) reaches the 1e-10 the check allows near-zero entries
EPS = {"gated_feedback_stack": 1e-5}


def _gated_feedback_case(kind, gate, top_only=False):
    """Inputs x, every layer's parameters and initial state as one flat list, and the op on them."""
    sizes, B, T = [2, 3], 2, 3
    shapes = stack_shapes(f"gf-{kind}", 3, sizes, gate)
    names = [[k.split(".")[1] for k in shapes if k.startswith(f"layer{j}.")] for j in range(2)]
    n_state, rng = 2 if kind == "lstm" else 1, np.random.default_rng(11)  # its own draws: the same
    # inputs whichever cases run before it
    shapes = [(T * B, 3)] + [shapes[f"layer{j}.{k}"] for j in range(2) for k in names[j]]
    shapes += [(B, H) for H in sizes for _ in range(n_state)]
    inputs = [Mat(rng.uniform(-1, 1, shape)) for shape in shapes]

    def op(g, x, *rest):
        layers, k = [], 0
        for j in range(2):
            layers.append(dict(zip(names[j], rest[k:k + len(names[j])])))
            k += len(names[j])
        state = [tuple(rest[k + n_state * j:k + n_state * (j + 1)]) for j in range(2)]
        out = g.gated_feedback_stack(x, layers, state, kind, gate)
        return out[0] if top_only else out
    return inputs, op


def _deferred_recurrence(g, h, W):
    """Three steps of h <- tanh(h W) with W's gradient batched over the steps."""
    g.defer_grads(W)
    for _ in range(3):
        h = g.tanh(g.matmul(h, W))
    return h


def scalar_loss(case_fn, inputs, proj, record=True):
    """Run the op in a fresh graph; Mat outputs are projected to a scalar with fixed weights."""
    g = Graph(needs_backprop=record)
    out = case_fn(g, *inputs)
    if isinstance(out, float):
        return g, out
    total = 0.0
    for k, o in enumerate(out if isinstance(out, tuple) else (out,)):
        o.dw = proj((k,) + o.w.shape)
        total += float(np.sum(o.w * o.dw))
    return g, total


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_gradient_matches_finite_differences(name):
    inputs, fn = CASES[name]()
    proj_rng = np.random.default_rng(1)
    cache = {}

    def proj(key):
        if key not in cache:
            cache[key] = proj_rng.standard_normal(key[1:])
        return cache[key].copy()

    g, _ = scalar_loss(fn, inputs, proj)
    g.backward()
    for x in inputs:
        num = numeric_grad(lambda: scalar_loss(fn, inputs, proj, record=False)[1], x.w,
                           eps=EPS.get(name.split("/")[0], 1e-6))
        assert np.abs(x.dw).max() > 0, f"{name}: no gradient reached an input"
        assert rel_error(x.dw, num) < 1e-6, name


def test_every_op_has_a_gradient_case():
    covered = {name.split("/")[0] for name in CASES}
    public = {n for n in dir(Graph) if not n.startswith("_") and callable(getattr(Graph, n))}
    assert public == set(OPS) | set(NOT_OPS)
    assert {"matmul", "lstm_gates", "gru_update", "lstm_layer", "gru_layer", "rnn_layer"} <= set(OPS)
    assert set(OPS) <= covered, f"ops without a gradient check: {set(OPS) - covered}"


def test_gradients_accumulate_across_backward_calls():
    a, b = m(2, 3), m(3, 2)
    for _ in range(2):
        g = Graph()
        out = g.matmul(a, b)
        out.dw = np.ones_like(out.w)
        g.backward()
    assert np.allclose(a.dw, 2 * np.ones((2, 2)) @ b.w.T)


def test_no_recording_without_backprop():
    g = Graph(needs_backprop=False)
    a = m(2, 2)
    g.tanh(g.matmul(a, a))
    g.softmax_cross_entropy(a, np.array([0, 1]))
    assert g.tape == [] and a._dw is None


def test_deep_chain_has_no_recursion_limit():
    x = Mat(np.full((1, 4), 0.5))
    g = Graph()
    h = x
    for _ in range(3000):  # 6,000 nodes, far past Python's default recursion limit
        h = g.add(g.scale(h, 0.999), x)
    h.dw = np.ones_like(h.w)
    g.backward()
    expected = sum(0.999**k for k in range(3001))  # dh/dx through every path
    assert len(g.tape) == 6000
    assert np.allclose(x.dw, expected)


def test_softmax_cross_entropy_is_stable_and_masked():
    g = Graph()
    z = Mat(np.array([[1000.0, 0.0], [-1000.0, 0.0], [5.0, 5.0]]))
    loss = g.softmax_cross_entropy(z, np.array([0, 0, 1]), np.array([1.0, 1.0, 0.0]))
    assert np.isclose(loss, 1000.0)  # row 0 costs ~0, row 1 costs 1000, row 2 masked
    assert np.all(z.dw[2] == 0) and np.all(np.isfinite(z.dw))


def test_log_softmax_is_stable_and_is_what_the_loss_charges():
    """One stable softmax (mat.softmax_parts) behind the loss and beam search's log_softmax."""
    logits = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0], [-800.0, -800.0, -800.0]])
    logp = log_softmax(logits)
    expected = np.array([[0.0, -1000.0, -2000.0],
                         [-2 - np.log(1 + np.exp(-1) + np.exp(-2)), -1 - np.log(1 + np.exp(-1) + np.exp(-2)),
                          -np.log(1 + np.exp(-1) + np.exp(-2))],
                         [-np.log(3.0)] * 3])  # by hand; a naive log(exp(x) / sum) gives nan and -inf here
    np.testing.assert_allclose(logp, expected, rtol=1e-12, atol=1e-12)
    targets = np.array([1, 2, 0])
    loss = Graph(needs_backprop=False).softmax_cross_entropy(Mat(logits), targets)
    assert loss == pytest.approx(-logp[np.arange(3), targets].sum(), rel=1e-12)


def test_float32_stays_float32():
    rng = np.random.default_rng(0)
    a, b = Mat.randn(2, 3, 0.1, rng), Mat.uniform(3, 4, 0.1, rng)
    g = Graph()
    out = g.sigmoid(g.add(g.matmul(a, b), Mat.zeros(1, 4)))
    assert out.w.dtype == np.float32
    g.softmax_cross_entropy(out, np.array([0, 1]))
    g.backward()
    assert a.dw.dtype == np.float32 and b.dw.dtype == np.float32


def test_split_rejects_wrong_sizes():
    with pytest.raises(ValueError, match="do not add up"):
        Graph().split(m(2, 5), [2, 2])


def test_numeric_core_imports_only_numpy():
    code = (
        "import sys; import rnnchar.mat, rnnchar.fused, rnnchar.graph, rnnchar.optim;"
        "import rnnchar.cells, rnnchar.model;"
        "bad = {'click', 'yaml', 'tqdm'} & set(sys.modules); print(sorted(bad)); sys.exit(bool(bad))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_deferred_weight_gradient_equals_per_step_gradient():
    rng = np.random.default_rng(5)
    h0, W = rng.standard_normal((4, 3)), rng.standard_normal((3, 3)) * 0.5
    grads = []
    for defer in (False, True):
        hm, Wm = Mat(h0.copy()), Mat(W.copy())
        g = Graph()
        if defer:
            g.defer_grads(Wm)
        h = hm
        for _ in range(5):
            h = g.tanh(g.matmul(h, Wm))
        h.dw = np.ones_like(h.w)
        g.backward()
        grads.append((Wm.dw.copy(), hm.dw.copy()))
    assert np.allclose(grads[0][0], grads[1][0]) and np.allclose(grads[0][1], grads[1][1])
