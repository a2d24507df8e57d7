"""Optimizers over a dict of named parameters: RMSProp (RecurrentJS-exact), Adam, SGD.

Every optimizer keeps its state as a flat dict of arrays keyed "slot/param-name"
(plus scalars as 0-d arrays), so a checkpoint can store and restore it, and
`step` zeroes each parameter's `dw` after updating.

    opt = RMSProp()
    frac_clipped = opt.step(params, lr=0.01, regc=1e-6, clip=5.0)

`regc` is RecurrentJS's L2 decay: `w -= regc * w` each step, not scaled by lr,
applied to every parameter (the same for all three optimizers).
Imports numpy and the standard library only.
"""

from __future__ import annotations

import math

import numpy as np

from .graph import Mat


class Optimizer:
    """Shared bookkeeping: named state slots created on first use."""

    def __init__(self):
        self.state: dict[str, np.ndarray] = {}

    def _slot(self, slot: str, name: str, like: np.ndarray) -> np.ndarray:
        key = f"{slot}/{name}"
        if key not in self.state:
            self.state[key] = np.zeros_like(like)
        return self.state[key]

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.state = {k: np.array(v) for k, v in state.items()}


def _clip_elementwise(g: np.ndarray, clip: float) -> tuple[np.ndarray, int]:
    """Clip each element to [-clip, clip] (off when clip <= 0); return it and the count clipped."""
    if clip <= 0:
        return g, 0
    n = int(np.count_nonzero(np.abs(g) > clip))
    return (np.clip(g, -clip, clip) if n else g), n


class RMSProp(Optimizer):
    """RecurrentJS's solver: cache from the raw gradient, then clip, then step and decay."""

    def __init__(self, decay: float = 0.999, eps: float = 1e-8):
        super().__init__()
        self.decay, self.eps = decay, eps

    def step(self, params: dict[str, Mat], lr: float, regc: float = 0.0, clip: float = 0.0) -> float:
        """Update every parameter; return the fraction of gradient elements clipped."""
        n_clipped = n_total = 0
        for name, p in params.items():
            g = p.dw
            cache = self._slot("cache", name, p.w)
            cache *= self.decay
            cache += (1 - self.decay) * g * g
            g, n = _clip_elementwise(g, clip)
            p.w -= lr * g / np.sqrt(cache + self.eps) + regc * p.w
            p.dw[...] = 0
            n_clipped += n
            n_total += g.size
        return n_clipped / max(n_total, 1)


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba 2015), optional elementwise clip, decoupled L2."""

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        super().__init__()
        self.beta1, self.beta2, self.eps = beta1, beta2, eps

    def step(self, params: dict[str, Mat], lr: float, regc: float = 0.0, clip: float = 0.0) -> float:
        t = int(self.state.get("t", np.array(0))) + 1
        self.state["t"] = np.array(t, dtype=np.int64)
        lr_t = lr * math.sqrt(1 - self.beta2**t) / (1 - self.beta1**t)
        n_clipped = n_total = 0
        for name, p in params.items():
            g, n = _clip_elementwise(p.dw, clip)
            m = self._slot("m", name, p.w)
            v = self._slot("v", name, p.w)
            m *= self.beta1
            m += (1 - self.beta1) * g
            v *= self.beta2
            v += (1 - self.beta2) * g * g
            # eps scaled the textbook way: m_hat / (sqrt(v_hat) + eps)
            p.w -= lr_t * m / (np.sqrt(v) + self.eps * math.sqrt(1 - self.beta2**t)) + regc * p.w
            p.dw[...] = 0
            n_clipped += n
            n_total += g.size
        return n_clipped / max(n_total, 1)


class SGD(Optimizer):
    """Plain or momentum SGD: v = momentum * v + g; w -= lr * v."""

    def __init__(self, momentum: float = 0.0):
        super().__init__()
        self.momentum = momentum

    def step(self, params: dict[str, Mat], lr: float, regc: float = 0.0, clip: float = 0.0) -> float:
        n_clipped = n_total = 0
        for name, p in params.items():
            g, n = _clip_elementwise(p.dw, clip)
            if self.momentum:
                v = self._slot("v", name, p.w)
                v *= self.momentum
                v += g
                g = v
            p.w -= lr * g + regc * p.w
            p.dw[...] = 0
            n_clipped += n
            n_total += g.size
        return n_clipped / max(n_total, 1)


def clip_global_norm(params: dict[str, Mat], max_norm: float) -> float:
    """Scale all gradients so their joint L2 norm is at most `max_norm`; return the norm before."""
    norm = math.sqrt(sum(float(np.vdot(p.dw, p.dw)) for p in params.values()))
    if max_norm > 0 and norm > max_norm:
        k = max_norm / (norm + 1e-12)
        for p in params.values():
            p.dw *= p.dw.dtype.type(k)
    return norm


OPTIMIZERS = {"rmsprop": RMSProp, "adam": Adam, "sgd": SGD}
