"""Training speed, memory and quality benchmarks; one JSON line per measurement on stdout.

    make bench                                        # everything (quality trains 3 x 2,000 steps)
    make bench BENCH_ARGS="--only small,gf --repeats 1"
    make bench TORCH_PYTHON=/tmp/torchref/bin/python  # also the PyTorch reference, interleaved
    python -m rnnchar.bench --only demo --quick       # a few steps, to see that it runs

Workloads (figures to compare with: shared/bench/README.md): demo, small, large, gf, quality, memory,
parallel (`rnnchar train --workers N` runs, a 2/1 ratio and projections: benchpar.py).
Each small and large run has a "ceiling" run beside it: the same matrix products alone (ceiling.py),
and a ratio line rnnchar/ceiling says how close training comes to what NumPy's BLAS allows.
Each measurement (benchjob.py) runs in its own subprocess with OMP/OPENBLAS/MKL_NUM_THREADS set
before numpy is imported, so `peak_rss_mb` (ru_maxrss) is that run's own. `chars_per_sec` counts
training steps only (forward, backward, update) after `warmup` steps; evaluation is not timed;
`steps` includes the warm-up (as in torch_ref.py). memory adds ids_mb, rss_after_load_mb and
rss_end_{,anon_,file_}mb.
With --torch-python, shared/bench/torch_ref.py runs after each rnnchar run (r, t, r, t, ...). Line
kinds: run, median (per system, repeats > 1), ratio (rnnchar / torch of the medians), reference.
Progress goes to stderr; the exit code is 1 if any run failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .benchjob import measure
from .benchpar import plan_parallel, summarise

REPO = Path(__file__).resolve().parent.parent
TINY_SHAKESPEARE = "tinyshakespeare.txt"
WORKLOADS = ("demo", "small", "large", "gf", "quality", "memory", "parallel")
RECURRENTJS_CPS = 5678  # shared/bench/README.md: RecurrentJS demo in node 20, one sentence per step
SMALL = dict(emb=64, hidden=128, batch=32, seq=64)
LARGE = dict(emb=128, hidden=512, batch=64, seq=64)
SHOWN = ("workload", "cell", "threads", "batch", "seq", "hidden", "layers", "emb", "mode", "optimizer",
         "steps", "warmup")  # copied from a job into its JSON lines
DEFAULTS = dict(layers=2, mode="stream", corpus=TINY_SHAKESPEARE, optimizer="rmsprop", quality=False,
                torch=True)


def job(workload: str, cell: str, threads: int, **kw) -> dict:
    """One configuration: sizes, steps, warmup, and optionally config (a bundled name), memory, torch_seq."""
    return {**DEFAULTS, "workload": workload, "cell": cell, "threads": threads, **kw}


def plan(name: str, args) -> list[list[dict]]:
    """Groups of jobs; a group's jobs are compared with each other (ratios) and run interleaved."""
    def s(steps: int, warmup: int) -> dict:  # --quick, then --steps, override the workload's counts
        steps, warmup = (3, 1) if args.quick else (args.steps, min(warmup, args.steps // 2)) if args.steps \
            else (steps, warmup)
        return {"steps": steps, "warmup": warmup}
    if name == "demo":
        demo = dict(config="demo", emb=5, hidden=20, seq=None, mode="sentences",
                    corpus="sherlock-holmes-sentences.txt")
        return [[job(name, "lstm", 1, **s(300, 10), batch=1, **demo, torch_seq=64)],
                [job(name, "lstm", 1, **s(40, 5), batch=32, **demo, torch=False)]]
    if name == "small":
        return [[job(name, c, t, **s(200, 10), **SMALL, ceiling=True)] for c, t in
                (("lstm", 1), ("lstm", 2), ("gru", 1), ("gru", 2), ("rnn", 1), ("rnn", 2))]
    if name == "large":
        return [[job(name, "lstm", t, **s(15, 3), **LARGE, ceiling=True)] for t in (1, 2)]
    if name == "gf":
        return [[job(name, c, 2, **s(100, 5), **SMALL, torch=False) for c in ("lstm", "gf-lstm", "gf-gru")]]
    if name == "quality":
        # and lstm.yaml at the same sizes, solver and budget: its own schedule and dropout (auto)
        q = dict(**s(2000, 10), **SMALL, optimizer="adam", quality=True)
        return [[job(name, c, 2, **q)] for c in ("lstm", "gru", "rnn")] + \
            [[job(name, "lstm", 2, **q, config="lstm", torch=False)]]
    if name == "memory":
        return [[job(name, "lstm", 2, **s(6, 1), **SMALL, torch=False, memory=True),
                 job(name, "lstm", 2, **s(6, 1), **SMALL, torch=False, memory=True, corpus="@big")]]
    if name == "parallel":
        return plan_parallel(s, SMALL, LARGE, job)
    raise ValueError(name)


# -- the driver ----------------------------------------------------------------------------------

def _torch_cmd(spec: dict, args) -> list[str]:
    flags = dict(data=spec["torch_corpus"], cell=spec["cell"], emb=spec["emb"],
                 hidden=spec["hidden"], layers=spec["layers"], batch=spec["batch"], seq=spec["torch_seq"],
                 steps=spec["steps"], warmup=spec["warmup"], threads=spec["threads"], optim=spec["optimizer"],
                 lr="2e-3", clip=5, seed=spec.get("seed", 1))
    cmd = [args.torch_python, args.torch_ref] + [str(x) for k, v in flags.items() for x in (f"--{k}", v)]
    return cmd + ([] if spec["quality"] else ["--no-eval"])


def run_one(spec: dict, system: str, args) -> dict | None:
    """Run one measurement in a fresh subprocess; its JSON line, or None if it failed."""
    if system == "torch":
        cmd = _torch_cmd(spec, args)
    else:
        worker = {**spec, "ceiling_run": system == "ceiling"}
        cmd = [sys.executable, "-m", "rnnchar.bench", "--worker", json.dumps(worker)]
    t0 = time.perf_counter()
    env = {**os.environ, **{v: str(spec["threads"]) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                               "MKL_NUM_THREADS")}}  # read when numpy loads
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    got = next((d for d in reversed(lines) if d.get("event", "result") == "result"), None)
    what = f"{spec['config']}.yaml" if spec.get("config") else spec["cell"]
    label = f"{spec['workload']} {system} {what} threads={spec['threads']} batch={spec['batch']}"
    if proc.returncode != 0 or got is None or not got.get("chars_per_sec"):
        print(f"bench: FAILED {label} (exit {proc.returncode})", file=sys.stderr, flush=True)
        return None
    keep = ("chars_per_sec", "peak_rss_mb", "val_bpc", "val_chars", "ms_per_step", "load_s", "corpus_mb",
            "ids_mb", "ids_mmap", "rss_after_load_mb", "rss_end_mb", "rss_end_anon_mb", "rss_end_file_mb",
            "workers", "reduce_share", "grad_mb")
    named = {"config": spec["config"]} if spec.get("config") else {}  # a bundled config's name
    rec = {"kind": "run", **{k: spec[k] for k in SHOWN}, **named, "system": system,
           "seed": spec.get("seed", 1),
           **{k: round(got[k], 4) if isinstance(got[k], float) else got[k] for k in keep if k in got}}
    rec["chars_per_sec"] = round(rec["chars_per_sec"], 1)
    if system == "torch":  # demo: torch_ref reads windows of 64 of tinyshakespeare, not sentences
        rec.update(seq=spec["torch_seq"], mode="stream",
                   ms_per_step=round(1000 * spec["batch"] * spec["torch_seq"] / got["chars_per_sec"], 2))
    bpc = f", val {rec['val_bpc']:.3f} bpc" if rec.get("val_bpc") else ""
    print(f"bench: {label}: {rec['chars_per_sec']:.0f} chars/s, peak {rec['peak_rss_mb']:.0f} MB{bpc}"
          f" ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
    return rec


def emit(rec: dict) -> None:
    print(json.dumps(rec), flush=True)  # stdout: results only


def _median(recs: list[dict], key: str):
    vals = [r[key] for r in recs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def _summarise(spec: dict, runs: dict, repeats: int) -> dict:
    """Median lines per system (repeats > 1); the rnnchar / torch ratio line; returns medians."""
    med = {}
    for system, recs in runs.items():
        med[system] = _median(recs, "chars_per_sec")
        if repeats > 1 and recs:
            keys = [k for k in ("chars_per_sec", "ms_per_step", "peak_rss_mb", "val_bpc") if k in recs[-1]]
            emit({**recs[-1], "kind": "median", "repeats": len(recs), **{k: _median(recs, k) for k in keys}})
    if med.get("rnnchar") and med.get("torch"):
        line = {"kind": "ratio", **{k: spec[k] for k in SHOWN}, "system": "rnnchar/torch",
                "ratio": round(med["rnnchar"] / med["torch"], 3), "rnnchar_chars_per_sec": med["rnnchar"],
                "torch_chars_per_sec": med["torch"]}
        if spec["torch_seq"] != spec["seq"]:  # demo: sentences against windows of 64
            line["torch_seq"] = spec["torch_seq"]
        bpc = {s: _median(runs[s], "val_bpc") for s in runs}
        if None not in bpc.values():
            line.update(rnnchar_val_bpc=bpc["rnnchar"], torch_val_bpc=bpc["torch"])
        emit(line)
    if med.get("rnnchar") and med.get("ceiling"):
        emit({"kind": "ratio", **{k: spec[k] for k in SHOWN}, "system": "rnnchar/ceiling",
              "ratio": round(med["rnnchar"] / med["ceiling"], 3), "ceiling_chars_per_sec": med["ceiling"]})
    return med


def run_group(group: list[dict], args) -> list:
    """Repeats outermost, systems interleaved: r, t, r, t, ...; returns the rnnchar medians, in order."""
    systems = ["rnnchar", "torch", "ceiling"] if args.torch_python else ["rnnchar", "ceiling"]
    wanted = {"rnnchar": lambda spec: True, "torch": lambda spec: spec["torch"],
              "ceiling": lambda spec: spec.get("ceiling", False)}
    runs = {id(spec): {s: [] for s in systems if wanted[s](spec)} for spec in group}
    for repeat in range(args.repeats):
        for spec in group:
            for system in runs[id(spec)]:  # quality: repeat r trains seed r + 1 on both sides (medians of
                # seeds, as a seed's run is deterministic); speed: the same seed again
                rec = run_one({**spec, "seed": repeat + 1} if spec["quality"] else spec, system, args)
                if rec is None:
                    args.failed += 1
                    continue
                runs[id(spec)][system].append(rec)
                emit({**rec, "repeat": repeat})
    for spec in group:  # the rnnchar medians a workload's own lines need (benchpar's projections)
        spec["result"] = {k: _median(runs[id(spec)]["rnnchar"], k) for k in ("ms_per_step", "grad_mb")}
    return [_summarise(spec, runs[id(spec)], args.repeats).get("rnnchar") for spec in group]


def _big_corpus(args, folder: Path) -> Path:
    """tinyshakespeare repeated into folder/big.txt until it is at least --scale-mb MiB."""
    path, chunk = folder / "big.txt", (args.corpora_dir / TINY_SHAKESPEARE).read_bytes()
    print(f"bench: writing a {args.scale_mb} MiB corpus to {path}", file=sys.stderr, flush=True)
    with open(path, "wb") as f:
        for _ in range(math.ceil(args.scale_mb * 2**20 / len(chunk))):
            f.write(chunk)
    return path


def run_workload(name: str, args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="rnnchar-bench-"))  # the big corpus and every run directory
    try:
        for group in plan(name, args):
            for spec in group:
                spec["corpus_path"], spec["tmp"] = str(args.corpora_dir / spec["corpus"]), str(tmp)
                spec["torch_corpus"] = str(args.corpora_dir / TINY_SHAKESPEARE)  # demo: not the sentences
                spec["torch_seq"] = spec.get("torch_seq") or spec["seq"]
                if spec["corpus"] == "@big":
                    spec["corpus"], spec["corpus_path"] = "big.txt", str(_big_corpus(args, tmp))
            med = run_group(group, args)
            if name == "parallel":
                summarise(group, med, emit)
            if name == "demo" and group[0]["batch"] == 1:
                ref = {k: group[0][k] for k in SHOWN if k not in ("steps", "warmup", "optimizer")}
                emit({"kind": "reference", **ref, "system": "recurrentjs", "chars_per_sec": RECURRENTJS_CPS,
                      "source": "shared/bench/README.md"})
                if med[0]:
                    emit({"kind": "ratio", **ref, "system": "rnnchar/recurrentjs",
                          "ratio": round(med[0] / RECURRENTJS_CPS, 3)})
            if name == "gf" and med[0] and med[1]:  # equal chars per step: time per step is 1 / chars/s
                emit({"kind": "ratio", "workload": name, "system": "rnnchar", "cell": "gf-lstm/lstm",
                      "threads": 2, "time_per_step_ratio": round(med[0] / med[1], 3)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m rnnchar.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated: " + ", ".join(WORKLOADS))
    p.add_argument("--repeats", type=int, default=3, help="runs per configuration (medians reported)")
    p.add_argument("--quick", action="store_true", help="3 steps a run, a 4 MiB scale corpus (smoke test)")
    p.add_argument("--steps", type=int, default=0, help="optimizer steps a run, for every workload")
    p.add_argument("--torch-python", default=None, help="python with torch: also run torch_ref.py")
    p.add_argument("--torch-ref", type=Path, default=None, help="default: ../bench/torch_ref.py")
    p.add_argument("--corpora-dir", type=Path, default=None,
                   help="folder with tinyshakespeare.txt and sherlock-holmes-sentences.txt "
                        "(default: ../shared/corpora beside the repository, if there is one)")
    p.add_argument("--scale-mb", type=float, default=None, help="big corpus (default 500 MiB)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.only = [w.strip() for w in args.only.split(",") if w.strip()]
    if bad := [w for w in args.only if w not in WORKLOADS]:
        p.error(f"unknown workload {bad}: choose from {', '.join(WORKLOADS)}")
    if args.repeats < 1 or args.steps < 0:
        p.error("--repeats must be at least 1 and --steps non-negative")
    shared = REPO.parent / "shared" / "corpora"
    args.corpora_dir = (args.corpora_dir or (shared if shared.is_dir() else Path("corpora"))).resolve()
    args.torch_ref = str(args.torch_ref or args.corpora_dir.parent / "bench" / "torch_ref.py")
    args.scale_mb = args.scale_mb or (4 if args.quick else 500)
    args.failed = 0
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up (finally) on kill, as on Ctrl-C
    if args.worker is not None:
        emit(measure(json.loads(args.worker)))
        return 0
    if not args.corpora_dir.is_dir():
        print(f"bench: no corpora folder {args.corpora_dir} (pass --corpora-dir)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    for name in args.only:
        run_workload(name, args)
    print(f"bench: done in {time.perf_counter() - t0:.0f} s, {args.failed} failed", file=sys.stderr)
    return 1 if args.failed else 0


if __name__ == "__main__":
    sys.exit(main())
