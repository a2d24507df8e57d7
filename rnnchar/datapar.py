"""What one data-parallel training step needs on top of a Comm: rows, one gradient reduction, state.

    from rnnchar.comm import SingleComm
    from rnnchar.batches import pad_batch
    from rnnchar.graph import Mat
    comm, B = SingleComm(), 5
    rows = share(B, rank=1, size=2)                  # slice(2, 5): worker 1 of 2 takes rows 2..4
    batch = pad_batch([np.array([0, 7, 8, 0])] * B)  # (T, B) = (3, 5)
    mine = take_rows(batch, rows)                    # (3, 3): its columns
    params = {"W": Mat.zeros(2, 2)}                  # gradients in params["W"].dw
    grads = GradBuffer(params, n_scalars=2)
    nats, n = reduce_step(comm, grads, 3 / B, (4.2, 9))  # the step's one reduction
    carry = gather_rows(comm, [(np.zeros((3, 8)),)], rows, B)  # every stream's state, global order

The model's loss averages over the rows it is given, so a worker's gradient is
scaled by b / B before the sum: the reduced gradient is exactly the gradient of
the loss averaged over the global batch, whatever the split (uneven ones too).
"""

from __future__ import annotations

import numpy as np

from .batches import Batch


def share(n: int, rank: int, size: int) -> slice:
    """Rank's contiguous part of n rows; parts differ by at most one row."""
    return slice(rank * n // size, (rank + 1) * n // size)


def take_rows(batch: Batch, rows: slice) -> Batch | None:
    """This worker's columns of a (T, B) batch, None if it has none; sentence batches lose the
    trailing steps where none of its rows predicts anything (their gradient is zero)."""
    mask = batch.mask[:, rows]
    if mask.shape[1] == 0:
        return None
    T = mask.shape[0]
    if batch.reset and T and not mask[-1].any():
        T = int(np.flatnonzero(mask.any(axis=1))[-1]) + 1 if mask.any() else 1
    return Batch(batch.inputs[:T, rows], batch.targets[:T, rows], mask[:T], batch.reset)


class GradBuffer:
    """One flat buffer holding every parameter's gradient and a few scalars, for one reduction.

    When the model keeps its gradients in one flat array (`params.dw`, views behind every Mat's dw),
    packing and unpacking are one pass each; otherwise each Mat's dw is copied in and out."""

    def __init__(self, params: dict, n_scalars: int):
        self.params = params
        self.flat_dw = getattr(params, "dw", None)
        self.n = sum(p.w.size for p in params.values())
        self.flat = np.zeros(self.n + n_scalars, dtype=next(iter(params.values())).w.dtype)

    def _views(self):
        if self.flat_dw is not None:
            yield self.flat_dw, self.flat[: self.n]
            return
        o = 0
        for p in self.params.values():
            yield p.dw.reshape(-1), self.flat[o: o + p.w.size]  # (a copy if p.dw is not contiguous)
            o += p.w.size

    def pack(self, scale: float, scalars) -> None:
        for dw, part in self._views():
            np.multiply(dw, scale, out=part)
        self.flat[self.n:] = scalars

    def unpack(self) -> np.ndarray:
        if self.flat_dw is not None:
            self.flat_dw[...] = self.flat[: self.n]
        else:
            o = 0
            for p in self.params.values():
                p.dw[...] = self.flat[o: o + p.w.size].reshape(p.w.shape)
                o += p.w.size
        return self.flat[self.n:].astype(np.float64)


def reduce_step(comm, buf: GradBuffer, scale: float, scalars) -> np.ndarray:
    """Sum gradients (each scaled by `scale`) and `scalars` over all workers: one allreduce."""
    buf.pack(scale, scalars)
    comm.allreduce(buf.flat)
    return buf.unpack()


def reduce_scalars(comm, *values: float) -> np.ndarray:
    out = np.array(values, dtype=np.float64)
    comm.allreduce(out)
    return out


def gather_rows(comm, state: list, rows: slice, B: int) -> list:
    """Every worker's rows of a stacked state [(arrays (b, H), ...), ...] -> the (B, H) arrays."""
    if comm.size == 1 or state is None:
        return state
    full = [tuple(np.zeros((B,) + a.shape[1:], a.dtype) for a in s) for s in state]
    for s, f in zip(state, full):
        for a, g in zip(s, f):
            g[rows] = a
    flat = np.concatenate([g.ravel() for f in full for g in f])
    comm.allreduce(flat)  # every other worker holds zeros in these rows: the sum is a gather
    out, o = [], 0
    for f in full:
        arrays = []
        for g in f:
            arrays.append(flat[o: o + g.size].reshape(g.shape))
            o += g.size
        out.append(tuple(arrays))
    return out


def broadcast_params(comm, params: dict) -> None:
    """Every worker starts from rank 0's parameters (MPI ranks on other machines included)."""
    if comm.size == 1:
        return
    flat = getattr(params, "w", None)
    if flat is not None:  # the model's own flat buffer: in place
        comm.broadcast(flat)
        return
    ps = list(params.values())
    flat = np.concatenate([p.w.ravel() for p in ps])
    comm.broadcast(flat)
    o = 0
    for p in ps:
        p.w[...] = flat[o: o + p.w.size].reshape(p.w.shape)
        o += p.w.size
