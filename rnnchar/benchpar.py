"""The `parallel` benchmark workload: data-parallel training as `rnnchar train --workers N` runs it.

    python -m rnnchar.bench --only parallel --quick   # a few steps a run, to see that it runs

Each run is a real `rnnchar train --workers N` subprocess (stream mode, evaluation only at the last
step, as every run ends). Its figures come from the metrics.jsonl record train writes at the end:
chars_per_sec and train_s time the training steps only (process start and evaluation excluded;
the first step is included: no warm-up is dropped), reduce_s is the writer's time in the gradient
reduction (waiting for the slower worker included), and the gradient size is read from the
checkpoint the run wrote (parameters x bytes per value). Lines beside bench.py's run/median/ratio:
a ratio line "workers": "2/1" (the 2-worker median over the 1-worker median, 1 BLAS thread each),
and projection lines for 16 cores and for 4 machines: per-worker compute times measured by the
sweep runs (`--workers 1`, 1 BLAS thread, at the per-worker batch sizes) plus a ring-allreduce
cost 2(N-1)/N * bytes / bandwidth + 2(N-1) * latency, the assumptions as fields.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from .checkpoint import load_checkpoint

SHARED_MEMORY = dict(bandwidth_gb_s=5.0, latency_us=10.0)  # a ring through shared memory, one machine
NETWORK = dict(bandwidth_gb_s=1.25, latency_us=50.0)  # 10 Gbit/s Ethernet between machines
MACHINES, CORES_PER_MACHINE, CORES = 4, 2, 16  # the projected set-ups: 4 machines like this one; 16 cores
TRAIN = "import sys; from rnnchar.cli import main; sys.exit(main())"


def plan_parallel(s, small: dict, large: dict, job) -> list[list[dict]]:
    """Groups of jobs (see bench.plan): 1 vs 2 workers, cells and large at 2, the batch sweeps."""
    def par(cell, threads, size, workers, **kw):
        return job("parallel", cell, threads, **s(100 if size is small else 12, 3), **{**size, **kw},
                   workers=workers)
    return [[par("lstm", 1, small, 1, torch=False), par("lstm", 2, small, 2)],
            [par("gru", 2, small, 2)], [par("rnn", 2, small, 2)], [par("lstm", 2, large, 2)],
            [par("lstm", 1, small, 1, sweep="small", torch=False, batch=small["batch"] // n)
             for n in (1, CORES_PER_MACHINE * MACHINES, CORES)],
            [par("lstm", 1, large, 1, sweep="large", torch=False, batch=large["batch"] // n)
             for n in (1, CORES_PER_MACHINE * MACHINES, CORES)]]


def measure_train(spec: dict, overrides: list[str]) -> dict:
    """Run `rnnchar train --workers N` in a fresh run directory; its last metrics record, as bench wants."""
    with tempfile.TemporaryDirectory(prefix="run-", dir=spec.get("tmp")) as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-c", TRAIN, "train", "--quiet", "--run-dir", str(run_dir),
               "--workers", str(spec["workers"])]
        for ov in overrides + ["train.eval_max_chars=20000"]:  # the end's evaluation is not timed
            cmd += ["--set", ov]
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:  # the message goes to stderr, exit 1: bench.run_one reports a failure
            raise SystemExit(f"rnnchar train exited {proc.returncode}:\n{proc.stderr[-2000:]}")
        rec = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
        params = load_checkpoint(run_dir / "last.npz").params
    steps = spec["steps"]
    return {"chars_per_sec": rec["chars_per_sec"], "workers": spec["workers"],
            "ms_per_step": round(1000 * rec["train_s"] / steps, 2),
            "reduce_share": round(rec["reduce_s"] / rec["train_s"], 4) if rec["train_s"] > 0 else None,
            "grad_mb": round(sum(p.nbytes for p in params.values()) / 1e6, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def ring_allreduce_ms(nbytes: float, n: int, bandwidth_gb_s: float, latency_us: float) -> float:
    """A ring allreduce of nbytes over n parties: 2(n-1) steps, each sending nbytes / n."""
    if n <= 1:
        return 0.0
    return 1000 * (2 * (n - 1) / n * nbytes / (bandwidth_gb_s * 1e9) + 2 * (n - 1) * latency_us * 1e-6)


def projections(sweep: dict, spec: dict, grad_mb: float) -> list[dict]:
    """16 cores of one machine, and 4 machines of 2 cores (a shared-memory sum inside each machine,
    then a ring between machines), from measured per-worker step times: sweep[batch] = ms, where
    spec["batch"] (the global batch) is one of the batches."""
    B, T, nbytes = spec["batch"], spec["seq"], grad_mb * 1e6
    base = {"kind": "projection", "workload": "parallel", "cell": spec["cell"], "hidden": spec["hidden"],
            "layers": spec["layers"], "emb": spec["emb"], "batch": B, "seq": T, "grad_mb": grad_mb,
            "one_worker_ms": sweep[B], "allreduce_model": "2(N-1)/N*bytes/bandwidth + 2(N-1)*latency",
            "compute_source": "measured: rnnchar train --workers 1, 1 BLAS thread, at the per-worker batch"}
    setups = [(CORES, 1, [(CORES, SHARED_MEMORY)]),
              (MACHINES * CORES_PER_MACHINE, MACHINES,
               [(CORES_PER_MACHINE, SHARED_MEMORY), (MACHINES, NETWORK)])]
    out = []
    for workers, machines, rings in setups:
        b = B // workers
        if b not in sweep:
            continue
        comm = sum(ring_allreduce_ms(nbytes, n, **how) for n, how in rings)
        step = sweep[b] + comm
        out.append({**base, "workers": workers, "machines": machines, "per_worker_batch": b,
                    "compute_ms": sweep[b], "allreduce_ms": round(comm, 3), "step_ms": round(step, 2),
                    "chars_per_sec": round(B * T / step * 1000, 1), "speedup": round(sweep[B] / step, 2),
                    "assumptions": {f"ring{i}": {"parties": n, **how} for i, (n, how) in enumerate(rings)}})
    return out


def summarise(group: list[dict], med: list, emit) -> None:
    """After a group: the workers 2/1 ratio, or (a sweep group) the projection lines. A spec's
    "result" holds its rnnchar medians (bench.run_group puts them there)."""
    if [s.get("workers") for s in group] == [1, 2] and med[0] and med[1]:
        emit({"kind": "ratio", "workload": "parallel", "system": "rnnchar", "cell": group[0]["cell"],
              "batch": group[0]["batch"], "workers": "2/1", "ratio": round(med[1] / med[0], 3),
              "chars_per_sec_1": med[0], "chars_per_sec_2": med[1]})
    if not group[0].get("sweep"):
        return
    done = [s for s in group if s.get("result", {}).get("ms_per_step")]
    sweep = {s["batch"]: s["result"]["ms_per_step"] for s in done}
    full = max(done, key=lambda s: s["batch"], default=None)
    if full is not None and full["batch"] == group[0]["batch"]:  # the global batch was measured
        for line in projections(sweep, full, full["result"]["grad_mb"]):
            emit(line)
