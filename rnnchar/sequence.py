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

from .mat import Mat, accumulate


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


def _derivatives(act: np.ndarray, n: int) -> np.ndarray:
    """From activations in gate blocks (G, ...): s (1 - s) for the first `n` blocks, 1 - t^2 for the rest."""
    d = 1 - act
    d *= act
    t = act[n:]
    np.multiply(t, t, out=d[n:])
    np.subtract(1, d[n:], out=d[n:])
    return d


def _start(dfinal: np.ndarray | None, like: np.ndarray) -> np.ndarray:
    """The gradient flowing into the last step from after it: the final state's, or zeros."""
    return np.zeros_like(like) if dfinal is None else dfinal.copy()


class SequenceOps:
    """lstm_layer, gru_layer, rnn_layer: a whole plain recurrent layer as one op."""

    def lstm_layer(self, x: Mat, Wx: Mat, b: Mat, Wh: Mat, h0: Mat, c0: Mat) -> tuple[Mat, Mat, Mat]:
        """LSTM over T steps (gates i, f, o, g): returns (h for every step (T*B, H), h_T, c_T)."""
        B, H = h0.shape
        act = _project(x, Wx, b, 4, B, halve=3)  # (4, T, B, H): pre-activations, then activations;
        # i, f, o halved, as sigmoid(z) = (1 + tanh(z / 2)) / 2
        T = act.shape[1]
        Wh4 = _blocks(Wh.w, 4)           # (4, H, H)
        Wh4[:3] *= 0.5
        i, f, o, gg = act
        hs = np.empty((T + 1, B, H), act.dtype)  # hs[0] = h0, hs[t + 1] = h_t
        cs = np.empty_like(hs)
        tcs = np.empty((T, B, H), act.dtype)     # tanh(c_t)
        hs[0], cs[0] = h0.w, c0.w
        rec, ig = np.empty((4, B, H), act.dtype), np.empty((B, H), act.dtype)
        for t in range(T):
            a = act[:, t]
            np.matmul(hs[t], Wh4, out=rec)
            a += rec
            _squash(a, 3)
            np.multiply(f[t], cs[t], out=cs[t + 1])
            np.multiply(i[t], gg[t], out=ig)
            cs[t + 1] += ig
            np.tanh(cs[t + 1], out=tcs[t])
            np.multiply(o[t], tcs[t], out=hs[t + 1])

        def back(dhs, dhT, dcT):
            # factors for all steps at once: d pre = dc * (g i', c_prev f', -, i g') and dh * tanh(c) o'
            dpre = _derivatives(act, 3)
            dpre[0] *= gg
            dpre[1] *= cs[:-1]
            dpre[2] *= tcs
            dpre[3] *= i
            dc_dh = 1 - tcs * tcs
            dc_dh *= o
            WhT4 = np.ascontiguousarray(Wh.w.reshape(H, 4, H).transpose(1, 2, 0))  # block k's Wh^T
            dh, dc, tmp = _start(dhT, h0.w), _start(dcT, c0.w), np.empty((B, H), act.dtype)
            dH = None if dhs is None else dhs.reshape(T, B, H)
            for t in range(T - 1, -1, -1):
                if dH is not None:
                    dh += dH[t]
                np.multiply(dh, dc_dh[t], out=tmp)
                dc += tmp
                dpre[:2, t] *= dc
                dpre[3, t] *= dc
                dpre[2, t] *= dh
                dc *= f[t]
                np.matmul(dpre[:, t], WhT4, out=rec)
                np.add(rec[0], rec[1], out=dh)  # three adds: 2x faster than a sum over axis 0
                dh += rec[2]
                dh += rec[3]
            dpre = dpre.reshape(4, T * B, H)
            accumulate(Wh, _unblocks(np.matmul(hs[:-1].reshape(T * B, H).T, dpre)), donate=True)
            accumulate(h0, dh, donate=True)
            accumulate(c0, dc, donate=True)
            _project_back(x, Wx, b, dpre)
        return self._record((Mat(hs[1:].reshape(T * B, H)), Mat(hs[T].copy()), Mat(cs[T].copy())), back)

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
