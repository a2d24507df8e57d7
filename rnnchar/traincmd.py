"""What `rnnchar train` does around the Trainer: logging, Ctrl-C as a stop flag, opening the run.

Called by cli.py's train command; like cli.py, it maps nothing to exit codes itself beyond
click's BadParameter/ClickException for a bad --corpus or a run directory already in use.

    rnnchar train --corpus corpus.txt --run-dir runs/x --quiet --set train.steps=3
"""

from __future__ import annotations

import logging
import math
import signal
import sys
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from .comm import WorkerLost
from .config import config_to_yaml
from .runs import run_files
from .train import TrainingDiverged, open_trainer, train
from .workers import data_parallel

log = logging.getLogger("rnnchar")


class TqdmHandler(logging.Handler):
    """Log lines on stderr that do not tear the progress bar."""

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except OSError:  # stderr closed (`rnnchar train 2>&1 | head`): keep training, lose only the log
            pass


def setup_logging(quiet: bool) -> None:
    log.handlers[:] = [TqdmHandler()]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


class StopFlag:
    """First Ctrl-C (or SIGTERM) asks the loop to stop after the current step; a second one aborts."""

    def __init__(self):
        self.stop = False

    def __call__(self) -> bool:
        return self.stop

    def handle(self, signum, frame):
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True
        log.warning("stopping: saving the checkpoint (press Ctrl-C again to abort without saving)")


def corpus_option(corpus: str) -> str:
    """--corpus as an absolute path (or - for stdin); a bad path is a bad invocation."""
    if corpus == "-":
        return corpus
    if not Path(corpus).is_file():
        why = ("is a directory, not a text file" if Path(corpus).is_dir() else "is not a regular file"
               if Path(corpus).exists() else "does not exist")
        raise click.BadParameter(f"{corpus} {why}", param_hint="--corpus")
    return str(Path(corpus).resolve())


def best_note(summary, cfg) -> str:
    """The end of the final log line: the best validation score, or why there is no best.npz."""
    if math.isfinite(summary.best_val_bpc):
        return f"; best validation {summary.best_val_bpc:.4f} bits/char in best.npz"
    if summary.history:  # evaluations ran, but there was nothing to validate on
        return f"; no validation score (data.val_fraction={cfg.data.val_fraction}), so no best.npz"
    return ""


def train_until_done_or_stopped(trainer, run_dir: Path, quiet: bool, job, **opened):
    """Train (alone, with local workers or as an MPI rank) with Ctrl-C/SIGTERM turned into a stop
    flag; divergence says what to try, a lost worker what was kept. `opened`: how the run was
    opened (resume, init_from), for the workers to open it the same way."""
    flag = StopFlag()
    old = {s: signal.signal(s, flag.handle) for s in (signal.SIGINT, signal.SIGTERM)}
    last = run_dir / "last.npz"
    try:
        with np.errstate(all="ignore"), data_parallel(trainer, job, **opened):  # overflow: non-finite loss
            return train(trainer, flag, quiet)
    except WorkerLost as e:
        kept = f"{last} holds the last good checkpoint" if last.exists() else "no checkpoint was written"
        raise WorkerLost(f"{e}; training stopped at step {trainer.step} without saving: {kept}") from None
    except TrainingDiverged as e:
        kept = f"{last} holds the last good checkpoint" if last.exists() else "no checkpoint was written"
        raise TrainingDiverged(
            f"{e}. Try a lower train.lr (now {trainer.cfg.train.lr}) or turn on clipping (train.clip, "
            f"train.clip_norm). Nothing non-finite was saved: {kept}.") from None
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def open_run(cfg, run_dir: Path, resume: bool, overwrite: bool, more, init_from):
    """The Trainer of a new or resumed run; a bad corpus fails here, before anything is lost."""
    held = run_files(run_dir)
    if held and not (resume or overwrite):
        raise click.ClickException(
            f"{run_dir} already holds a run ({', '.join(held)}): pass --resume to continue it, "
            "--overwrite to start afresh, or --run-dir to train somewhere else")
    log.info("config:\n%s", config_to_yaml(cfg).rstrip())
    trainer = open_trainer(cfg, run_dir, resume, more=more, init_from=init_from)  # may fail: nothing lost
    if overwrite:  # open_trainer already emptied metrics.jsonl
        for name in ("last.npz", "best.npz"):
            (run_dir / name).unlink(missing_ok=True)
    return trainer
