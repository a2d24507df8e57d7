"""Recurrent cells built from graph ops, and stacks of them.

Every cell works on a batch: input (B, D), state a tuple of (B, H) Mats whose
first entry is the output h. A stack turns a time-major input (T*B, D) into
the top layer's outputs for every step, one (T*B, H) Mat.

    stack = make_stack("lstm", D=32, hidden_sizes=[128, 64], rng=rng)
    top, state = stack.forward(graph, x, T, B, stack.zero_state(B))   # top: (T*B, H)

Plain stacks run layer by layer, each layer as one whole-sequence graph op
(`Layer.run`: `lstm_layer`, `gru_layer`, `rnn_layer` in sequence.py). The
per-step path (`Layer.step`, from fused and primitive ops) computes the same
functions and serves gated feedback; tests hold the two to each other.
Gated-feedback stacks (Chung et al. 2015, arXiv:1502.02367) cannot run layer by
layer, because layer j reads every layer's previous state h*_{t-1} through global
reset gates g(i->j) = sigmoid(x_j . w_g + h*_{t-1} . u_g); the gated sum
sum_i g(i->j) * (h_i U(i->j)) replaces the recurrent term of the tanh state
(gf-rnn), of the GRU candidate inside the reset gate (gf-gru), or of the LSTM
cell candidate (gf-lstm). Layer sizes may differ. Over T > 1 steps the whole stack is
one graph op (`gated_feedback_stack`, gfsequence.py); a single step (sampling) and the
tests' reference run op by op (`forward_stepped`). Imports numpy and the
standard library only.
"""

from __future__ import annotations

import math

import numpy as np

from .graph import Graph, Mat

CELLS = ("rnn", "lstm", "gru", "gf-rnn", "gf-gru", "gf-lstm")
GATES = ("scalar", "vector")  # gated feedback: one gate per layer pair (paper), or one per unit
ACTIVATIONS = ("tanh", "relu")  # rnn / gf-rnn nonlinearity
# (B, H) column blocks of a cell's matrices: its input projection Wx; its recurrent Wh in a plain
# stack; its Wh under gated feedback, where the candidate's recurrent term comes through U(i->j)
BLOCKS = {"rnn": (1, 1, 0), "gru": (3, 2, 2), "lstm": (4, 4, 3)}


def init_weight(rows: int, cols: int, fan: int, init_scale: float, rng, dtype) -> Mat:
    """U(-1/sqrt(fan), 1/sqrt(fan)) like PyTorch's RNNs, or N(0, init_scale) like RecurrentJS."""
    if init_scale > 0:
        return Mat.randn(rows, cols, init_scale, rng, dtype)
    return Mat.uniform(rows, cols, 1 / math.sqrt(fan), rng, dtype)


class Layer:
    """One layer's parameters: Wx (D, G*H), b (1, G*H), and the recurrent matrix Wh."""

    def __init__(self, kind: str, D: int, H: int, rng, dtype, init_scale=0.0, forget_bias=0.0,
                 activation="tanh", feedback=False, candidate_gain=2.0):
        self.kind, self.D, self.H, self.activation = kind, D, H, activation
        G, plain, gated = BLOCKS[kind]
        R = (gated if feedback else plain) * H
        self.params = {"Wx": init_weight(D, G * H, H, init_scale, rng, dtype),
                       "b": Mat.zeros(1, G * H, dtype)}
        if R:
            self.params["Wh"] = init_weight(H, R, H, init_scale, rng, dtype)
        if kind == "gru" and not feedback:  # the candidate's own product, after reset
            self.params["Whn"] = init_weight(H, H, H, init_scale, rng, dtype)
        if kind == "lstm":  # gate order i, f, o, g: start with the forget gate open
            self.params["b"].w[0, H:2 * H] = forget_bias
        self._scale_candidate(candidate_gain)

    def _scale_candidate(self, gain: float) -> None:
        """Draw the cell candidate's weights (LSTM g, GRU n) at `gain` times the gates' scale.

        An LSTM passes its input through two half-open gates (h = o * tanh(f * c + i * g), i = o ~ 0.5
        at init), so with equal scales a stack of two hands the decoder ~1/4 of a GRU's signal; a
        larger candidate restores it (README, "Initialisation"). Gated-feedback candidates' recurrent
        terms come through U and keep their scale. tanh RNNs have no gates and are left alone.
        """
        H, p = self.H, self.params
        first = {"lstm": 3 * H, "gru": 2 * H}.get(self.kind)
        if first is None or gain == 1:
            return
        p["Wx"].w[:, first:] *= gain
        if "Wh" in p and p["Wh"].shape[1] > first:  # the LSTM's own recurrent candidate block
            p["Wh"].w[:, first:] *= gain
        if "Whn" in p:  # the GRU candidate's product, after reset
            p["Whn"].w *= gain

    def input_proj(self, g: Graph, x: Mat) -> Mat:
        """x Wx + b for any number of rows (all time steps at once)."""
        return g.add(g.matmul(x, self.params["Wx"]), self.params["b"])  # (N, G*H)

    def zero_state(self, B: int, dtype) -> tuple:
        n = 2 if self.kind == "lstm" else 1
        return tuple(np.zeros((B, self.H), dtype) for _ in range(n))

    def run(self, g: Graph, x: Mat, state: tuple) -> tuple[Mat, tuple]:
        """Every step at once, one graph op: x (T*B, D) -> (h of every step (T*B, H), final state)."""
        p, s = self.params, tuple(Mat(a) for a in state)
        if self.kind == "lstm":
            hs, h, c = g.lstm_layer(x, p["Wx"], p["b"], p["Wh"], *s)
            return hs, (h, c)
        if self.kind == "gru":
            hs, h = g.gru_layer(x, p["Wx"], p["b"], p["Wh"], p["Whn"], *s)
        else:
            hs, h = g.rnn_layer(x, p["Wx"], p["b"], p["Wh"], *s, activation=self.activation)
        return hs, (h,)

    def step(self, g: Graph, xp: Mat, state: tuple, rec: Mat | None = None) -> tuple:
        """Advance one step from xp = x Wx + b; `rec` replaces the candidate's recurrent term (gf)."""
        h = state[0]
        if self.kind == "rnn":
            pre = g.add(xp, rec if rec is not None else g.matmul(h, self.params["Wh"]))
            return (g.relu(pre) if self.activation == "relu" else g.tanh(pre),)
        if self.kind == "lstm":
            return self._lstm(g, xp, h, state[1], rec)
        return self._gru(g, xp, h, rec)

    def _lstm(self, g, xp, h, c, rec):
        own = g.matmul(h, self.params["Wh"])  # (B, 4H), or (B, 3H) for i, f, o when gated feedback
        pre = g.add(xp, own if rec is None else g.concat(own, rec))
        return g.lstm_gates(pre, c)  # (h, c)

    def _gru(self, g, xp, h, rec):
        H = self.H
        x_zr, x_n = g.columns(xp, 0, 2 * H), g.columns(xp, 2 * H, 3 * H)
        zr, rh = g.gru_reset(x_zr, g.matmul(h, self.params["Wh"]), h)  # (B, 2H), r * h
        if rec is None:  # reset applied to h before the recurrent product
            rec = g.matmul(rh, self.params["Whn"])
        else:  # gated feedback: reset applied to the gated sum (Chung et al. 2015)
            rec = g.eltmul(g.columns(zr, H, 2 * H), rec)
        return (g.gru_update(x_n, rec, zr, h),)


class Stack:
    """Plain layers, one after another: layer l's outputs over all steps feed layer l+1."""

    def __init__(self, kind, D, hidden_sizes, rng, dtype=np.float32, **opts):
        self.layers, self.params = [], {}
        for j, H in enumerate(hidden_sizes):
            layer = Layer(kind, D, H, rng, dtype, **opts)
            self.layers.append(layer)
            self.params.update({f"layer{j}.{k}": p for k, p in layer.params.items()})
            D = H

    def zero_state(self, B: int, dtype=np.float32) -> list:
        return [layer.zero_state(B, dtype) for layer in self.layers]

    def forward(self, g: Graph, x: Mat, T: int, B: int, state: list) -> tuple[Mat, list]:
        """x (T*B, D) time-major -> the top layer's h of every step (T*B, H), and the final state."""
        new_state = []
        for layer, s in zip(self.layers, state):
            x, s = layer.run(g, x, s)
            new_state.append(s)
        return x, new_state


class GatedFeedbackStack:
    """Gated-feedback layers (gf-rnn, gf-gru, gf-lstm): every layer reads every layer's h_{t-1}."""

    def __init__(self, kind, D, hidden_sizes, rng, dtype=np.float32, gate="scalar", init_scale=0.0, **opts):
        base = kind[3:]
        L, sizes, total = len(hidden_sizes), list(hidden_sizes), sum(hidden_sizes)
        self.kind, self.gate, self.sizes, self.layers, self.params = base, gate, sizes, [], {}
        for j, H in enumerate(sizes):
            layer = Layer(base, D, H, rng, dtype, init_scale=init_scale, feedback=True, **opts)
            width = L if gate == "scalar" else L * H  # one gate per source layer (per unit: vector)
            p = layer.params
            p["Wg"] = init_weight(D, width, D, init_scale, rng, dtype)       # x_j -> gates
            p["Ug"] = init_weight(total, width, total, init_scale, rng, dtype)  # h*_{t-1} -> gates
            if gate == "vector":
                p["bg"] = Mat.zeros(1, width, dtype)
            p["U"] = init_weight(total, H, H, init_scale, rng, dtype)  # rows of source i: U(i->j)
            self.layers.append(layer)
            self.params.update({f"layer{j}.{k}": m for k, m in p.items()})
            D = H

    def zero_state(self, B: int, dtype=np.float32) -> list:
        return [layer.zero_state(B, dtype) for layer in self.layers]

    def _gated_sum(self, g: Graph, j: int, x_gate: Mat, hs: list[Mat], hstar: Mat) -> Mat:
        """sum_i g(i->j) * (h_i U(i->j)), gates from layer j's input (x_gate = x_j Wg) and h*_{t-1}."""
        p, L, H = self.layers[j].params, len(self.sizes), self.sizes[j]
        pre = g.add(x_gate, g.matmul(hstar, p["Ug"]))
        if self.gate == "scalar":  # (B, L): scale each source before one product with U stacked
            gates = g.sigmoid(pre)
            gated = [g.eltmul(g.columns(gates, i, i + 1), h) for i, h in enumerate(hs)]
            return g.matmul(g.concat(*gated) if L > 1 else gated[0], p["U"])
        gates = g.sigmoid(g.add(pre, p["bg"]))  # (B, L*H): per-unit gates after each product
        edges = np.cumsum([0] + self.sizes)
        terms = [g.eltmul(g.columns(gates, i * H, (i + 1) * H), g.matmul(h, g.rows(p["U"], lo, hi)))
                 for i, (h, lo, hi) in enumerate(zip(hs, edges[:-1], edges[1:]))]
        out = terms[0]
        for term in terms[1:]:
            out = g.add(out, term)
        return out

    def forward(self, g: Graph, x: Mat, T: int, B: int, state: list) -> tuple[Mat, list]:
        """The top layer's h of every step (T*B, H), and the final state: one graph op for the whole
        stack over T steps (`gated_feedback_stack`); a single step (sampling) goes op by op."""
        if T == 1:
            return self.forward_stepped(g, x, T, B, state)
        state = [tuple(Mat(a) for a in s) for s in state]
        out = g.gated_feedback_stack(x, [layer.params for layer in self.layers], state, self.kind, self.gate,
                                     self.layers[0].activation)
        n = len(state[0])
        return out[0], [tuple(out[1 + n * j:1 + n * (j + 1)]) for j in range(len(self.layers))]

    def forward_stepped(self, g: Graph, x: Mat, T: int, B: int, state: list) -> tuple[Mat, list]:
        """Step by step, op by op over all layers (the reference the whole-stack op is tested against);
        the state as arrays, or as Mats (whose gradients a test reads)."""
        state = [tuple(a if isinstance(a, Mat) else Mat(a) for a in s) for s in state]
        for layer in self.layers:  # weights used at every step: one gradient product each
            g.defer_grads(*(p for k, p in layer.params.items() if k in ("Wh", "Ug", "U", "Wx", "Wg")))
        xp0 = self.layers[0].input_proj(g, x)  # layer 0's input projection for every step,
        xg0 = g.matmul(x, self.layers[0].params["Wg"])  # and its gates' input term
        outs = []
        for t in range(T):
            hs = [s[0] for s in state]
            hstar = g.concat(*hs) if len(hs) > 1 else hs[0]  # (B, sum H)
            inp = g.rows(x, t * B, (t + 1) * B)
            new = []
            for j, layer in enumerate(self.layers):
                if j == 0:
                    xp, x_gate = g.rows(xp0, t * B, (t + 1) * B), g.rows(xg0, t * B, (t + 1) * B)
                else:
                    xp, x_gate = layer.input_proj(g, inp), g.matmul(inp, layer.params["Wg"])
                rec = self._gated_sum(g, j, x_gate, hs, hstar)
                new.append(layer.step(g, xp, state[j], rec))
                inp = new[-1][0]
            state = new
            outs.append(inp)
        return (g.stack_rows(*outs) if T > 1 else outs[0]), state


def stack_shapes(cell: str, D: int, hidden_sizes, gate: str = "scalar") -> dict[str, tuple[int, int]]:
    """Every parameter's shape in make_stack(cell, D, hidden_sizes), by arithmetic: nothing is allocated,
    so a checkpoint's arrays can be checked before a model of a hostile size is built."""
    base, gf = cell.removeprefix("gf-"), cell.startswith("gf-")
    (G, plain, gated), L, total = BLOCKS[base], len(hidden_sizes), sum(hidden_sizes)
    shapes = {}
    for j, H in enumerate(hidden_sizes):
        R = (gated if gf else plain) * H
        layer = {"Wx": (D, G * H), "b": (1, G * H)}
        if R:
            layer["Wh"] = (H, R)
        if base == "gru" and not gf:
            layer["Whn"] = (H, H)
        if gf:
            width = L if gate == "scalar" else L * H
            layer.update({"Wg": (D, width), "Ug": (total, width)})
            layer.update({"bg": (1, width), "U": (total, H)} if gate == "vector" else {"U": (total, H)})
        shapes.update({f"layer{j}.{k}": shape for k, shape in layer.items()})
        D = H
    return shapes


def state_shapes(cell: str, hidden_sizes, B: int) -> list[tuple[tuple[int, int], ...]]:
    """The shapes of a stack's state for B rows: per layer (h,) or, for LSTMs, (h, c)."""
    n = 2 if cell.removeprefix("gf-") == "lstm" else 1
    return [((B, H),) * n for H in hidden_sizes]


def make_stack(cell: str, D: int, hidden_sizes, rng: np.random.Generator, dtype=np.float32, **opts):
    """A stack of `cell` layers ("rnn", "lstm", "gru", "gf-rnn", "gf-gru", "gf-lstm")."""
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; choose one of {', '.join(CELLS)}")
    if opts.get("gate", "scalar") not in GATES:
        raise ValueError(f"unknown gate {opts['gate']!r}; choose {' or '.join(GATES)}")
    if opts.get("activation", "tanh") not in ACTIVATIONS:
        raise ValueError(f"unknown activation {opts['activation']!r}; choose {' or '.join(ACTIVATIONS)}")
    if cell.startswith("gf-"):
        return GatedFeedbackStack(cell, D, hidden_sizes, rng, dtype, **opts)
    opts.pop("gate", None)
    return Stack(cell, D, hidden_sizes, rng, dtype, **opts)
