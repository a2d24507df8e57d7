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

from .mat import Mat, accumulate, sigmoid_

SHAPE = {"rnn": (1, 0), "gru": (3, 2), "lstm": (4, 3)}  # gate blocks G, own recurrent blocks R


class _GatedFeedbackRun:
    """The arrays of one forward pass (every step, every layer) and the loops over them."""

    def __init__(self, x: Mat, layers: list[dict], state: list[tuple], kind: str, gate: str, activation: str):
        self.x, self.layers, self.state = x, layers, state
        self.kind, self.scalar, self.relu = kind, gate == "scalar", activation == "relu"
        self.sizes = [p["U"].shape[1] for p in layers]
        self.widths = [p["Ug"].shape[1] for p in layers]
        L, B = len(layers), state[0][0].shape[0]
        self.L, self.B, self.T = L, B, x.shape[0] // B
        self.G, R = SHAPE[kind]
        self.edges = np.cumsum([0] + self.sizes)  # rows of source i in U, Ug; U(->j) columns in M_i
        self.goff = self.edges[-1] + np.cumsum([0] + self.widths)  # Ug(->j) columns in M_i
        rows = [slice(lo, hi) for lo, hi in zip(self.edges[:-1], self.edges[1:])]
        self.M = [np.concatenate([p["U"].w[r] for p in layers] + [p["Ug"].w[r] for p in layers]
                                 + ([layers[i]["Wh"].w] if R else []), axis=1) for i, r in enumerate(rows)]
        self.N = [np.concatenate([p["Wx"].w, p["Wg"].w], axis=1) for p in layers]  # x_j -> [xp | gates]
        self.bias = [np.concatenate([p["b"].w, p["bg"].w if "bg" in p else np.zeros((1, w), p["b"].w.dtype)],
                                    axis=1) for p, w in zip(layers, self.widths)]
        T, dtype = self.T, x.w.dtype
        self.hs = [np.empty((T + 1, B, H), dtype) for H in self.sizes]  # hs[j][0] = h0, hs[j][t + 1] = h_t
        self.cs = [np.empty((T + 1, B, H), dtype) for H in self.sizes] if kind == "lstm" else None
        self.tcs = [np.empty((T, B, H), dtype) for H in self.sizes] if kind == "lstm" else None
        self.A = [np.empty((T, B, m.shape[1]), dtype) for m in self.M]  # h_i(t-1) M_i
        self.XP = [np.empty((T, B, n.shape[1]), dtype) for n in self.N]  # activations | gates
        self.XP[0][...] = (x.w @ self.N[0] + self.bias[0]).reshape(T, B, -1)  # layer 0: every step at once
        self.REC = [np.empty((T, B, H), dtype) for H in self.sizes]  # the gated sums
        for j, s in enumerate(state):
            self.hs[j][0] = s[0].w
            if self.cs is not None:
                self.cs[j][0] = s[1].w

    def gate_block(self, gates: np.ndarray, i: int, H: int) -> np.ndarray:
        return gates[:, i:i + 1] if self.scalar else gates[:, i * H:(i + 1) * H]  # (B, 1) or (B, H)

    def forward(self) -> None:
        for t in range(self.T):
            for i in range(self.L):
                np.matmul(self.hs[i][t], self.M[i], out=self.A[i][t])
            for j in range(self.L):
                self.forward_layer(t, j)

    def forward_layer(self, t: int, j: int) -> None:
        H, L, kind = self.sizes[j], self.L, self.kind
        GH, xpg = self.G * H, self.XP[j][t]
        if j:
            np.matmul(self.hs[j - 1][t + 1], self.N[j], out=xpg)
            xpg += self.bias[j]
        gates, rec = xpg[:, GH:], self.REC[j][t]
        for i in range(L):
            gates += self.A[i][t][:, self.goff[j]:self.goff[j + 1]]
        sigmoid_(gates)
        for i in range(L):
            term = self.gate_block(gates, i, H) * self.A[i][t][:, self.edges[j]:self.edges[j + 1]]
            if i:
                rec += term
            else:
                rec[...] = term
        a, h_prev, h = xpg[:, :GH], self.hs[j][t], self.hs[j][t + 1]
        if kind == "rnn":
            a += rec
            np.maximum(a, 0, out=a) if self.relu else np.tanh(a, out=a)
            h[...] = a
            return
        own = self.A[j][t][:, self.goff[L]:]
        if kind == "lstm":
            a[:, :3 * H] += own
            a[:, 3 * H:] += rec
            sigmoid_(a[:, :3 * H])
            np.tanh(a[:, 3 * H:], out=a[:, 3 * H:])
            i_, f, o, g = (a[:, k * H:(k + 1) * H] for k in range(4))
            c = self.cs[j][t + 1]
            np.multiply(f, self.cs[j][t], out=c)
            c += i_ * g
            np.tanh(c, out=self.tcs[j][t])
            np.multiply(o, self.tcs[j][t], out=h)
            return
        a[:, :2 * H] += own  # gru: z, r from x and h's own product; r resets the gated sum
        sigmoid_(a[:, :2 * H])
        n = a[:, 2 * H:]
        n += a[:, H:2 * H] * rec
        np.tanh(n, out=n)
        np.subtract(n, h_prev, out=h)
        h *= a[:, :H]
        h += h_prev

    # -- backward ---------------------------------------------------------------------------------

    def backward(self, dtop, dfinal) -> None:
        B, T, L = self.B, self.T, self.L
        per = 2 if self.kind == "lstm" else 1
        self.dh = [np.zeros((B, H), self.A[0].dtype) if dfinal[per * j] is None else dfinal[per * j].copy()
                   for j, H in enumerate(self.sizes)]
        if per == 2:
            self.dc = [np.zeros((B, H), self.A[0].dtype) if dfinal[2 * j + 1] is None
                       else dfinal[2 * j + 1].copy() for j, H in enumerate(self.sizes)]
        self.D = [np.empty_like(a) for a in self.A]  # d (h_i(t-1) M_i): every column written every step
        self.F = [self.factors(j) for j in range(L)]
        self.GF = [xp[:, :, self.G * H:] * (1 - xp[:, :, self.G * H:]) for xp, H in zip(self.XP, self.sizes)]
        self.tmp = [np.empty((B, H), self.A[0].dtype) for H in self.sizes]
        self.direct = [np.empty((B, H), self.A[0].dtype) for H in self.sizes]
        self.DX = [np.empty_like(xp) for xp in self.XP]  # d [xp | gate pre-activations]
        MT = [np.ascontiguousarray(m.T) for m in self.M]
        self.NT = [np.ascontiguousarray(n.T) for n in self.N]
        dH = None if dtop is None else dtop.reshape(T, B, -1)
        direct = [None] * L
        for t in range(T - 1, -1, -1):
            if dH is not None:
                self.dh[L - 1] += dH[t]
            for j in range(L - 1, -1, -1):
                direct[j] = self.backward_layer(t, j)
            for i in range(L):  # into h_i(t-1): one product per source
                np.matmul(self.D[i][t], MT[i], out=self.dh[i])
                if direct[i] is not None:
                    self.dh[i] += direct[i]
        self.gradients()

    def factors(self, j: int) -> np.ndarray:
        """Layer j's local derivatives for every step at once, block-major (k, T, B, H), so that a
        backward step is a few multiplications by contiguous blocks."""
        H, kind = self.sizes[j], self.kind
        a = self.XP[j][:, :, :self.G * H]
        blocks = [a[:, :, k * H:(k + 1) * H] for k in range(self.G)]
        if kind == "rnn":
            h = blocks[0]
            return ((h > 0).astype(h.dtype) if self.relu else 1 - h * h)[None]
        if kind == "lstm":
            i_, f, o, g = blocks
            tc = self.tcs[j]
            return np.stack([g * i_ * (1 - i_), self.cs[j][:-1] * f * (1 - f), tc * o * (1 - o),
                             i_ * (1 - g * g), o * (1 - tc * tc), f])
        z, r, n = blocks
        return np.stack([(n - self.hs[j][:-1]) * z * (1 - z), self.REC[j] * r * (1 - r), z * (1 - n * n),
                         r, 1 - z])

    def backward_layer(self, t: int, j: int):
        """Layer j at step t, its output gradient complete: fill DX[j][t] and the D's; return the
        gradient reaching h_j(t-1) other than through products (the GRU's blend), or None."""
        H, L, kind, dh = self.sizes[j], self.L, self.kind, self.dh[j]
        GH, xpg, d, F = self.G * H, self.XP[j][t], self.DX[j][t], self.F[j][:, t]
        gates, dpre, dgates = xpg[:, GH:], d[:, :GH], d[:, GH:]
        direct = None
        if kind == "rnn":
            np.multiply(dh, F[0], out=dpre)
            drec = dpre
        elif kind == "lstm":
            dc, tmp = self.dc[j], self.tmp[j]
            np.multiply(dh, F[4], out=tmp)
            dc += tmp
            np.multiply(dc, F[0], out=dpre[:, :H])
            np.multiply(dc, F[1], out=dpre[:, H:2 * H])
            np.multiply(dh, F[2], out=dpre[:, 2 * H:3 * H])
            np.multiply(dc, F[3], out=dpre[:, 3 * H:])
            dc *= F[5]
            drec = dpre[:, 3 * H:]
        else:
            np.multiply(dh, F[2], out=dpre[:, 2 * H:])
            np.multiply(dh, F[0], out=dpre[:, :H])
            np.multiply(dpre[:, 2 * H:], F[1], out=dpre[:, H:2 * H])
            drec = np.multiply(dpre[:, 2 * H:], F[3], out=self.tmp[j])
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
        if kind != "rnn":
            self.D[j][t][:, self.goff[L]:] = dpre[:, :SHAPE[kind][1] * H]
        if j:  # layer j's input is layer j-1's output at this step
            self.dh[j - 1] += d @ self.NT[j]
        return direct

    def gradients(self) -> None:
        """After the loop: one product per M_i and per [Wx | Wg], one sum per bias; inputs and h0, c0."""
        TB, L = self.T * self.B, self.L
        for i, (lo, hi) in enumerate(zip(self.edges[:-1], self.edges[1:])):
            dM = self.hs[i][:-1].reshape(TB, -1).T @ self.D[i].reshape(TB, -1)  # (H_i, C_i)
            for j, p in enumerate(self.layers):
                p["U"].dw[lo:hi] += dM[:, self.edges[j]:self.edges[j + 1]]
                p["Ug"].dw[lo:hi] += dM[:, self.goff[j]:self.goff[j + 1]]
            if self.kind != "rnn":
                self.layers[i]["Wh"].dw[...] += dM[:, self.goff[L]:]
        for j, p in enumerate(self.layers):
            GH, dxp = self.G * self.sizes[j], self.DX[j].reshape(TB, -1)
            inp = self.x.w if j == 0 else self.hs[j - 1][1:].reshape(TB, -1)
            dN, db = inp.T @ dxp, dxp.sum(axis=0, keepdims=True)
            p["Wx"].dw[...] += dN[:, :GH]
            p["Wg"].dw[...] += dN[:, GH:]
            p["b"].dw[...] += db[:, :GH]
            if "bg" in p:
                p["bg"].dw[...] += db[:, GH:]
        accumulate(self.x, self.DX[0].reshape(TB, -1) @ self.NT[0], donate=True)
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
