"""Fused recurrent-cell ops: one graph op for a cell's gate arithmetic instead of a dozen.

A mixin of `Graph`: each method computes its outputs at once and, when the
graph records, appends one backward closure that reuses every forward
intermediate. They are checked against finite differences with the other ops.
Only numpy is imported here.
"""

from __future__ import annotations

import numpy as np

from .mat import Mat, _acc, _gate_deriv, _gate_scale, _sigmoid_of_negated, _tanh


class FusedOps:
    """LSTM and GRU gate arithmetic (mixed into `Graph`, which provides `tape` and `_record`)."""

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
