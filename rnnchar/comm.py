"""Data-parallel communication: one small interface, three backends.

    comm = SingleComm()               # one process: every collective is a no-op
    buf = np.ones(4)                  # a 1-D contiguous float array
    comm.allreduce(buf)               # in place: buf becomes the sum of every worker's buf
    comm.broadcast(buf, root=0)       # in place: every worker gets root's buf
    comm.barrier()

`LocalComm` joins the worker processes of one machine through shared memory
and semaphores (standard library only): rank 0 is the process that started
the others. `MPIComm` joins the ranks of an `mpiexec` job through mpi4py,
which is imported only then (`pip install 'rnnchar[mpi]'`). Buffers are 1-D
contiguous float arrays. Every worker gets bit-identical results from a
collective, so workers that apply the same optimizer step stay identical.
The numeric core never imports this module; the training loop calls it.
"""

from __future__ import annotations

import os
import signal

import numpy as np

POLL_S = 0.2  # how often a waiting worker checks that its peers are still alive


class WorkerLost(RuntimeError):
    """A peer process ended or stopped answering; the survivors stop without saving."""


class SingleComm:
    """One process: today's behaviour."""

    rank, size = 0, 1

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def allreduce(self, buf: np.ndarray) -> None:
        pass

    def broadcast(self, buf: np.ndarray, root: int = 0) -> None:
        pass

    def barrier(self) -> None:
        pass

    def close(self, ok: bool = True) -> None:
        pass


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"ended with exit code {code}"


class LocalComm(SingleComm):
    """Worker processes of one machine: a shared-memory block, and a pipe from rank 0 to each worker.

    Layout of the block (`capacity` bytes per area): [flags: 8 bytes][slot 0]...[slot N-1][result].
    allreduce: every worker copies its buffer into its slot; after a barrier each worker sums its
    1/N of the elements over the slots in rank order into `result`; after a second barrier every
    worker copies `result` back. Each element is summed once, in one fixed order, so all workers
    get the same bits. broadcast: root copies into its slot, the others copy it out between two
    barriers. No area is written before a barrier that follows its last read. The barrier goes
    through rank 0 (one byte each way per worker). A process that ends closes its pipe ends, so
    its peer sees end-of-file at once; a waiting worker also checks every POLL_S seconds that its
    peers live (rank 0 its child processes, the others their parent and the abort flag), so a
    killed worker ends the run with WorkerLost instead of a hang.
    """

    def __init__(self, rank: int, size: int, shared, links: list, capacity: int, parent_pid: int):
        self.rank, self.size, self.capacity, self.parent_pid = rank, size, capacity, parent_pid
        self._shared, self._links = shared, links  # rank 0: one pipe end per worker; a worker: its own
        mem = np.frombuffer(shared, dtype=np.uint8)
        self._flags = mem[:8].view(np.int64)  # [abort]
        self._slots = [mem[8 + k * capacity: 8 + (k + 1) * capacity] for k in range(size)]
        self._result = mem[8 + size * capacity: 8 + (size + 1) * capacity]
        self.procs: list = []  # rank 0: the worker processes, to watch
        self._worker_ends: list = []

    @classmethod
    def create(cls, ctx, size: int, capacity: int) -> LocalComm:
        """Rank 0's end; `spec(rank)` is what worker `rank` needs to join, `started(rank)` follows."""
        capacity = -(-capacity // 64) * 64  # whole cache lines per area
        shared = ctx.RawArray("b", 8 + (size + 1) * capacity)
        pipes = [ctx.Pipe() for _ in range(size - 1)]
        comm = cls(0, size, shared, [a for a, _ in pipes], capacity, os.getpid())
        comm._worker_ends = [b for _, b in pipes]
        return comm

    def spec(self, rank: int) -> tuple:
        return (self.size, self._shared, self._worker_ends[rank - 1], self.capacity, self.parent_pid)

    def started(self, rank: int) -> None:
        """Worker `rank` holds its pipe end now: close ours, so its end closing reads as end-of-file."""
        self._worker_ends[rank - 1].close()

    @classmethod
    def join(cls, spec: tuple, rank: int) -> LocalComm:
        size, shared, link, capacity, parent_pid = spec
        return cls(rank, size, shared, [link], capacity, parent_pid)

    # -- liveness ----------------------------------------------------------------------

    def _check_peers(self, grace: float = 0.0) -> None:
        if self.rank == 0:
            for k, p in enumerate(self.procs, start=1):
                if grace:
                    p.join(grace)  # a broken pipe comes a moment before the exit status
                if p.exitcode is not None:
                    raise WorkerLost(f"worker {k} of {self.size} (pid {p.pid}) {_exit_reason(p.exitcode)}")
        elif self._flags[0]:
            raise WorkerLost("the main process stopped the workers")
        elif os.getppid() != self.parent_pid:
            raise WorkerLost(f"the main process (pid {self.parent_pid}) ended")

    def _lost(self, k: int) -> WorkerLost:
        """The pipe to peer k broke: name the peer and how it ended."""
        try:
            self._check_peers(grace=1.0)
        except WorkerLost as lost:
            return lost
        who = f"worker {k} of {self.size}" if self.rank == 0 else f"the main process (pid {self.parent_pid})"
        return WorkerLost(f"{who} closed its connection")

    def _recv(self, k: int) -> None:
        link = self._links[k - 1 if self.rank == 0 else 0]
        try:
            while not link.poll(POLL_S):
                self._check_peers()
            link.recv_bytes()
        except (EOFError, OSError):
            raise self._lost(k) from None

    def _send(self, k: int) -> None:
        try:
            self._links[k - 1 if self.rank == 0 else 0].send_bytes(b"\1")
        except OSError:  # BrokenPipeError: the peer ended
            raise self._lost(k) from None

    def barrier(self) -> None:
        if self.rank == 0:
            for k in range(1, self.size):
                self._recv(k)
            for k in range(1, self.size):
                self._send(k)
        else:
            self._send(0)
            self._recv(0)

    # -- collectives ---------------------------------------------------------------------

    def _area(self, area: np.ndarray, like: np.ndarray) -> np.ndarray:
        if like.nbytes > self.capacity:
            raise ValueError(f"a buffer of {like.nbytes} bytes exceeds the shared capacity {self.capacity}")
        return area[: like.nbytes].view(like.dtype)

    def allreduce(self, buf: np.ndarray) -> None:
        self._area(self._slots[self.rank], buf)[...] = buf
        self.barrier()
        n = buf.size
        lo, hi = self.rank * n // self.size, (self.rank + 1) * n // self.size
        out = self._area(self._result, buf)[lo:hi]
        np.copyto(out, self._area(self._slots[0], buf)[lo:hi])
        for k in range(1, self.size):
            np.add(out, self._area(self._slots[k], buf)[lo:hi], out=out)
        self.barrier()
        buf[...] = self._area(self._result, buf)

    def broadcast(self, buf: np.ndarray, root: int = 0) -> None:
        # through root's slot, not `result`: a worker may still be copying the last allreduce's result
        if self.rank == root:
            self._area(self._slots[root], buf)[...] = buf
        self.barrier()
        if self.rank != root:
            buf[...] = self._area(self._slots[root], buf)
        self.barrier()

    def close(self, ok: bool = True, timeout: float = 30.0) -> None:
        """Rank 0: wait for the workers to finish (ok) or stop them (not ok); never leaves one behind."""
        if self.rank != 0:
            return
        if not ok:
            self._flags[0] = 1
            for link in self._links:
                link.close()  # a waiting worker reads end-of-file at once
        for p in self.procs:
            p.join(timeout if ok else 2 * POLL_S + 1)
        for p in self.procs:
            if p.exitcode is None:
                p.terminate()
                p.join(5)
            if p.exitcode is None:
                p.kill()
                p.join()
        for link in self._links:
            link.close()


MPI_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")  # set by MPICH (hydra) and Open MPI for each rank


def mpi_job_size() -> int:
    """Ranks of the mpiexec job this process belongs to (MPICH, Open MPI), 1 outside one."""
    for var in MPI_SIZE_VARS:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 1


class MPIComm(SingleComm):
    """The ranks of an mpiexec job; mpi4py is imported here and nowhere else."""

    def __init__(self):
        try:
            from mpi4py import MPI
        except ImportError:
            raise WorkerLost(f"this process runs under mpiexec ({mpi_job_size()} ranks) but mpi4py is not "
                             "installed: pip install 'rnnchar[mpi]'") from None
        self._mpi, self._comm = MPI, MPI.COMM_WORLD
        self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()

    def allreduce(self, buf: np.ndarray) -> None:
        self._comm.Allreduce(self._mpi.IN_PLACE, buf, op=self._mpi.SUM)

    def broadcast(self, buf: np.ndarray, root: int = 0) -> None:
        self._comm.Bcast(buf, root=root)

    def barrier(self) -> None:
        self._comm.Barrier()

    def abort(self, code: int = 1) -> None:
        """End every rank of the job (a failure only this rank saw would leave the others waiting)."""
        self._comm.Abort(code)
