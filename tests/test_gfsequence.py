"""The whole gated-feedback stack op against the per-step path it replaces, in float64.

Finite differences for the op itself are in the one table of tests/test_graph.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from rnnchar.cells import make_stack
from rnnchar.graph import Graph, Mat

# (cell, gate, activation): every cell with both gate kinds, and gf-rnn's relu
VARIANTS = [(c, g, "tanh") for c in ("gf-rnn", "gf-gru", "gf-lstm") for g in ("scalar", "vector")] + [
    ("gf-rnn", "vector", "relu")]


def run(stack, x0, s0, proj, whole):
    """Outputs, final state and every gradient (input, initial state, parameters) of one path."""
    B = s0[0][0].shape[0]
    T = x0.shape[0] // B
    for p in stack.params.values():
        p.dw = np.zeros_like(p.w)
    g, x = Graph(), Mat(x0.copy())
    state = [tuple(Mat(a.copy()) for a in s) for s in s0]
    if whole:
        top, *final = g.gated_feedback_stack(x, [lay.params for lay in stack.layers], state, stack.kind,
                                             stack.gate, stack.layers[0].activation)
    else:
        top, new = stack.forward_stepped(g, x, T, B, state)
        final = [m for s in new for m in s]
    outs = [top, *final]
    assert len(outs) == len(proj)
    for o, d in zip(outs, proj):
        o.dw = d.copy()
    g.backward()
    grads = [x.dw] + [m.dw for s in state for m in s] + [p.dw.copy() for p in stack.params.values()]
    return [o.w.copy() for o in outs], grads


@pytest.mark.parametrize("cell,gate,activation", VARIANTS)
def test_whole_stack_op_equals_the_per_step_path(cell, gate, activation):
    """Unequal sizes, a non-zero initial state, a gradient on every output: equal to 1e-10."""
    rng = np.random.default_rng(7)
    T, B, D, sizes = 5, 3, 4, [5, 4]
    stack = make_stack(cell, D, sizes, rng, np.float64, gate=gate, activation=activation)
    for p in stack.params.values():
        p.w[...] = rng.normal(0, 0.5, p.shape)
    x0 = rng.normal(0, 1, (T * B, D))
    s0 = [tuple(rng.normal(0, 0.5, a.shape) for a in s) for s in stack.zero_state(B, np.float64)]
    proj = [rng.normal(0, 1, (T * B, sizes[-1]))] + [rng.normal(0, 1, a.shape) for s in s0 for a in s]
    (vals_a, grads_a), (vals_b, grads_b) = (run(stack, x0, s0, proj, whole) for whole in (True, False))
    assert all(np.allclose(a, b, rtol=1e-12, atol=1e-13) for a, b in zip(vals_a, vals_b))
    assert all(np.abs(a).max() > 0 for a in grads_a)
    assert all(np.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(grads_a, grads_b))


@pytest.mark.parametrize("cell", ["gf-rnn", "gf-gru", "gf-lstm"])
def test_training_runs_the_whole_stack_op(cell):
    """A model's loss over T > 1 steps records one op for the stack, not one per gate and step."""
    from rnnchar.model import CharModel
    model = CharModel(6, cell, [5, 4], 3, dtype="float64", rng=np.random.default_rng(0))
    ids = np.random.default_rng(1).integers(0, 6, (8, 2))
    out = model.loss(ids, ids)
    assert len(out.graph.tape) < 10  # embed, stack, decoder product and bias (the stepped path: hundreds)
