"""What a run reports: one record per evaluation (history, metrics.jsonl, a log line, best.npz)
and plain progress lines when no progress bar is shown.

    progress = PlainProgress(on=True, start=0, total=100)  # logs at most every PROGRESS_EVERY_S s
    progress.tick(step=10, loss_nats=1.5, cps=2000.0)         # step 10/100, bits/char, chars/s, ETA

`evaluate_log_and_keep_best(trainer, ...)` is called by train.py's loop at each evaluation; the
trainer is train.py's Trainer (validate, save, history, best_val_nats, comm, cfg, run_dir).
"""

from __future__ import annotations

import json
import logging
import math
import time

from .config import LN2, lr_at
from .evaluate import perplexity
from .runs import write_atomic

log = logging.getLogger("rnnchar")
PROGRESS_EVERY_S = 30.0  # plain progress lines when stderr is not a terminal (no progress bar)


def evaluate_log_and_keep_best(trainer, train_loss: float, cps: float, elapsed: float,
                                should_stop, timing: dict) -> dict:
    """Evaluate on the validation split, append to history and metrics.jsonl, keep best.npz.

    timing: train_s (training steps since the last record, evaluation excluded) and reduce_s
    (of which in the gradient reduction; 0 with one process), what chars_per_sec is made of."""
    val_loss, _ = trainer.validate(should_stop)
    rec = {"step": trainer.step, "train_bpc": round(train_loss / LN2, 6),
           "train_loss_nats": round(train_loss, 6),
           "val_bpc": round(val_loss / LN2, 6) if math.isfinite(val_loss) else None,
           "val_perplexity": round(ppl, 6) if math.isfinite(ppl := perplexity(val_loss)) else None,
           "chars_per_sec": round(cps, 1), "lr": lr_at(trainer.cfg.train, trainer.step),
           "elapsed_s": round(elapsed, 2), **{k: round(v, 4) for k, v in timing.items()}}
    trainer.history.append(rec)
    if trainer.comm.is_writer:
        with open(trainer.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        val = "-" if rec["val_bpc"] is None else f"{rec['val_bpc']:.4f}"
        log.info("step %d  train %.4f bits/char  val %s bits/char  %s chars/s", trainer.step,
                 train_loss / LN2, val, f"{cps:,.0f}")
    if math.isfinite(val_loss) and val_loss < trainer.best_val_nats:
        trainer.best_val_nats = val_loss
        trainer.save("best.npz")
    return rec


def rewrite_metrics(trainer) -> None:
    """metrics.jsonl as of the checkpoint: drop evaluations made after it (a crash, Ctrl-C)."""
    write_atomic(trainer.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in trainer.history))


class PlainProgress:
    """A log line every PROGRESS_EVERY_S seconds (step, loss, speed, ETA) for a log file, nohup, make."""

    def __init__(self, on: bool, start: int, total: int):
        self.on, self.start, self.total = on, start, total
        self.t0 = self.last = time.monotonic()

    def tick(self, step: int, loss_nats: float, cps: float) -> None:
        now = time.monotonic()
        if not self.on or now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        eta = (now - self.t0) / max(step - self.start, 1) * (self.total - step)
        h, rest = divmod(int(eta), 3600)
        log.info("step %d/%d  train %.4f bits/char  %s chars/s  ETA %d:%02d:%02d", step, self.total,
                 loss_nats / LN2, f"{cps:,.0f}", h, rest // 60, rest % 60)
