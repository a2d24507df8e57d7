"""Whole-sequence recurrent layer ops: one graph op runs a plain layer over all T steps.

A mixin of `Graph` (which provides `needs_backprop` and `_record`). Each op
takes the layer's time-major input x (T*B, D), its weights and the initial
state (B, H) Mats; it makes the input projection x Wx + b for every step in
one product, runs the T-step recurrence into preallocated (T, B, ...) arrays
with `out=` ufuncs, and returns the outputs of every step as one (T*B, H) Mat
plus the final state (for truncated BPTT). Backward is one closure: a T-step
loop over preallocated buffers, then one product each for dWh, dWx and dx and
one sum for db. No Mat and no closure per step, so `rnnchar train` pays for
products and a few ufuncs a step, not for a graph node per gate.

Sigmoid gates run as (1 + tanh(z / 2)) / 2 from halved columns of the input
projection and of Wh (exact in binary floating point), so each step makes one
tanh pass over all its gates. The per-step cells in `cells.py` compute the same
functions; tests check these ops against them and against finite differences.
Imports numpy and the standard library only.
"""

from __future__ import annotations

import numpy as np

from .mat import Mat, accumulate, half_columns


def _blocks(W: np.ndarray, G: int) -> np.ndarray:
    """(n, G*H) -> its G column blocks as one contiguous (G, n, H) array."""
    n, GH = W.shape
    return np.ascontiguousarray(W.reshape(n, G, GH // G).transpose(1, 0, 2))


def _unblocks(W: np.ndarray) -> np.ndarray:
    """(G, n, H) -> (n, G*H), the inverse of `_blocks`."""
    G, n, H = W.shape
    return np.ascontiguousarray(W.transpose(1, 0, 2)).reshape(n, G * H)


def _project(x: Mat, Wx: Mat, b: Mat, G: int, B: int, halve: int = 0) -> np.ndarray:
    """x Wx + b for every step, gate block by gate block: (G, T, B, H), each block contiguous; the
    first `halve` blocks come out halved (through halved copies of their weights and biases).

    Block-major, because NumPy's ufuncs run several times slower on a (B, H) column
    block of a (B, G*H) row than on a contiguous (B, H) array, and a step does a
    dozen of them; the products do not care (G products of (B, H) @ (H, H)).
    """
    Wx_blocks, b_blocks = _blocks(Wx.w, G), b.w.reshape(G, 1, -1).copy()
    Wx_blocks[:halve] *= 0.5
    b_blocks[:halve] *= 0.5
    xp = np.matmul(x.w, Wx_blocks)  # (G, T*B, H)
    xp += b_blocks
    return xp.reshape(G, -1, B, xp.shape[2])


def _project_back(x: Mat, Wx: Mat, b: Mat, dxp: np.ndarray) -> None:
    """Gradients of x Wx + b from its gradient in blocks (G, T*B, H): one batched product each for Wx
    and x, one sum for b."""
    G, N, H = dxp.shape
    accumulate(Wx, _unblocks(np.matmul(x.w.T, dxp)), donate=True)
    accumulate(b, dxp.sum(axis=1).reshape(1, G * H), donate=True)
    dx = np.matmul(dxp, Wx.w.reshape(-1, G, H).transpose(1, 2, 0))  # (G, T*B, D)
    accumulate(x, dx.sum(axis=0), donate=True)


def _squash(a: np.ndarray, n: int) -> np.ndarray:
    """In place over gate blocks (G, ...): tanh of every block, then (1 + t) / 2 on the first `n`
    (sigmoid gates, whose pre-activations were halved)."""
    np.tanh(a, out=a)
    s = a[:n]
    s *= 0.5
    s += 0.5
    return a


def _derivatives(act: np.ndarray, n: int, axis: int = 0) -> np.ndarray:
    """From activations in gate blocks along `axis` (0: (G, ...), 1: (T, G, ...)): s (1 - s) for the
    first `n` blocks, 1 - t^2 for the rest."""
    d = 1 - act
    d *= act
    t, dt = (act[n:], d[n:]) if axis == 0 else (act[:, n:], d[:, n:])
    np.multiply(t, t, out=dt)
    np.subtract(1, dt, out=dt)
    return d


LSTM_ORDER = (2, 0, 1, 3)  # lstm_layer's block k is the parameters' block LSTM_ORDER[k]: o, i, f, g


def _order_columns(H: int) -> np.ndarray:
    """Column indices that reorder (n, 4H) from the parameters' i, f, o, g blocks to o, i, f, g."""
    return np.concatenate([np.arange(k * H, (k + 1) * H) for k in LSTM_ORDER])


def _lstm_blocks(W: np.ndarray, halve: bool = False, transpose: bool = False) -> np.ndarray:
    """(n, 4H) in the parameters' order -> its blocks o, i, f, g as one contiguous (4, n, H) array (or
    each block transposed, (4, H, n)), the sigmoid blocks halved if asked: one pass over W."""
    H = W.shape[1] // 4
    out = np.empty((4, H, W.shape[0]) if transpose else (4, W.shape[0], H), W.dtype)
    for k, src in enumerate(LSTM_ORDER):
        block = W[:, src * H:(src + 1) * H]
        np.multiply(block.T if transpose else block, 0.5 if halve and k < 3 else 1, out=out[k])
    return out


def _start(dfinal: np.ndarray | None, like: np.ndarray) -> np.ndarray:
    """The gradient flowing into the last step from after it: the final state's, or zeros."""
    return np.zeros_like(like) if dfinal is None else dfinal.copy()


class SequenceOps:
    """lstm_layer, gru_layer, rnn_layer: a whole plain recurrent layer as one op."""

    def lstm_layer(self, x: Mat, Wx: Mat, b: Mat, Wh: Mat, h0: Mat, c0: Mat) -> tuple[Mat, Mat, Mat]:
        """LSTM over T steps (gates i, f, o, g): returns (h for every step (T*B, H), h_T, c_T).

        Time-major, step by step contiguous: Z[t] holds step t's gates in the order o, i, f, g (sigmoid
        blocks first, halved as sigmoid(z) = (1 + tanh(z / 2)) / 2) and then c_{t-1}, so that i*g and
        f*c_{t-1} are one product of (i, f) with (g, c_{t-1}). At B = 1 a step's (4, 1, H) gates are a
        (1, 4H) row, and each step's recurrent product is one matrix product forward and one back."""
        B, H = h0.shape
        T = x.shape[0] // B
        Z = np.empty((T + 1, 5, B, H), h0.w.dtype)  # Z[T]: only c_T (block 4) is used
        xp = (x.w @ half_columns(Wx.w, 3 * H)).reshape(T, B, 4, H)  # (T, B, 4, H) in the parameters' order
        bias = half_columns(b.w, 3 * H).reshape(4, 1, H)
        for k, src in enumerate(LSTM_ORDER):  # one pass: the bias added while reordering into Z
            np.add(xp[:, :, src], bias[src], out=Z[:T, k])
        del xp
        Z[0, 4] = c0.w
        row = B == 1  # then W_rec is (H, 4H) in the order o, i, f, g, else its (4, H, H) blocks
        W_rec = half_columns(Wh.w, 3 * H)[:, _order_columns(H)] if row else _lstm_blocks(Wh.w, halve=True)
        hs, tcs = np.empty((T + 1, B, H), Z.dtype), np.empty((T, B, H), Z.dtype)  # hs[t + 1] = h_t
        hs[0] = h0.w
        rec, prod = np.empty((1, 4 * H) if row else (4, B, H), Z.dtype), np.empty((2, B, H), Z.dtype)
        rec4 = rec.reshape(4, B, H)
        for z, h, h_new, c_new, tc in zip(Z[:T], hs[:-1], hs[1:], Z[1:, 4], tcs):
            np.matmul(h, W_rec, out=rec)
            gates = z[:4]
            gates += rec4
            _squash(gates, 3)
            np.multiply(z[1:3], z[3:5], out=prod)  # i * g, f * c_{t-1}
            np.add(prod[0], prod[1], out=c_new)
            np.tanh(c_new, out=tc)
            np.multiply(z[0], tc, out=h_new)

        def back(dhs, dhT, dcT):
            # per-step factors for all steps at once: d pre = (dh tanh(c) o', dc g i', dc c_prev f', dc i g')
            dpre = _derivatives(Z[:T, :4], 3, axis=1)  # (T, 4, B, H)
            dpre[:, 0] *= tcs
            for k, factor in ((1, 3), (2, 4), (3, 1)):  # i' * g, f' * c_{t-1}, g' * i
                dpre[:, k] *= Z[:T, factor]
            dc_dh = 1 - tcs * tcs
            dc_dh *= Z[:T, 0]  # o (1 - tanh(c)^2)
            WT = _lstm_blocks(Wh.w, transpose=True)  # (4, H, H): Wh_k^T in the order o, i, f, g
            WT = WT.reshape(4 * H, H) if row else WT
            dh, dc, tmp = _start(dhT, h0.w), _start(dcT, c0.w), np.empty((B, H), Z.dtype)
            dH = None if dhs is None else dhs.reshape(T, B, H)
            for t in range(T - 1, -1, -1):
                if dH is not None:
                    dh += dH[t]
                np.multiply(dh, dc_dh[t], out=tmp)
                dc += tmp
                d = dpre[t]
                d[0] *= dh
                d[1:] *= dc
                dc *= Z[t, 2]  # f
                if row:
                    np.matmul(d.reshape(1, 4 * H), WT, out=dh)
                else:
                    np.matmul(d, WT, out=rec)
                    np.add(rec[0], rec[1], out=dh)  # three adds: 2x faster than a sum over axis 0
                    dh += rec[2]
                    dh += rec[3]
            drow = np.empty((T, B, 4, H), Z.dtype)  # back to rows t*B + b and the order i, f, o, g
            for k, src in enumerate(LSTM_ORDER):
                drow[:, :, src] = dpre[:, k]
            drow = drow.reshape(T * B, 4 * H)
            del dpre
            accumulate(Wh, hs[:-1].reshape(T * B, H).T @ drow, donate=True)
            accumulate(h0, dh, donate=True)
            accumulate(c0, dc, donate=True)
            accumulate(Wx, x.w.T @ drow, donate=True)
            accumulate(b, drow.sum(axis=0, keepdims=True), donate=True)
            accumulate(x, drow @ Wx.w.T, donate=True)
        return self._record((Mat(hs[1:].reshape(T * B, H)), Mat(hs[T].copy()), Mat(Z[T, 4].copy())), back)

    def gru_layer(self, x: Mat, Wx: Mat, b: Mat, Wh: Mat, Whn: Mat, h0: Mat) -> tuple[Mat, Mat]:
        """GRU over T steps: zr = sigmoid(x Wx_zr + h Wh), n = tanh(x Wx_n + (r h) Whn),
        h' = (1 - z) h + z n. Returns (h for every step (T*B, H), h_T)."""
        B, H = h0.shape
        act = _project(x, Wx, b, 3, B, halve=2)  # (3, T, B, H): z, r, n
        T = act.shape[1]
        Wh2 = _blocks(Wh.w, 2)
        Wh2 *= 0.5
        z, r, n = act
        hs = np.empty((T + 1, B, H), act.dtype)
        rhs = np.empty((T, B, H), act.dtype)  # r * h_{t-1}
        hs[0] = h0.w
        rec, tmp = np.empty((2, B, H), act.dtype), np.empty((B, H), act.dtype)
        for t in range(T):
            h, zr = hs[t], act[:2, t]
            np.matmul(h, Wh2, out=rec)
            zr += rec
            _squash(zr, 2)
            np.multiply(r[t], h, out=rhs[t])
            np.matmul(rhs[t], Whn.w, out=tmp)
            n[t] += tmp
            np.tanh(n[t], out=n[t])
            np.subtract(n[t], h, out=hs[t + 1])
            hs[t + 1] *= z[t]
            hs[t + 1] += h

        def back(dhs, dhT):
            h_prev = hs[:-1]
            fac = _derivatives(act, 2)  # then: dh -> dz_pre, drh -> dr_pre, dh -> dn_pre
            fac[0] *= n - h_prev
            fac[1] *= h_prev
            fac[2] *= z
            keep = 1 - z
            dxp = np.empty_like(act)
            WhT2 = np.ascontiguousarray(Wh.w.reshape(H, 2, H).transpose(1, 2, 0))
            WhnT = np.ascontiguousarray(Whn.w.T)
            dh, drh = _start(dhT, h0.w), np.empty((B, H), act.dtype)
            dH = None if dhs is None else dhs.reshape(T, B, H)
            for t in range(T - 1, -1, -1):
                if dH is not None:
                    dh += dH[t]
                np.multiply(dh, fac[2, t], out=dxp[2, t])
                np.multiply(dh, fac[0, t], out=dxp[0, t])
                np.matmul(dxp[2, t], WhnT, out=drh)  # d (r h)
                np.multiply(drh, fac[1, t], out=dxp[1, t])
                dh *= keep[t]
                drh *= r[t]
                dh += drh
                np.matmul(dxp[:2, t], WhT2, out=rec)
                dh += rec[0]
                dh += rec[1]
            flat = dxp.reshape(3, T * B, H)
            accumulate(Wh, _unblocks(np.matmul(h_prev.reshape(T * B, H).T, flat[:2])), donate=True)
            accumulate(Whn, rhs.reshape(T * B, H).T @ flat[2], donate=True)
            accumulate(h0, dh, donate=True)
            _project_back(x, Wx, b, flat)
        return self._record((Mat(hs[1:].reshape(T * B, H)), Mat(hs[T].copy())), back)

    def rnn_layer(self, x: Mat, Wx: Mat, b: Mat, Wh: Mat, h0: Mat,
                  activation: str = "tanh") -> tuple[Mat, Mat]:
        """h' = tanh(x Wx + b + h Wh) (or relu) over T steps: returns (h for every step (T*B, H), h_T)."""
        B, H = h0.shape
        T = x.shape[0] // B
        hs = np.empty((T + 1, B, H), Wx.w.dtype)
        hs[0] = h0.w
        np.matmul(x.w, Wx.w, out=hs[1:].reshape(T * B, H))  # the input projection, in place
        hs[1:] += b.w
        rec = np.empty((B, H), hs.dtype)
        for t in range(1, T + 1):
            np.matmul(hs[t - 1], Wh.w, out=rec)
            hs[t] += rec
            if activation == "relu":
                np.maximum(hs[t], 0, out=hs[t])
            else:
                np.tanh(hs[t], out=hs[t])

        def back(dhs, dhT):
            if activation == "relu":
                dpre = (hs[1:] > 0).astype(hs.dtype)
            else:
                dpre = hs[1:] * hs[1:]
                np.subtract(1, dpre, out=dpre)
            WhT = np.ascontiguousarray(Wh.w.T)
            dh = _start(dhT, h0.w)
            dH = None if dhs is None else dhs.reshape(T, B, H)
            for t in range(T - 1, -1, -1):
                if dH is not None:
                    dh += dH[t]
                dpre[t] *= dh
                np.matmul(dpre[t], WhT, out=dh)
            dpre = dpre.reshape(T * B, H)
            accumulate(Wh, hs[:-1].reshape(T * B, H).T @ dpre, donate=True)
            accumulate(h0, dh, donate=True)
            _project_back(x, Wx, b, dpre.reshape(1, T * B, H))
        return self._record((Mat(hs[1:].reshape(T * B, H)), Mat(hs[T].copy())), back)
