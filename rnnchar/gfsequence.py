"""A whole gated-feedback stack over T steps as one graph op (gf-rnn, gf-gru, gf-lstm).

A mixin of `Graph` (which provides `_record`). Layer j at step t reads every
layer's previous state h*_{t-1} through gates g(i->j) = sigmoid(x_j Wg + h*_{t-1} Ug [+ bg])
and the gated sum sum_i g(i->j) * (h_i U(i->j)); see `cells.GatedFeedbackStack`,
whose per-step path (graph op by graph op) is the reference this op is tested against.

Everything a step reads from h*_{t-1} (each U(i->j), each Ug, the cell's own Wh)
is one product per source layer i: h_i @ M_i with M_i the rows of source i of
every layer's [U | Ug] next to layer i's Wh. Backward is one closure: the T-step,
L-layer loop writes the gradient of every such product into a buffer laid out
like its output, so the previous states' gradients are again one product per
source and step, and after the loop each M_i's gradient is one (H_i, T*B) product,
each layer's [Wx | Wg] gradient another, and the biases one sum each.
Imports numpy and the standard library only.
"""

from __future__ import annotations

import numpy as np

from .mat import Mat, accumulate
from .sequence import _blocks, _squash, _unblocks

SHAPE = {"rnn": (1, 0), "gru": (3, 2), "lstm": (4, 3)}  # gate blocks G, own recurrent blocks R


class _GatedFeedbackRun:
    """The arrays of one forward pass (every step, every layer) and the loops over them.

    A layer's cell pre-activations are block-major (G, T, B, H) as in sequence.py, so each
    step's ufuncs run on contiguous (B, H) blocks; its sigmoid blocks (the first R: LSTM i, f, o,
    GRU z, r) and its gates come out halved, through halved copies of their weights, for
    sigmoid(z) = (1 + tanh(z / 2)) / 2. Backward multiplies gradients by the unhalved weights.
    """

    def __init__(self, x: Mat, layers: list[dict], state: list[tuple], kind: str, gate: str, activation: str):
        self.x, self.layers, self.state = x, layers, state
        self.kind, self.scalar, self.relu = kind, gate == "scalar", activation == "relu"
        self.sizes = [p["U"].shape[1] for p in layers]
        self.widths = [p["Ug"].shape[1] for p in layers]
        L, B = len(layers), state[0][0].shape[0]
        self.L, self.B, self.T = L, B, x.shape[0] // B
        self.G, self.R = G, R = SHAPE[kind]
        self.edges = np.cumsum([0] + self.sizes)  # rows of source i in U, Ug; U(->j) columns in M_i
        self.goff = self.edges[-1] + np.cumsum([0] + self.widths)  # Ug(->j) columns in M_i
        rows = [slice(lo, hi) for lo, hi in zip(self.edges[:-1], self.edges[1:])]
        self.M = [np.concatenate([p["U"].w[r] for p in layers] + [p["Ug"].w[r] for p in layers], axis=1)
                  for r in rows]  # h_i(t-1) -> every layer's U(i->j) term and gate pre-activation terms
        self.Mh = [m.copy() for m in self.M]
        for m in self.Mh:
            m[:, self.goff[0]:] *= 0.5
        self.Wxb = [_blocks(p["Wx"].w, G) for p in layers]  # (G, D, H), sigmoid blocks halved
        self.bb = [p["b"].w.reshape(G, 1, -1).copy() for p in layers]
        self.Whb = [_blocks(p["Wh"].w, R) * 0.5 if R else None for p in layers]  # (R, H, H), halved
        self.Wgh = [p["Wg"].w * 0.5 for p in layers]
        self.bgh = [p["bg"].w * 0.5 if "bg" in p else 0.0 for p in layers]
        for Wxb, bb in zip(self.Wxb, self.bb):
            Wxb[:R] *= 0.5
            bb[:R] *= 0.5
        T, dtype = self.T, x.w.dtype
        self.hs = [np.empty((T + 1, B, H), dtype) for H in self.sizes]  # hs[j][0] = h0, hs[j][t + 1] = h_t
        self.cs = [np.empty((T + 1, B, H), dtype) for H in self.sizes] if kind == "lstm" else None
        self.tcs = [np.empty((T, B, H), dtype) for H in self.sizes] if kind == "lstm" else None
        self.A = [np.empty((T, B, m.shape[1]), dtype) for m in self.M]  # h_i(t-1) M_i
        self.ACT = [np.empty((G, T, B, H), dtype) for H in self.sizes]  # pre-activations, then activations
        self.GT = [np.empty((T, B, w), dtype) for w in self.widths]  # gates
        np.matmul(x.w, self.Wxb[0], out=self.ACT[0].reshape(G, T * B, -1))  # layer 0: every step at once
        self.ACT[0] += self.bb[0][:, None]
        np.matmul(x.w, self.Wgh[0], out=self.GT[0].reshape(T * B, -1))
        self.GT[0] += self.bgh[0]
        self.REC = [np.empty((T, B, H), dtype) for H in self.sizes]  # the gated sums
        self.own = [np.empty((R, B, H), dtype) for H in self.sizes]
        for j, s in enumerate(state):
            self.hs[j][0] = s[0].w
            if self.cs is not None:
                self.cs[j][0] = s[1].w

    def gate_block(self, gates: np.ndarray, i: int, H: int) -> np.ndarray:
        return gates[:, i:i + 1] if self.scalar else gates[:, i * H:(i + 1) * H]  # (B, 1) or (B, H)

    def forward(self) -> None:
        for t in range(self.T):
            for i in range(self.L):
                np.matmul(self.hs[i][t], self.Mh[i], out=self.A[i][t])
            for j in range(self.L):
                self.forward_layer(t, j)

    def forward_layer(self, t: int, j: int) -> None:
        H, L, kind, R = self.sizes[j], self.L, self.kind, self.R
        a, gates, rec = self.ACT[j][:, t], self.GT[j][t], self.REC[j][t]  # (G, B, H), (B, W), (B, H)
        h_prev, h = self.hs[j][t], self.hs[j][t + 1]
        if j:
            x = self.hs[j - 1][t + 1]
            np.matmul(x, self.Wxb[j], out=a)
            a += self.bb[j]
            np.matmul(x, self.Wgh[j], out=gates)
            gates += self.bgh[j]
        for i in range(L):
            gates += self.A[i][t][:, self.goff[j]:self.goff[j + 1]]
        _squash(gates[None], 1)  # sigmoid from halved pre-activations
        for i in range(L):
            term = self.gate_block(gates, i, H) * self.A[i][t][:, self.edges[j]:self.edges[j + 1]]
            if i:
                rec += term
            else:
                rec[...] = term
        if R:
            np.matmul(h_prev, self.Whb[j], out=self.own[j])
            a[:R] += self.own[j]
        if kind == "rnn":
            a[0] += rec
            np.maximum(a[0], 0, out=h) if self.relu else np.tanh(a[0], out=h)
            a[0] = h
        elif kind == "lstm":
            a[3] += rec
            _squash(a, 3)
            i_, f, o, g = a
            c = self.cs[j][t + 1]
            np.multiply(f, self.cs[j][t], out=c)
            c += i_ * g
            np.tanh(c, out=self.tcs[j][t])
            np.multiply(o, self.tcs[j][t], out=h)
        else:  # gru: r resets the gated sum
            _squash(a[:2], 2)
            z, r, n = a
            n += r * rec
            np.tanh(n, out=n)
            np.subtract(n, h_prev, out=h)
            h *= z
            h += h_prev

    # -- backward ---------------------------------------------------------------------------------

    def backward(self, dtop, dfinal) -> None:
        B, T, L, R = self.B, self.T, self.L, self.R
        per = 2 if self.kind == "lstm" else 1
        dtype = self.A[0].dtype
        self.dh = [np.zeros((B, H), dtype) if dfinal[per * j] is None else dfinal[per * j].copy()
                   for j, H in enumerate(self.sizes)]
        if per == 2:
            self.dc = [np.zeros((B, H), dtype) if dfinal[2 * j + 1] is None
                       else dfinal[2 * j + 1].copy() for j, H in enumerate(self.sizes)]
        self.D = [np.empty_like(a) for a in self.A]  # d (h_i(t-1) M_i): every column written every step
        self.DP = [np.empty_like(a) for a in self.ACT]  # d cell pre-activations (G, T, B, H)
        self.DG = [np.empty_like(g) for g in self.GT]  # d gate pre-activations (T, B, W)
        self.F = [self.factors(j) for j in range(L)]
        self.GF = [g * (1 - g) for g in self.GT]
        self.tmp = [np.empty((B, H), dtype) for H in self.sizes]
        self.direct = [np.empty((B, H), dtype) for H in self.sizes]
        MT = [np.ascontiguousarray(m.T) for m in self.M]
        self.WhT = [np.ascontiguousarray(p["Wh"].w.reshape(H, R, H).transpose(1, 2, 0)) if R else None
                    for p, H in zip(self.layers, self.sizes)]  # (R, H, H): block k's Wh^T
        self.WxT = [np.ascontiguousarray(p["Wx"].w.reshape(-1, self.G, H).transpose(1, 2, 0))
                    for p, H in zip(self.layers, self.sizes)]  # (G, H, D)
        self.WgT = [np.ascontiguousarray(p["Wg"].w.T) for p in self.layers]
        self.xin = [np.empty((self.G, B, p["Wx"].shape[0]), dtype) for p in self.layers]
        dH = None if dtop is None else dtop.reshape(T, B, -1)
        for t in range(T - 1, -1, -1):
            if dH is not None:
                self.dh[L - 1] += dH[t]
            direct = [self.backward_layer(t, j) for j in range(L - 1, -1, -1)][::-1]
            for i in range(L):  # into h_i(t-1): one product per source, and the cell's own
                np.matmul(self.D[i][t], MT[i], out=self.dh[i])
                if R:
                    own = np.matmul(self.DP[i][:R, t], self.WhT[i], out=self.own[i])
                    for k in range(R):
                        self.dh[i] += own[k]
                if direct[i] is not None:
                    self.dh[i] += direct[i]
        self.gradients()

    def factors(self, j: int) -> np.ndarray:
        """Layer j's local derivatives for every step at once, block-major (k, T, B, H), so that a
        backward step is a few multiplications by contiguous blocks."""
        a, kind = self.ACT[j], self.kind
        if kind == "rnn":
            h = a[0]
            return ((h > 0).astype(h.dtype) if self.relu else 1 - h * h)[None]
        if kind == "lstm":  # i'g, f'c, o'tanh(c), g'i, then dc/dh = o tanh'(c)
            i_, f, o, g = a
            pairs = ((i_, g), (f, self.cs[j][:-1]), (o, self.tcs[j]))
            F = np.empty((5,) + i_.shape, i_.dtype)
            for k, (s, other) in enumerate(pairs):  # s (1 - s) * other, in place
                np.subtract(1, s, out=F[k])
                F[k] *= s
                F[k] *= other
            for k, (t, other) in ((3, (g, i_)), (4, (self.tcs[j], o))):  # (1 - t^2) * other
                np.multiply(t, t, out=F[k])
                np.subtract(1, F[k], out=F[k])
                F[k] *= other
            return F
        z, r, n = a
        return np.stack([(n - self.hs[j][:-1]) * z * (1 - z), self.REC[j] * r * (1 - r), z * (1 - n * n),
                         r, 1 - z])

    def backward_layer(self, t: int, j: int):
        """Layer j at step t, its output gradient complete: fill DP[j][:, t], DG[j][t] and the D's;
        return the gradient reaching h_j(t-1) other than through products (the GRU's blend), or None."""
        H, L, kind, dh = self.sizes[j], self.L, self.kind, self.dh[j]
        gates, dpre, dgates, F = self.GT[j][t], self.DP[j][:, t], self.DG[j][t], self.F[j][:, t]
        direct = None
        if kind == "rnn":
            drec = np.multiply(dh, F[0], out=dpre[0])
        elif kind == "lstm":
            dc, tmp = self.dc[j], self.tmp[j]
            np.multiply(dh, F[4], out=tmp)
            dc += tmp
            np.multiply(dc, F[0], out=dpre[0])
            np.multiply(dc, F[1], out=dpre[1])
            np.multiply(dh, F[2], out=dpre[2])
            drec = np.multiply(dc, F[3], out=dpre[3])
            dc *= self.ACT[j][1, t]  # f
        else:
            np.multiply(dh, F[2], out=dpre[2])
            np.multiply(dh, F[0], out=dpre[0])
            np.multiply(dpre[2], F[1], out=dpre[1])
            drec = np.multiply(dpre[2], F[3], out=self.tmp[j])
            direct = np.multiply(dh, F[4], out=self.direct[j])
        for i in range(L):
            cols = slice(self.edges[j], self.edges[j + 1])
            np.multiply(drec, self.gate_block(gates, i, H), out=self.D[i][t][:, cols])
            if self.scalar:
                dgates[:, i] = np.einsum("bh,bh->b", drec, self.A[i][t][:, cols])
            else:
                np.multiply(drec, self.A[i][t][:, cols], out=dgates[:, i * H:(i + 1) * H])
        dgates *= self.GF[j][t]
        for i in range(L):
            self.D[i][t][:, self.goff[j]:self.goff[j + 1]] = dgates
        if j:  # layer j's input is layer j-1's output at this step
            dx = np.matmul(dpre, self.WxT[j], out=self.xin[j])
            for k in range(self.G):
                self.dh[j - 1] += dx[k]
            self.dh[j - 1] += dgates @ self.WgT[j]
        return direct

    def gradients(self) -> None:
        """After the loop: one product per M_i, per Wx, Wh and Wg, one sum per bias; inputs and h0, c0."""
        TB, G, R = self.T * self.B, self.G, self.R
        for i, (lo, hi) in enumerate(zip(self.edges[:-1], self.edges[1:])):
            dM = self.hs[i][:-1].reshape(TB, -1).T @ self.D[i].reshape(TB, -1)  # (H_i, C_i)
            for j, p in enumerate(self.layers):
                p["U"].dw[lo:hi] += dM[:, self.edges[j]:self.edges[j + 1]]
                p["Ug"].dw[lo:hi] += dM[:, self.goff[j]:self.goff[j + 1]]
        for j, p in enumerate(self.layers):
            H = self.sizes[j]
            dpre, dg = self.DP[j].reshape(G, TB, H), self.DG[j].reshape(TB, -1)
            inp = self.x.w if j == 0 else self.hs[j - 1][1:].reshape(TB, -1)
            p["Wx"].dw[...] += _unblocks(np.matmul(inp.T, dpre))
            p["b"].dw[...] += dpre.sum(axis=1).reshape(1, G * H)
            p["Wg"].dw[...] += inp.T @ dg
            if "bg" in p:
                p["bg"].dw[...] += dg.sum(axis=0, keepdims=True)
            if R:
                p["Wh"].dw[...] += _unblocks(np.matmul(self.hs[j][:-1].reshape(TB, H).T, dpre[:R]))
        dx = np.matmul(self.DP[0].reshape(G, TB, -1), self.WxT[0]).sum(axis=0)
        dx += self.DG[0].reshape(TB, -1) @ self.WgT[0]
        accumulate(self.x, dx, donate=True)
        for j, s in enumerate(self.state):
            accumulate(s[0], self.dh[j], donate=True)
            if len(s) > 1:
                accumulate(s[1], self.dc[j], donate=True)


class GatedFeedbackOps:
    """gated_feedback_stack: a whole gated-feedback stack over T steps as one op."""

    def gated_feedback_stack(self, x: Mat, layers: list[dict], state: list[tuple], kind: str,
                             gate: str = "scalar", activation: str = "tanh") -> tuple:
        """x (T*B, D) time-major; `layers` each layer's parameters by name (Wx, b, Wh, Wg, Ug, [bg], U);
        `state` per layer (h0,) or (h0, c0) Mats. Returns (the top layer's h of every step (T*B, H),
        then every layer's final h (and c for gf-lstm), layer by layer)."""
        run = _GatedFeedbackRun(x, layers, state, kind, gate, activation)
        run.forward()
        T = run.T
        top = Mat(run.hs[-1][1:].reshape(T * run.B, -1))
        final = []
        for j in range(run.L):
            final.append(Mat(run.hs[j][T].copy()))
            if run.cs is not None:
                final.append(Mat(run.cs[j][T].copy()))

        def back(dtop, *dfinal):
            run.backward(dtop, dfinal)
        return self._record((top, *final), back)
