"""The autodiff core: `Mat` (value `w`, gradient `dw`) and `Graph` (a tape of ops).

In the spirit of RecurrentJS's Graph/Mat, vectorised over a batch: rows are the
batch, so an activation is (B, H) and a weight (D, H). Each op computes its
result at once and, when the graph records, appends a backward closure to the
tape; `Graph.backward()` runs the tape in reverse (no recursion, no sort).

    g = Graph()
    h = g.tanh(g.add(g.matmul(x, W), b))     # (B, H)
    loss = g.softmax_cross_entropy(g.matmul(h, Wy), targets)
    g.backward()                             # W.dw, b.dw, Wy.dw now hold d loss

Gradients accumulate (`+=`) as in RecurrentJS; an optimizer step zeroes them.
Only numpy is imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


class Graph:
    """Records ops for backprop when `needs_backprop` is true; otherwise only computes."""

    def __init__(self, needs_backprop: bool = True):
        self.needs_backprop = needs_backprop
        self.tape: list[Callable[[], None]] = []
        self._deferred: dict[int, tuple[Mat, list, list]] = {}

    def backward(self) -> None:
        """Run the tape in reverse, accumulating into every input's `dw`."""
        for step in reversed(self.tape):
            step()
        for b, lefts, grads in self._deferred.values():  # one product per deferred weight
            if lefts:
                _acc(b, np.concatenate(lefts).T @ np.concatenate(grads), fresh=True)
                lefts.clear()
                grads.clear()

    def defer_grads(self, *weights: Mat) -> None:
        """Batch the gradient of these leaf weights as right operands of `matmul`.

        A recurrent weight is multiplied once per time step; instead of T small
        products h_t.T @ d_t, backward() makes one (H, T*B) @ (T*B, n) product
        at the end. Only for leaves (parameters), whose `dw` no op reads.
        """
        for w in weights:
            self._deferred.setdefault(id(w), (w, [], []))

    def _record(self, out: Mat, fn: Callable[[np.ndarray], None]) -> Mat:
        if self.needs_backprop:
            def step():
                if out._dw is not None:  # no gradient reached `out`: nothing to send back
                    fn(out._dw)
            self.tape.append(step)
        return out

    # -- linear algebra ------------------------------------------------------------

    def matmul(self, a: Mat, b: Mat) -> Mat:
        """(N, D) @ (D, M) -> (N, M)."""
        out = Mat(a.w @ b.w)
        deferred = self._deferred.get(id(b))

        def back(d):
            _acc(a, d @ b.w.T, fresh=True)
            if deferred is not None:  # d is out's own gradient: no later op writes to it
                deferred[1].append(a.w)
                deferred[2].append(d)
            else:
                _acc(b, a.w.T @ d, fresh=True)
        return self._record(out, back)

    def add(self, a: Mat, b: Mat) -> Mat:
        """Elementwise sum; either side may broadcast (a (1, n) bias row, a (B, 1) column)."""
        out = Mat(a.w + b.w)

        def back(d):
            _acc(a, _unbroadcast(d, a.shape))
            _acc(b, _unbroadcast(d, b.shape))
        return self._record(out, back)

    def eltmul(self, a: Mat, b: Mat) -> Mat:
        """Elementwise product, with the same broadcasting as `add`."""
        out = Mat(a.w * b.w)

        def back(d):
            _acc(a, _unbroadcast(d * b.w, a.shape), fresh=True)
            _acc(b, _unbroadcast(d * a.w, b.shape), fresh=True)
        return self._record(out, back)

    def scale(self, a: Mat, k: float) -> Mat:
        """k * a for a constant k."""
        out = Mat(a.w * a.w.dtype.type(k))

        def back(d):
            _acc(a, d * a.w.dtype.type(k), fresh=True)
        return self._record(out, back)

    def one_minus(self, a: Mat) -> Mat:
        """1 - a (the GRU's update-gate complement)."""
        out = Mat(1 - a.w)

        def back(d):
            _acc(a, -d, fresh=True)
        return self._record(out, back)

    # -- nonlinearities: backward reuses the forward result ------------------------

    def tanh(self, a: Mat) -> Mat:
        out = Mat(_tanh(a.w))

        def back(d):
            _acc(a, d * (1 - out.w * out.w), fresh=True)
        return self._record(out, back)

    def sigmoid(self, a: Mat) -> Mat:
        out = Mat(_sigmoid(a.w))

        def back(d):
            _acc(a, d * out.w * (1 - out.w), fresh=True)
        return self._record(out, back)

    def relu(self, a: Mat) -> Mat:
        out = Mat(np.maximum(a.w, 0))

        def back(d):
            _acc(a, d * (a.w > 0), fresh=True)
        return self._record(out, back)

    def lstm_gates(self, pre: Mat, c: Mat) -> tuple[Mat, Mat]:
        """Fused LSTM arithmetic on pre-activations (B, 4H) ordered i, f, o, g.

        i, f, o = sigmoid, g = tanh; c' = f * c + i * g; h' = o * tanh(c').
        Returns (h', c'). One op instead of a dozen; one exp pass covers all
        four blocks (tanh(x) = 2 sigmoid(2x) - 1), and backward reuses every
        forward intermediate.
        """
        H = pre.shape[1] // 4
        act = np.multiply(pre.w, _gate_scale(4 * H, pre.w.dtype))  # (B, 4H): -x, -x, -x, -2x
        _sigmoid_of_negated(act)
        g_blk = act[:, 3 * H:]
        g_blk *= 2
        g_blk -= 1
        i, f, o, gg = act[:, :H], act[:, H:2 * H], act[:, 2 * H:3 * H], g_blk
        c_new = f * c.w
        c_new += i * gg
        tc = _tanh(c_new)
        h_out, c_out = Mat(o * tc), Mat(c_new)

        def step():
            dh, dc = h_out._dw, c_out._dw
            if dh is None and dc is None:
                return
            dpre = np.empty_like(act)
            if dh is None:
                dct = dc.copy()
                dpre[:, 2 * H:3 * H] = 0
            else:
                dct = 1 - tc * tc
                dct *= o
                dct *= dh
                if dc is not None:
                    dct += dc
                np.multiply(dh, tc, out=dpre[:, 2 * H:3 * H])
            np.multiply(dct, gg, out=dpre[:, :H])
            np.multiply(dct, c.w, out=dpre[:, H:2 * H])
            np.multiply(dct, i, out=dpre[:, 3 * H:])
            dpre *= _gate_deriv(act, gg)
            _acc(pre, dpre, fresh=True)
            dct *= f
            _acc(c, dct, fresh=True)
        if self.needs_backprop:
            self.tape.append(step)
        return h_out, c_out

    def gru_reset(self, x_zr: Mat, rec: Mat, h: Mat) -> tuple[Mat, Mat]:
        """GRU gates: zr = sigmoid(x_zr + rec) (B, 2H) ordered z, r; returns (zr, r * h)."""
        H = h.shape[1]
        zr = np.add(x_zr.w, rec.w)
        np.negative(zr, out=zr)
        _sigmoid_of_negated(zr)
        r = zr[:, H:]
        zr_out, rh_out = Mat(zr), Mat(r * h.w)

        def step():
            dzr, drh = zr_out._dw, rh_out._dw
            if dzr is None and drh is None:
                return
            d = np.zeros_like(zr) if dzr is None else dzr.copy()
            if drh is not None:
                d[:, H:] += drh * h.w
                _acc(h, drh * r, fresh=True)
            d *= zr * (1 - zr)
            _acc(x_zr, d)
            _acc(rec, d, fresh=True)
        if self.needs_backprop:
            self.tape.append(step)
        return zr_out, rh_out

    def gru_update(self, x_n: Mat, rec: Mat, zr: Mat, h: Mat) -> Mat:
        """GRU candidate and blend: n = tanh(x_n + rec); h' = (1 - z) * h + z * n, z = zr[:, :H]."""
        H = h.shape[1]
        n = _tanh(np.add(x_n.w, rec.w))
        z = zr.w[:, :H]
        out = Mat(h.w + z * (n - h.w))

        def back(d):
            dn = d * z
            dn *= 1 - n * n
            _acc(x_n, dn)
            _acc(rec, dn, fresh=True)
            dzr = np.zeros_like(zr.w)
            np.multiply(d, n - h.w, out=dzr[:, :H])
            _acc(zr, dzr, fresh=True)
            _acc(h, d * (1 - z), fresh=True)
        return self._record(out, back)

    # -- gathering and reshaping ----------------------------------------------------

    def embed(self, table: Mat, ids) -> Mat:
        """Rows of `table` for an integer array `ids` of shape (N,): (N, D)."""
        ids = np.asarray(ids).reshape(-1)
        out = Mat(table.w[ids])

        def back(d):
            np.add.at(table.dw, ids, d)  # repeated ids accumulate
        return self._record(out, back)

    def concat(self, *mats: Mat) -> Mat:
        """Join column blocks: (N, a) + (N, b) -> (N, a + b)."""
        out = Mat(np.concatenate([m.w for m in mats], axis=1))
        edges = np.cumsum([0] + [m.shape[1] for m in mats])

        def back(d):
            for m, lo, hi in zip(mats, edges[:-1], edges[1:]):
                _acc(m, d[:, lo:hi])
        return self._record(out, back)

    def split(self, a: Mat, sizes: Sequence[int]) -> list[Mat]:
        """Cut column blocks of the given widths (e.g. fused gates (B, 4H) -> 4 x (B, H))."""
        if sum(sizes) != a.shape[1]:
            raise ValueError(f"split sizes {list(sizes)} do not add up to {a.shape[1]} columns")
        edges = np.cumsum([0] + list(sizes))
        return [self.columns(a, lo, hi) for lo, hi in zip(edges[:-1], edges[1:])]

    def columns(self, a: Mat, lo: int, hi: int) -> Mat:
        """Columns lo:hi of `a`."""
        out = Mat(a.w[:, lo:hi])

        def back(d):
            a.dw[:, lo:hi] += d
        return self._record(out, back)

    def rows(self, a: Mat, lo: int, hi: int) -> Mat:
        """Rows lo:hi of `a` (one time step of a time-major (T*B, n) matrix)."""
        out = Mat(a.w[lo:hi])

        def back(d):
            a.dw[lo:hi] += d
        return self._record(out, back)

    def stack_rows(self, *mats: Mat) -> Mat:
        """Stack row blocks: T x (B, n) -> (T*B, n), e.g. every step's output for one decoder product."""
        out = Mat(np.concatenate([m.w for m in mats], axis=0))
        edges = np.cumsum([0] + [m.shape[0] for m in mats])

        def back(d):
            for m, lo, hi in zip(mats, edges[:-1], edges[1:]):
                _acc(m, d[lo:hi])
        return self._record(out, back)

    # -- loss --------------------------------------------------------------------------

    def softmax_cross_entropy(self, logits: Mat, targets, mask=None, denom: float = 1.0) -> float:
        """Sum over rows of mask * -log softmax(logits)[target], divided by `denom`.

        Numerically stable (log-sum-exp). When recording, seeds `logits.dw` with
        the gradient of exactly the returned value; masked rows contribute nothing.
        """
        targets = np.asarray(targets).reshape(-1)
        z = logits.w - logits.w.max(axis=1, keepdims=True)
        ez = np.exp(z)
        sum_ez = ez.sum(axis=1, keepdims=True)
        rows = np.arange(len(targets))
        nll = np.log(sum_ez[:, 0]) - z[rows, targets]  # (N,)
        weight = np.full(len(targets), 1.0 / denom) if mask is None else np.asarray(mask).reshape(-1) / denom
        loss = float(np.dot(nll.astype(np.float64), weight))
        if self.needs_backprop:
            grad = ez / sum_ez
            grad[rows, targets] -= 1
            grad *= weight.astype(grad.dtype)[:, None]
            _acc(logits, grad, fresh=True)
        return loss


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


OPS = (
    "matmul", "add", "eltmul", "scale", "one_minus", "tanh", "sigmoid", "relu",
    "embed", "concat", "split", "columns", "rows", "stack_rows", "softmax_cross_entropy", "lstm_gates",
    "gru_reset", "gru_update", "defer_grads",
)
"""Every op of `Graph`; tests check each against finite differences and that none is missing."""
