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
The primitive ops are below; `Graph` also inherits the fused one-step cell ops
(`lstm_gates`, `gru_reset`, `gru_update`) from `fused.FusedOps` and the
whole-sequence layer ops (`lstm_layer`, `gru_layer`, `rnn_layer`) from
`sequence.SequenceOps`, and a whole gated-feedback stack (`gated_feedback_stack`) from
`gfsequence.GatedFeedbackOps`. Every op records its backward through `_record`.
Imports numpy and the standard library only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .fused import FusedOps
from .gfsequence import GatedFeedbackOps
from .mat import Mat, accumulate, sigmoid, softmax_parts, unbroadcast
from .sequence import SequenceOps

__all__ = ["Graph", "Mat", "OPS"]


ONE_HOT_MAX_ROWS = 256  # embedding gradient by a one-hot product up to this vocabulary size


class Graph(FusedOps, SequenceOps, GatedFeedbackOps):
    """Records ops for backprop when `needs_backprop` is true; otherwise only computes."""

    def __init__(self, needs_backprop: bool = True):
        self.needs_backprop = needs_backprop
        self.tape: list[Callable[[], None]] = []
        self._deferred: dict[int, tuple[Mat, list, list, list]] = {}

    def backward(self) -> None:
        """Run the tape in reverse, accumulating into every input's `dw`."""
        for step in reversed(self.tape):
            step()
        for b, lefts, grads, _ in self._deferred.values():  # one product per deferred weight
            if lefts:
                accumulate(b, np.concatenate(lefts).T @ np.concatenate(grads), donate=True)
                lefts.clear()
                grads.clear()

    def defer_grads(self, *weights: Mat) -> None:
        """Batch the gradient of these leaf weights as right operands of `matmul`.

        A recurrent weight is multiplied once per time step; instead of T small
        products h_t.T @ d_t, backward() makes one (H, T*B) @ (T*B, n) product
        at the end; and d_t @ W.T uses one contiguous copy of W.T (a product with
        a transposed view cost 107 us against 75 us at the small sizes). Only for
        leaves (parameters), whose `dw` no op reads and whose `w` no op writes.
        """
        for w in weights:
            self._deferred.setdefault(id(w), (w, [], [], []))

    def _record(self, out, fn: Callable[..., None]):
        """Push `fn` (the backward of the op that made `out`) on the tape; return `out`.

        `out` is one Mat, then `fn(d)` gets its gradient, or a tuple of Mats, then
        `fn(*ds)` gets one gradient per output (None where no gradient reached it).
        `fn` is not called when no gradient reached any output.
        """
        if self.needs_backprop:
            if isinstance(out, Mat):
                def step():
                    if out._dw is not None:
                        fn(out._dw)
            else:
                def step():
                    ds = [m._dw for m in out]
                    if any(d is not None for d in ds):
                        fn(*ds)
            self.tape.append(step)
        return out

    # -- linear algebra ------------------------------------------------------------

    def matmul(self, a: Mat, b: Mat) -> Mat:
        """(N, D) @ (D, M) -> (N, M)."""
        out = Mat(a.w @ b.w)
        deferred = self._deferred.get(id(b))

        def back(d):
            if deferred is None:
                accumulate(a, d @ b.w.T, donate=True)
                accumulate(b, a.w.T @ d, donate=True)
                return
            transposed = deferred[3]
            if not transposed:
                transposed.append(np.ascontiguousarray(b.w.T))
            accumulate(a, d @ transposed[0], donate=True)
            deferred[1].append(a.w)  # d is out's own gradient: no later op writes to it
            deferred[2].append(d)
        return self._record(out, back)

    def add(self, a: Mat, b: Mat) -> Mat:
        """Elementwise sum; either side may broadcast (a (1, n) bias row, a (B, 1) column)."""
        out = Mat(a.w + b.w)

        def back(d):
            accumulate(a, unbroadcast(d, a.shape))
            accumulate(b, unbroadcast(d, b.shape))
        return self._record(out, back)

    def eltmul(self, a: Mat, b: Mat) -> Mat:
        """Elementwise product, with the same broadcasting as `add`."""
        out = Mat(a.w * b.w)

        def back(d):
            accumulate(a, unbroadcast(d * b.w, a.shape), donate=True)
            accumulate(b, unbroadcast(d * a.w, b.shape), donate=True)
        return self._record(out, back)

    def scale(self, a: Mat, k: float) -> Mat:
        """k * a for a constant k."""
        out = Mat(a.w * a.w.dtype.type(k))

        def back(d):
            accumulate(a, d * a.w.dtype.type(k), donate=True)
        return self._record(out, back)

    def dropout(self, a: Mat, mask: np.ndarray) -> Mat:
        """a * mask for a constant mask (inverted dropout: kept units 1 / (1 - p), dropped 0)."""
        out = Mat(a.w * mask)

        def back(d):  # the forward's mask, no new draw
            accumulate(a, d * mask, donate=True)
        return self._record(out, back)

    def one_minus(self, a: Mat) -> Mat:
        """1 - a (the GRU's update-gate complement)."""
        out = Mat(1 - a.w)

        def back(d):
            accumulate(a, -d, donate=True)
        return self._record(out, back)

    # -- nonlinearities: backward reuses the forward result ------------------------

    def tanh(self, a: Mat) -> Mat:
        out = Mat(np.tanh(a.w))

        def back(d):
            accumulate(a, d * (1 - out.w * out.w), donate=True)
        return self._record(out, back)

    def sigmoid(self, a: Mat) -> Mat:
        out = Mat(sigmoid(a.w))

        def back(d):
            accumulate(a, d * out.w * (1 - out.w), donate=True)
        return self._record(out, back)

    def relu(self, a: Mat) -> Mat:
        out = Mat(np.maximum(a.w, 0))

        def back(d):
            accumulate(a, d * (a.w > 0), donate=True)
        return self._record(out, back)

    # -- gathering and reshaping ----------------------------------------------------

    def embed(self, table: Mat, ids) -> Mat:
        """Rows of `table` for an integer array `ids` of shape (N,): (N, D)."""
        ids = np.asarray(ids).reshape(-1)
        out = Mat(table.w[ids])

        def back(d):  # repeated ids accumulate
            V = table.shape[0]
            if V <= ONE_HOT_MAX_ROWS:  # one product: 5x faster than np.add.at for 65 characters, and
                # each row's sum keeps its terms' positions, so zero rows (padding) change nothing
                one_hot = np.zeros((len(ids), V), d.dtype)
                one_hot[np.arange(len(ids)), ids] = 1
                table.dw += one_hot.T @ d
            else:
                np.add.at(table.dw, ids, d)
        return self._record(out, back)

    def concat(self, *mats: Mat) -> Mat:
        """Join column blocks: (N, a) + (N, b) -> (N, a + b)."""
        out = Mat(np.concatenate([m.w for m in mats], axis=1))
        edges = np.cumsum([0] + [m.shape[1] for m in mats])

        def back(d):
            for m, lo, hi in zip(mats, edges[:-1], edges[1:]):
                accumulate(m, d[:, lo:hi])
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
                accumulate(m, d[lo:hi])
        return self._record(out, back)

    # -- loss --------------------------------------------------------------------------

    def softmax_cross_entropy(self, logits: Mat, targets, mask=None, denom: float = 1.0) -> float:
        """Sum over rows of mask * -log softmax(logits)[target], divided by `denom`.

        Numerically stable (log-sum-exp, mat.softmax_parts). When recording, seeds `logits.dw`
        with the gradient of exactly the returned value; masked rows contribute nothing.
        """
        targets = np.asarray(targets).reshape(-1)
        rows = np.arange(len(targets))
        z, ez, sum_ez = softmax_parts(logits.w)  # (N, V), (N, V), (N,); ez becomes the gradient in place
        nll = np.log(sum_ez)
        nll -= z[rows, targets]  # (N,): -log softmax at the target
        weight = np.full(len(targets), 1.0 / denom) if mask is None else np.asarray(mask).reshape(-1) / denom
        loss = float(np.dot(nll.astype(np.float64), weight))
        if self.needs_backprop:
            w = weight.astype(ez.dtype)
            ez *= (w / sum_ez)[:, None]  # softmax * weight
            ez[rows, targets] -= w
            accumulate(logits, ez, donate=True)
        return loss

NOT_OPS = ("backward", "defer_grads")
OPS = tuple(sorted(n for n in dir(Graph) if not n.startswith("_") and callable(getattr(Graph, n))
                   and n not in NOT_OPS))
"""Every op of `Graph` (derived from the class); tests check each against finite differences."""
