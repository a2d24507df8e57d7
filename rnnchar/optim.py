"""Optimizers over a dict of named parameters: RMSProp (RecurrentJS-exact), Adam, SGD.

One pass over flat arrays: a model's parameters are a `FlatParams` (every `w`
and `dw` a view into one flat buffer each); a plain dict of Mats is packed into
one on each call. The base class does the shared bookkeeping (elementwise clip
and its count, L2 decay, zeroing the gradients); each optimizer supplies its
update rule. State is a flat dict of arrays keyed "slot/param-name" (scalars as
0-d arrays), so a checkpoint stores and restores it by name; the per-name
arrays are views into one flat array per slot.

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
from .mat import FlatParams


class Optimizer:
    """Shared step: clip, update rule (subclasses), L2 decay, zero the gradients; named state slots."""

    SLOTS: tuple[str, ...] = ()

    def __init__(self):
        self.state: dict[str, np.ndarray] = {}
        self._flat: dict[str, np.ndarray] = {}  # slot -> flat array, laid out like the parameters
        self._layout: tuple = ()

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.state = {k: np.array(v) for k, v in state.items()}
        self._flat, self._layout = {}, ()

    def _slots(self, params: FlatParams) -> dict[str, np.ndarray]:
        """This optimizer's flat slot arrays; `state` holds per-parameter views of them by name."""
        if self._layout != params.layout():
            self._flat, self._layout = {}, params.layout()
            for slot in self.SLOTS:
                flat, lo = np.zeros_like(params.w), 0
                for name, m in params.items():
                    hi, key = lo + m.w.size, f"{slot}/{name}"
                    view = flat[lo:hi].reshape(m.w.shape)
                    if key in self.state:  # restored from a checkpoint, or a step on another layout
                        view[...] = self.state[key]
                    self.state[key], lo = view, hi
                self._flat[slot] = flat
        return self._flat

    def step(self, params: dict[str, Mat], lr: float, regc: float = 0.0, clip: float = 0.0) -> float:
        """Update every parameter and zero its gradient; return the fraction of gradient elements clipped."""
        flat = params if isinstance(params, FlatParams) else FlatParams(params)
        w, g = flat.w, flat.dw
        slots = self._slots(flat)
        self.observe(g, slots)
        n_clipped = 0
        if clip > 0:
            n_clipped = int(np.count_nonzero(g > clip)) + int(np.count_nonzero(g < -clip))
            if n_clipped:
                np.clip(g, -clip, clip, out=g)
        delta = self.direction(g, slots, lr)  # the step to subtract, a fresh array
        if regc:
            delta += regc * w
        w -= delta
        g[...] = 0
        return n_clipped / max(g.size, 1)

    def observe(self, g: np.ndarray, slots: dict[str, np.ndarray]) -> None:
        """See the raw gradient before clipping (RMSProp's cache does)."""

    def direction(self, g: np.ndarray, slots: dict[str, np.ndarray], lr: float) -> np.ndarray:
        raise NotImplementedError


class RMSProp(Optimizer):
    """RecurrentJS's solver: cache from the raw gradient, then clip, then step and decay."""

    SLOTS = ("cache",)

    def __init__(self, decay: float = 0.999, eps: float = 1e-8):
        super().__init__()
        self.decay, self.eps = decay, eps

    def observe(self, g, slots):
        cache = slots["cache"]
        cache *= self.decay
        cache += (1 - self.decay) * g * g

    def direction(self, g, slots, lr):
        return lr * g / np.sqrt(slots["cache"] + self.eps)


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba 2015), optional elementwise clip, decoupled L2."""

    SLOTS = ("m", "v")

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        super().__init__()
        self.beta1, self.beta2, self.eps = beta1, beta2, eps

    def direction(self, g, slots, lr):
        t = int(self.state.get("t", np.array(0))) + 1
        self.state["t"] = np.array(t, dtype=np.int64)
        lr_t = lr * math.sqrt(1 - self.beta2**t) / (1 - self.beta1**t)
        m, v = slots["m"], slots["v"]
        m *= self.beta1
        m += (1 - self.beta1) * g
        v *= self.beta2
        v += (1 - self.beta2) * g * g
        # eps scaled the textbook way: m_hat / (sqrt(v_hat) + eps)
        return lr_t * m / (np.sqrt(v) + self.eps * math.sqrt(1 - self.beta2**t))


class SGD(Optimizer):
    """Plain or momentum SGD: v = momentum * v + g; w -= lr * v."""

    def __init__(self, momentum: float = 0.0):
        super().__init__()
        self.momentum = momentum
        self.SLOTS = ("v",) if momentum else ()

    def direction(self, g, slots, lr):
        if self.momentum:
            v = slots["v"]
            v *= self.momentum
            v += g
            g = v
        return lr * g


def clip_global_norm(params: dict[str, Mat], max_norm: float) -> float:
    """Scale all gradients so their joint L2 norm is at most `max_norm`; return the norm before."""
    grads = [params.dw] if isinstance(params, FlatParams) else [p.dw for p in params.values()]
    norm = math.sqrt(sum(float(np.vdot(d, d)) for d in grads))
    if max_norm > 0 and norm > max_norm:
        k = max_norm / (norm + 1e-12)
        for d in grads:
            d *= d.dtype.type(k)
    return norm


OPTIMIZERS = {"rmsprop": RMSProp, "adam": Adam, "sgd": SGD}
