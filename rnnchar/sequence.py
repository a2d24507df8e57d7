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

from .fused import gate_derivatives
from .mat import Mat, accumulate, half_columns, squash_gates


def _project(x: Mat, Wx: Mat, b: Mat, B: int, halve: int = 0) -> np.ndarray:
    """x Wx + b for every step, first `halve` columns halved: (T, B, G*H)."""
    xp = x.w @ Wx.w
    xp += b.w
    if halve:
        xp[:, :halve] *= 0.5
    return xp.reshape(-1, B, xp.shape[1])


def _project_back(x: Mat, Wx: Mat, b: Mat, dxp: np.ndarray) -> None:
    """Gradients of x Wx + b from d(x Wx + b) (T*B, G*H): one product each for Wx and x, one sum for b."""
    accumulate(Wx, x.w.T @ dxp, donate=True)
    accumulate(b, dxp.sum(axis=0, keepdims=True), donate=True)
    accumulate(x, dxp @ Wx.w.T, donate=True)


def _start(dfinal: np.ndarray | None, like: np.ndarray) -> np.ndarray:
    """The gradient flowing into the last step from after it: the final state's, or zeros."""
    return np.zeros_like(like) if dfinal is None else dfinal.copy()


class SequenceOps:
    """lstm_layer, gru_layer, rnn_layer: a whole plain recurrent layer as one op."""

    def lstm_layer(self, x: Mat, Wx: Mat, b: Mat, Wh: Mat, h0: Mat, c0: Mat) -> tuple[Mat, Mat, Mat]:
        """LSTM over T steps (gates i, f, o, g): returns (h for every step (T*B, H), h_T, c_T)."""
        B, H = h0.shape
        act = _project(x, Wx, b, B, halve=3 * H)  # (T, B, 4H): pre-activations, then activations
        T = act.shape[0]
        Wh_half = half_columns(Wh.w, 3 * H)
        hs = np.empty((T + 1, B, H), act.dtype)  # hs[0] = h0, hs[t + 1] = h_t
        cs = np.empty_like(hs)
        tcs = np.empty((T, B, H), act.dtype)     # tanh(c_t)
        hs[0], cs[0] = h0.w, c0.w
        rec, ig = np.empty((B, 4 * H), act.dtype), np.empty((B, H), act.dtype)
        for t in range(T):
            a = act[t]
            np.matmul(hs[t], Wh_half, out=rec)
            a += rec
            squash_gates(a, 3 * H)
            np.multiply(a[:, H:2 * H], cs[t], out=cs[t + 1])
            np.multiply(a[:, :H], a[:, 3 * H:], out=ig)
            cs[t + 1] += ig
            np.tanh(cs[t + 1], out=tcs[t])
            np.multiply(a[:, 2 * H:3 * H], tcs[t], out=hs[t + 1])

        def back(dhs, dhT, dcT):
            # per-step factors, for all steps at once: dpre = dc * (g i', c_prev f', ., i g') and dh * tc o'
            dpre = gate_derivatives(act, 3 * H)
            dpre[..., :H] *= act[..., 3 * H:]
            dpre[..., H:2 * H] *= cs[:-1]
            dpre[..., 2 * H:3 * H] *= tcs
            dpre[..., 3 * H:] *= act[..., :H]
            dc_dh = 1 - tcs * tcs
            dc_dh *= act[..., 2 * H:3 * H]  # o (1 - tanh(c)^2)
            WhT = np.ascontiguousarray(Wh.w.T)
            dh, dc, tmp = _start(dhT, h0.w), _start(dcT, c0.w), np.empty((B, H), act.dtype)
            dH = None if dhs is None else dhs.reshape(T, B, H)
            blocks = dpre.reshape(T, B, 4, H)
            for t in range(T - 1, -1, -1):
                if dH is not None:
                    dh += dH[t]
                d = blocks[t]  # (B, 4, H) view of dpre[t]
                np.multiply(dh, dc_dh[t], out=tmp)
                dc += tmp
                d[:, :2] *= dc[:, None, :]  # i, f
                d[:, 3] *= dc
                d[:, 2] *= dh
                dc *= act[t, :, H:2 * H]
                np.matmul(dpre[t], WhT, out=dh)
            dpre = dpre.reshape(T * B, 4 * H)
            accumulate(Wh, hs[:-1].reshape(T * B, H).T @ dpre, donate=True)
            accumulate(h0, dh, donate=True)
            accumulate(c0, dc, donate=True)
            _project_back(x, Wx, b, dpre)
        return self._record((Mat(hs[1:].reshape(T * B, H)), Mat(hs[T].copy()), Mat(cs[T].copy())), back)

    def gru_layer(self, x: Mat, Wx: Mat, b: Mat, Wh: Mat, Whn: Mat, h0: Mat) -> tuple[Mat, Mat]:
        """GRU over T steps: zr = sigmoid(x Wx_zr + h Wh), n = tanh(x Wx_n + (r h) Whn),
        h' = (1 - z) h + z n. Returns (h for every step (T*B, H), h_T)."""
        B, H = h0.shape
        act = _project(x, Wx, b, B, halve=2 * H)  # (T, B, 3H): z, r, n
        T = act.shape[0]
        Wh_half = half_columns(Wh.w, 2 * H)
        hs = np.empty((T + 1, B, H), act.dtype)
        rhs = np.empty((T, B, H), act.dtype)  # r * h_{t-1}
        hs[0] = h0.w
        rec, tmp = np.empty((B, 2 * H), act.dtype), np.empty((B, H), act.dtype)
        for t in range(T):
            zr, n, h = act[t, :, :2 * H], act[t, :, 2 * H:], hs[t]
            np.matmul(h, Wh_half, out=rec)
            zr += rec
            squash_gates(zr, 2 * H)
            np.multiply(zr[:, H:], h, out=rhs[t])
            np.matmul(rhs[t], Whn.w, out=tmp)
            n += tmp
            np.tanh(n, out=n)
            np.subtract(n, h, out=hs[t + 1])
            hs[t + 1] *= zr[:, :H]
            hs[t + 1] += h

        def back(dhs, dhT):
            z, r, n, h_prev = act[..., :H], act[..., H:2 * H], act[..., 2 * H:], hs[:-1]
            dz_dh = gate_derivatives(act, 2 * H)  # z', r', n' in place of z, r, n
            dz_dh[..., :H] *= n - h_prev
            dz_dh[..., H:2 * H] *= h_prev
            dz_dh[..., 2 * H:] *= z
            keep = 1 - z
            dxp = np.empty_like(act)
            WhT, WhnT = np.ascontiguousarray(Wh.w.T), np.ascontiguousarray(Whn.w.T)
            dh, drh = _start(dhT, h0.w), np.empty((B, H), act.dtype)
            tmp = np.empty_like(drh)
            dH = None if dhs is None else dhs.reshape(T, B, H)
            for t in range(T - 1, -1, -1):
                if dH is not None:
                    dh += dH[t]
                d, f = dxp[t], dz_dh[t]
                np.multiply(dh, f[:, 2 * H:], out=d[:, 2 * H:])  # d n_pre
                np.multiply(dh, f[:, :H], out=d[:, :H])          # d z_pre
                np.matmul(d[:, 2 * H:], WhnT, out=drh)           # d (r h)
                np.multiply(drh, f[:, H:2 * H], out=d[:, H:2 * H])  # d r_pre
                dh *= keep[t]
                drh *= r[t]
                dh += drh
                np.matmul(d[:, :2 * H], WhT, out=tmp)
                dh += tmp
            flat = dxp.reshape(T * B, 3 * H)
            accumulate(Wh, h_prev.reshape(T * B, H).T @ flat[:, :2 * H], donate=True)
            accumulate(Whn, rhs.reshape(T * B, H).T @ flat[:, 2 * H:], donate=True)
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
            _project_back(x, Wx, b, dpre)
        return self._record((Mat(hs[1:].reshape(T * B, H)), Mat(hs[T].copy())), back)
