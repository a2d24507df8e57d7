"""`Mat`, the value-and-gradient node of the graph, and the numeric helpers the ops share.

Only numpy is imported here.
"""

from __future__ import annotations

import numpy as np


class Mat:
    """A 2-D value `w` and its gradient `dw` (allocated on first use)."""

    __slots__ = ("w", "_dw")

    def __init__(self, w):
        w = np.asarray(w)
        if w.ndim != 2:
            raise ValueError(f"Mat needs a 2-D array, got shape {w.shape}")
        self.w = w
        self._dw = None

    @property
    def dw(self) -> np.ndarray:
        if self._dw is None:
            self._dw = np.zeros_like(self.w)
        return self._dw

    @dw.setter
    def dw(self, value) -> None:
        self._dw = np.asarray(value, dtype=self.w.dtype)

    @property
    def shape(self) -> tuple[int, int]:
        return self.w.shape

    def __repr__(self) -> str:
        return f"Mat(shape={self.w.shape}, dtype={self.w.dtype})"

    @classmethod
    def zeros(cls, n: int, d: int, dtype=np.float32) -> Mat:
        return cls(np.zeros((n, d), dtype=dtype))

    @classmethod
    def randn(cls, n: int, d: int, std: float, rng: np.random.Generator, dtype=np.float32) -> Mat:
        return cls((rng.standard_normal((n, d)) * std).astype(dtype))

    @classmethod
    def uniform(cls, n: int, d: int, scale: float, rng: np.random.Generator, dtype=np.float32) -> Mat:
        return cls(rng.uniform(-scale, scale, (n, d)).astype(dtype))


def _acc(m: Mat, g: np.ndarray, fresh: bool = False) -> None:
    """Accumulate gradient `g` into `m.dw`; `fresh` means nobody else holds `g`."""
    if m._dw is None:
        m._dw = g if fresh else g.copy()
    else:
        m._dw += g


def _unbroadcast(g: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Sum `g` over the axes along which an operand of `shape` was broadcast."""
    if g.shape == shape:
        return g
    return g.sum(axis=tuple(i for i in range(2) if shape[i] == 1), keepdims=True)


def _sigmoid_of_negated(z: np.ndarray) -> np.ndarray:
    """z <- 1 / (1 + exp(z)), i.e. sigmoid(-z), in place. NumPy's exp is SIMD-vectorised, its
    float32 tanh is not (about 2x slower here); clamping z at 60 keeps exp finite."""
    np.minimum(z, 60.0, out=z)
    np.exp(z, out=z)
    z += 1
    return np.reciprocal(z, out=z)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return _sigmoid_of_negated(np.negative(x))


def _tanh(x: np.ndarray) -> np.ndarray:
    """tanh(x) = 2 sigmoid(2x) - 1, for the same reason as `_sigmoid_of_negated`."""
    out = _sigmoid_of_negated(np.multiply(x, -2.0))
    out *= 2
    out -= 1
    return out


_SCALES: dict = {}


def _gate_scale(n: int, dtype) -> np.ndarray:
    """(1, 4H) row -1 for the sigmoid blocks i, f, o and -2 for the tanh block g."""
    key = (n, np.dtype(dtype))
    if key not in _SCALES:
        row = np.full((1, n), -1.0, dtype)
        row[:, 3 * n // 4:] = -2.0
        _SCALES[key] = row
    return _SCALES[key]


def _gate_deriv(act: np.ndarray, g_blk: np.ndarray) -> np.ndarray:
    """Derivatives of the activations from their values: s (1 - s) for i, f, o; 1 - g^2 for g."""
    d = 1 - act
    d *= act
    H = g_blk.shape[1]
    np.multiply(g_blk, g_blk, out=d[:, 3 * H:])
    np.subtract(1, d[:, 3 * H:], out=d[:, 3 * H:])
    return d
