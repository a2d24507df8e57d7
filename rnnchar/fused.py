"""Fused recurrent-cell ops: one graph op for one time step's gate arithmetic instead of a dozen.

A mixin of `Graph` (which provides `needs_backprop`, `tape` and `_record`): each
method computes its outputs at once and records one backward closure through
`Graph._record` that reuses every forward intermediate. The per-step cells
(`cells.Layer.step`: sampling, gated feedback) use them; whole-sequence layers
are in `sequence.py`. Checked against finite differences with the other ops.
Imports numpy and the standard library only.
"""

from __future__ import annotations

import numpy as np

from .mat import Mat, accumulate, half_columns, sigmoid_, squash_gates


def gate_derivatives(act: np.ndarray, n: int) -> np.ndarray:
    """From activation values: s (1 - s) for the first `n` (sigmoid) columns, 1 - t^2 for the rest (tanh)."""
    d = 1 - act
    d *= act
    t = act[..., n:]
    np.multiply(t, t, out=d[..., n:])
    np.subtract(1, d[..., n:], out=d[..., n:])
    return d


class FusedOps:
    """LSTM and GRU gate arithmetic for one time step."""

    def lstm_gates(self, pre: Mat, c: Mat) -> tuple[Mat, Mat]:
        """Fused LSTM arithmetic on pre-activations (B, 4H) ordered i, f, o, g.

        i, f, o = sigmoid, g = tanh; c' = f * c + i * g; h' = o * tanh(c').
        Returns (h', c'); one tanh pass covers all four blocks.
        """
        H = pre.shape[1] // 4
        act = squash_gates(half_columns(pre.w, 3 * H), 3 * H)  # (B, 4H)
        i, f, o, gg = act[:, :H], act[:, H:2 * H], act[:, 2 * H:3 * H], act[:, 3 * H:]
        c_new = f * c.w
        c_new += i * gg
        tc = np.tanh(c_new)

        def back(dh, dc):
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
            dpre *= gate_derivatives(act, 3 * H)
            accumulate(pre, dpre, donate=True)
            dct *= f
            accumulate(c, dct, donate=True)
        return self._record((Mat(o * tc), Mat(c_new)), back)

    def gru_reset(self, x_zr: Mat, rec: Mat, h: Mat) -> tuple[Mat, Mat]:
        """GRU gates: zr = sigmoid(x_zr + rec) (B, 2H) ordered z, r; returns (zr, r * h)."""
        H = h.shape[1]
        zr = sigmoid_(np.add(x_zr.w, rec.w))
        r = zr[:, H:]

        def back(dzr, drh):
            d = np.zeros_like(zr) if dzr is None else dzr.copy()
            if drh is not None:
                d[:, H:] += drh * h.w
                accumulate(h, drh * r, donate=True)
            d *= zr * (1 - zr)
            accumulate(x_zr, d)
            accumulate(rec, d, donate=True)
        return self._record((Mat(zr), Mat(r * h.w)), back)

    def gru_update(self, x_n: Mat, rec: Mat, zr: Mat, h: Mat) -> Mat:
        """GRU candidate and blend: n = tanh(x_n + rec); h' = (1 - z) * h + z * n, z = zr[:, :H]."""
        H = h.shape[1]
        n = np.tanh(np.add(x_n.w, rec.w))
        z = zr.w[:, :H]
        out = Mat(h.w + z * (n - h.w))

        def back(d):
            dn = d * z
            dn *= 1 - n * n
            accumulate(x_n, dn)
            accumulate(rec, dn, donate=True)
            dzr = np.zeros_like(zr.w)
            np.multiply(d, n - h.w, out=dzr[:, :H])
            accumulate(zr, dzr, donate=True)
            accumulate(h, d * (1 - z), donate=True)
        return self._record(out, back)
