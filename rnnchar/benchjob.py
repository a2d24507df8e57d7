"""One benchmark measurement, run inside its own subprocess (bench.py starts one per run).

    python -m rnnchar.bench --only small --repeats 1   # each run is `measure(spec)` in a fresh process

`measure` trains spec["steps"] steps of `rnnchar train`'s own Trainer in a temporary run
directory and returns the figures (chars_per_sec over the steps after the warm-up, peak_rss_mb,
with spec["quality"] the validation bits per char, with spec["memory"] the id and RSS sizes); a
ceiling spec times the matrix products alone (ceiling.py), a workers spec runs `rnnchar train
--workers N` (benchpar.py). `overrides` turns a spec into the `--set` settings that run uses.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

from .benchpar import measure_train


def overrides(spec: dict) -> list[str]:
    ov = [f"data.corpus={spec['corpus_path']}", f"data.mode={spec['mode']}", f"train.steps={spec['steps']}",
          f"data.batch_size={spec['batch']}", "data.val_fraction=0.1", "train.eval_max_chars=0",
          "train.eval_every=0", "train.sample_every=0", "train.checkpoint_every=0",
          f"train.seed={spec.get('seed', 1)}"]
    if spec.get("config") and not spec["quality"]:  # the bundled config fixes the model and the solver
        return ov
    # (quality with a config: the workload's sizes, solver and budget; the config's schedule, dropout)
    ov += [f"model.cell={spec['cell']}", f"model.embed_size={spec['emb']}",
           f"model.hidden_sizes={[spec['hidden']] * spec['layers']}", f"data.seq_len={spec['seq']}",
           f"train.optimizer={spec['optimizer']}", "train.lr=0.002"]
    if spec["quality"]:  # torch_ref --optim adam --lr 2e-3 --clip 5: global-norm clip, no weight decay;
        # the model itself (initialisation included) is at the project's defaults
        ov += ["train.clip_norm=5", "train.clip=0", "train.regc=0"]
    return ov


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def rss_now() -> dict:
    """The resident set now (Linux), unlike ru_maxrss, the peak: all, anonymous, file-backed (the memmap)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {f"rss_end_{k}mb": round(int(status[f].split()[0]) / 1024, 1)
            for k, f in (("", "VmRSS"), ("anon_", "RssAnon"), ("file_", "RssFile"))}


def measure(spec: dict) -> dict:
    """Train for spec['steps'] steps in a temporary run directory (runs inside the subprocess)."""
    if spec.get("ceiling_run"):  # the same products alone, with the allocator training uses
        from .ceiling import ceiling_of_job
        from .heap import keep_freed_memory
        keep_freed_memory()
        return {"chars_per_sec": round(ceiling_of_job(spec), 1), "peak_rss_mb": peak_rss_mb()}
    if spec.get("workers"):  # `rnnchar train --workers N` itself
        return measure_train(spec, overrides(spec))
    from .config import LN2, load_config
    from .train import open_trainer

    cfg = load_config(spec.get("config"), overrides(spec))
    with tempfile.TemporaryDirectory(prefix="run-", dir=spec.get("tmp")) as tmp:
        t0 = time.perf_counter()
        trainer = open_trainer(cfg, Path(tmp), resume=False)
        out = {"load_s": round(time.perf_counter() - t0, 3)}
        if spec.get("memory"):
            ids, n_val = trainer.corpus.batcher.ids, len(trainer.corpus.val)  # train + val = all ids
            out.update(corpus_mb=round(os.path.getsize(spec["corpus_path"]) / 2**20, 1),
                       ids_mb=round((ids.size + n_val) * ids.itemsize / 2**20, 1),
                       ids_mmap=hasattr(ids, "filename"), rss_after_load_mb=peak_rss_mb())
        busy, chars = 0.0, 0
        for i in range(spec["steps"]):
            tic = time.perf_counter()
            _, n = trainer.train_step()
            if i >= spec["warmup"]:
                busy, chars = busy + time.perf_counter() - tic, chars + n
        timed = spec["steps"] - spec["warmup"]
        out.update(chars_per_sec=round(chars / busy, 1) if busy > 0 else None,
                   ms_per_step=round(1000 * busy / timed, 2) if timed > 0 else None)
        if spec["quality"]:
            nats_per_char, n = trainer.validate(lambda: False)
            out.update(val_bpc=round(nats_per_char / LN2, 4), val_chars=n)
        if spec.get("memory"):
            out.update(rss_now())
    out["peak_rss_mb"] = peak_rss_mb()
    return out
