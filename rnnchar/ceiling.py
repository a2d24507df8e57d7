"""The matmul-only ceiling: the matrix products of one training step of a plain stack, and nothing else.

`make bench` runs it beside each speed workload (system "ceiling"), so a report
shows how close a training step comes to what NumPy's BLAS allows for the same
products: per layer the input projection for all T steps, T recurrent products
forward and T backward, one product each for dWh, dWx and dx; the decoder's
product and its two gradient products. No ufunc, no graph, no optimizer.

    chars_per_sec = ceiling_chars_per_sec("lstm", emb=64, hidden=[128, 128], vocab=65, batch=32, seq=64,
                                          steps=4, warmup=1)

Imports numpy and the standard library only.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

# per cell: (gate blocks of Wx, blocks of the products made once per step, forward and backward each)
SHAPES = {"lstm": (4, (4,)), "gru": (3, (2, 1)), "rnn": (1, (1,))}


def _arrays(cell: str, D: int, H: int, N: int, B: int, rng) -> dict:
    G, per_step = SHAPES[cell]

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32) * 0.1
    return {"x": r(N, D), "Wx": r(D, G * H), "dxp": r(N, G * H), "hs": r(N, H), "h": r(B, H),
            "Wh": [r(H, k * H) for k in per_step], "WhT": [r(k * H, H) for k in per_step],
            "d": [r(B, k * H) for k in per_step], "out": [np.empty((B, k * H), np.float32) for k in per_step],
            "dh": np.empty((B, H), np.float32), "hs_prev": r(N, H)}


def _layer_products(a: dict, T: int, B: int) -> None:
    """Forward and backward products of one layer over T steps."""
    xp = a["x"] @ a["Wx"]  # noqa: F841 - the input projection for every step
    for _ in range(T):
        for W, out in zip(a["Wh"], a["out"]):
            np.matmul(a["h"], W, out=out)
    for _ in range(T):
        for d, WT in zip(a["d"], a["WhT"]):
            np.matmul(d, WT, out=a["dh"])
    for W in a["Wh"]:  # dWh: one product per recurrent matrix
        _ = a["hs_prev"].T @ a["dxp"][:, :W.shape[1]]
    _ = a["x"].T @ a["dxp"]    # dWx
    _ = a["dxp"] @ a["Wx"].T   # dx


def ceiling_chars_per_sec(cell: str, emb: int, hidden: list[int], vocab: int, batch: int, seq: int,
                          steps: int = 10, warmup: int = 2, seed: int = 0) -> float:
    """Characters per second if a training step cost only its matrix products (timed after warm-up)."""
    rng = np.random.default_rng(seed)
    N, sizes = batch * seq, [emb] + list(hidden)
    layers = [_arrays(cell, D, H, N, batch, rng) for D, H in zip(sizes[:-1], sizes[1:])]
    top, W_dec = rng.standard_normal((N, hidden[-1])).astype(np.float32), \
        rng.standard_normal((hidden[-1], vocab)).astype(np.float32)
    dlogits = rng.standard_normal((N, vocab)).astype(np.float32)
    busy = 0.0
    for i in range(steps):
        tic = time.perf_counter()
        for a in layers:
            _layer_products(a, seq, batch)
        _ = top @ W_dec            # logits
        _ = top.T @ dlogits        # d decoder.W
        _ = dlogits @ W_dec.T      # d top
        if i >= warmup:
            busy += time.perf_counter() - tic
    return N * (steps - warmup) / busy if busy > 0 else float("nan")


def ceiling_of_job(spec: dict) -> float:
    """The ceiling for a bench job (cell, emb, hidden, layers, batch, seq, steps, warmup, corpus_path)."""
    vocab = len(set(Path(spec["corpus_path"]).read_text(encoding="utf-8"))) + 1  # + the boundary
    return ceiling_chars_per_sec(spec["cell"], spec["emb"], [spec["hidden"]] * spec["layers"], vocab,
                                 spec["batch"], spec["seq"], spec["steps"], spec["warmup"])
