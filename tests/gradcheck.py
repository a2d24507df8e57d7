"""Central finite differences in float64, shared by the graph, cell and model tests."""

from __future__ import annotations

import numpy as np


def numeric_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d f() / d x by central differences, perturbing `x` in place."""
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest elementwise relative error, with a floor so near-zero entries compare absolutely."""
    return float(np.max(np.abs(a - b) / np.maximum(1e-4, np.abs(a) + np.abs(b))))


def directional_check(f, arrays: list[np.ndarray], grads: list[np.ndarray], rng, eps: float = 1e-5) -> float:
    """Random-projection form <g, v> vs (f(x + eps v) - f(x - eps v)) / 2 eps over all arrays at once."""
    vs = [rng.standard_normal(a.shape) for a in arrays]
    analytic = sum(float(np.vdot(g, v)) for g, v in zip(grads, vs))
    for a, v in zip(arrays, vs):
        a += eps * v
    fp = f()
    for a, v in zip(arrays, vs):
        a -= 2 * eps * v
    fm = f()
    for a, v in zip(arrays, vs):
        a += eps * v
    numeric = (fp - fm) / (2 * eps)
    return abs(analytic - numeric) / max(1e-8, abs(analytic) + abs(numeric))
