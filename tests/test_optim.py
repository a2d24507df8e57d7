"""Optimizers against hand computations of their textbook/RecurrentJS formulas."""

from __future__ import annotations

import numpy as np
import pytest

from rnnchar import Adam, Mat, RMSProp
from rnnchar.optim import SGD, clip_global_norm

GRADS = [
    np.array([[0.5, -7.0, 2.0], [9.0, 0.01, -0.3]]),
    np.array([[-6.0, 1.0, 0.0], [0.2, 5.5, -5.5]]),
    np.array([[3.0, -0.1, 8.0], [-1.0, 0.0, 4.0]]),
]
W0 = np.array([[0.1, -0.2, 0.3], [0.4, -0.5, 0.6]])


def run(opt, **kw):
    p = Mat(W0.copy())
    fracs = []
    for g in GRADS:
        p.dw = g.copy()
        fracs.append(opt.step({"p": p}, **kw))
        assert np.all(p.dw == 0), "step must zero dw"
    return p.w, fracs


def test_rmsprop_is_recurrentjs_exact():
    lr, regc, clip, decay = 0.01, 1e-3, 5.0, 0.999
    w, cache, fracs = W0.copy(), np.zeros_like(W0), []
    for g in GRADS:  # RecurrentJS Solver.step, element by element
        for i in np.ndindex(w.shape):
            cache[i] = cache[i] * decay + (1 - decay) * g[i] ** 2  # raw gradient
            gi = min(max(g[i], -clip), clip)                       # then clip
            w[i] = w[i] - lr * gi / np.sqrt(cache[i] + 1e-8) - regc * w[i]  # decay not scaled by lr
        fracs.append(np.mean(np.abs(g) > clip))
    got, got_fracs = run(RMSProp(), lr=lr, regc=regc, clip=clip)
    assert np.allclose(got, w, rtol=1e-12, atol=0)
    assert got_fracs == pytest.approx(fracs) and got_fracs[0] == pytest.approx(2 / 6)  # -7 and 9 exceed 5


def test_rmsprop_state_is_named_and_restorable():
    opt = RMSProp()
    run(opt, lr=0.01, clip=5.0)
    assert set(opt.state) == {"cache/p"}
    other = RMSProp()
    other.load_state(opt.state)
    p1, p2 = Mat(W0.copy()), Mat(W0.copy())
    for o, p in ((opt, p1), (other, p2)):
        p.dw = GRADS[0].copy()
        o.step({"p": p}, lr=0.01)
    assert np.array_equal(p1.w, p2.w)


def test_adam_matches_textbook_update():
    lr, b1, b2, eps = 0.002, 0.9, 0.999, 1e-8
    w, mom, vel = W0.copy(), np.zeros_like(W0), np.zeros_like(W0)
    for t, g in enumerate(GRADS, start=1):
        mom = b1 * mom + (1 - b1) * g
        vel = b2 * vel + (1 - b2) * g * g
        m_hat, v_hat = mom / (1 - b1**t), vel / (1 - b2**t)
        w = w - lr * m_hat / (np.sqrt(v_hat) + eps)
    got, _ = run(Adam(), lr=lr)
    assert np.allclose(got, w, rtol=1e-10, atol=1e-14)


def test_adam_counts_steps_in_its_state():
    opt = Adam()
    run(opt, lr=0.001)
    assert int(opt.state["t"]) == 3 and {"m/p", "v/p"} <= set(opt.state)


def test_sgd_momentum_and_decay():
    lr, mu, regc = 0.1, 0.9, 0.01
    w, v = W0.copy(), np.zeros_like(W0)
    for g in GRADS:
        v = mu * v + g
        w = w - lr * v - regc * w
    got, _ = run(SGD(momentum=mu), lr=lr, regc=regc)
    assert np.allclose(got, w)


def test_clip_global_norm_scales_to_max_norm():
    a, b = Mat(np.zeros((1, 2))), Mat(np.zeros((2, 1)))
    a.dw, b.dw = np.array([[3.0, 0.0]]), np.array([[0.0], [4.0]])
    norm = clip_global_norm({"a": a, "b": b}, 1.0)
    assert norm == pytest.approx(5.0)
    assert np.allclose(a.dw, [[0.6, 0.0]]) and np.allclose(b.dw, [[0.0], [0.8]])
    assert clip_global_norm({"a": a, "b": b}, 10.0) == pytest.approx(1.0)  # under the limit: untouched
    assert np.allclose(a.dw, [[0.6, 0.0]])


def test_float32_parameters_stay_float32():
    p = Mat(W0.astype(np.float32))
    for opt in (RMSProp(), Adam(), SGD(momentum=0.5)):
        p.dw = GRADS[0].astype(np.float32)
        opt.step({"p": p}, lr=0.01, regc=1e-6, clip=5.0)
        assert p.w.dtype == np.float32


def test_model_parameters_and_slots_live_in_one_flat_buffer():
    from rnnchar.model import CharModel

    model = CharModel(5, "lstm", [4, 3], 2, rng=np.random.default_rng(0))
    flat = model.params
    assert flat.w.size == model.n_params() and model.flat_grad is flat.dw
    for p in flat.values():
        assert np.shares_memory(p.w, flat.w) and np.shares_memory(p.dw, flat.dw)
    ids = np.array([[0, 1], [2, 3], [4, 0]])
    model.loss(ids[:-1], ids[1:]).graph.backward()
    assert np.abs(model.flat_grad).max() > 0  # the ops accumulated into the views
    opt = RMSProp()
    before = flat.w.copy()
    opt.step(flat, lr=0.01, clip=5.0)
    assert not np.array_equal(before, flat.w) and not model.flat_grad.any()
    assert set(opt.state) == {f"cache/{n}" for n in flat}
    assert all(np.shares_memory(opt.state[f"cache/{n}"], opt._flat["cache"]) for n in flat)
