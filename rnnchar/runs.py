"""Run directories: the lock that keeps two trainings apart, the checks before a run starts or
resumes in one, finding and loading checkpoints.

    with RunLock(Path("runs/lstm")):        # a second training there is refused
        ...
    model, vocab, cfg = load_model(find_checkpoint(Path("runs")))
"""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from .cells import state_shapes
from .checkpoint import CheckpointError, load_checkpoint
from .config import Config, build_model, config_from_dict, lr_at
from .data import DataError, Vocab
from .fileio import write_atomically
from .model import CharModel, ShapeError, auto_dropout, param_shapes

log = logging.getLogger("rnnchar")

RUN_FILES = ("last.npz", "best.npz", "metrics.jsonl")  # any of them: the directory holds a run


def run_files(run_dir: Path) -> list[str]:
    """Which of RUN_FILES are in `run_dir` (also as a directory or a dangling link)."""
    return [name for name in RUN_FILES if os.path.lexists(run_dir / name)]


class RunLock:
    """An exclusive flock on the run directory itself, released when the process ends (even kill -9).

    The lock lives on the directory's inode, not on a file in it, so no leftover or deleted file
    can defeat it. `.lock` only tells a refused second training the holder's pid; it is removed
    on exit, and one left by kill -9 means nothing.
    """

    def __init__(self, run_dir: Path):
        self.run_dir, self.fd = run_dir, None

    def __enter__(self) -> RunLock:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.run_dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as err:
            why = "a file is in the way" if isinstance(err, (FileExistsError, NotADirectoryError)) else ""
            raise CheckpointError(f"cannot use {self.run_dir} as the run directory: "
                                  f"{why or err.strerror or err}; choose another --run-dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CheckpointError(f"another training (pid {self._holder()}) is using {self.run_dir}; wait "
                                  "for it to finish or choose another --run-dir") from None
        self.fd = fd
        try:
            (self.run_dir / ".lock").write_text(f"{os.getpid()}\n", encoding="utf-8")
        except OSError:
            pass  # only a courtesy for the message above; the lock holds without it
        for tmp in [*self.run_dir.glob(".*.tmp"), *self.run_dir.glob("cache/.*.tmp.npy")]:
            tmp.unlink(missing_ok=True)  # left by a kill -9 mid-write; only the lock holder writes here
        return self

    def _holder(self) -> str:
        try:
            return (self.run_dir / ".lock").read_text(encoding="utf-8", errors="replace").strip()[:20] or "?"
        except OSError:
            return "?"

    def __exit__(self, *exc) -> None:
        try:
            (self.run_dir / ".lock").unlink(missing_ok=True)  # still ours: we hold the lock
        except OSError:
            pass
        os.close(self.fd)  # closing releases the lock


def find_checkpoint(root: Path) -> Path:
    """The most recently updated run under `root`: its best.npz, else its last.npz."""
    found = {}
    for run in root.glob("*"):  # a dangling link or an unreadable entry is not a run: skip it
        for name in ("best.npz", "last.npz"):
            try:
                if (run / name).is_file():
                    found.setdefault(run, []).append((run / name, (run / name).stat().st_mtime))
            except OSError:
                pass
    if not found:
        raise CheckpointError(f"no checkpoint found under ./{root}: train one with `rnnchar train` or pass "
                              "--checkpoint")
    newest = max(found.values(), key=lambda files: max(mtime for _, mtime in files))
    return newest[0][0]  # best.npz if the run has one


def checkpoint_shapes(config: dict, vocab: np.ndarray) -> dict[str, tuple[int, ...]]:
    """{member: shape} a checkpoint's arrays must have given its own stored config and vocabulary, by
    arithmetic: load_checkpoint checks them before reading them or building anything. The carried
    stream state ("carry/<j>/<k>") is listed when the config carries one. ValueError (ConfigError,
    DataError) if the config or vocabulary is invalid."""
    cfg = config_from_dict(config)
    sizes = param_shapes(len(Vocab.from_array(vocab)), **asdict(cfg.model))
    shapes = {f"param/{name}": shape for name, shape in sizes.items()}
    if cfg.data.mode == "stream" and cfg.data.stream_order == "sequential":
        for j, layer in enumerate(state_shapes(cfg.model.cell, cfg.model.hidden_sizes, cfg.data.batch_size)):
            shapes.update({f"carry/{j}/{k}": shape for k, shape in enumerate(layer)})
    return shapes


def load_model(path: Path) -> tuple[CharModel, Vocab, Config]:
    """The model, vocabulary and config stored in a checkpoint (validated, never unpickled)."""
    ckpt = load_checkpoint(path, checkpoint_shapes)  # shapes checked before the model is built
    try:
        cfg = config_from_dict(ckpt.config)
        vocab = Vocab.from_array(ckpt.vocab)
    except (ValueError, DataError) as e:
        raise CheckpointError(f"{path}: the stored config or vocabulary is invalid: {e}") from None
    model = build_model(cfg, len(vocab))
    try:
        model.load_params(ckpt.params)
    except ShapeError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return model, vocab, cfg


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` by a complete new file (fileio.write_atomically): a failure leaves the old one."""
    try:
        write_atomically(path, lambda f: f.write(text.encode("utf-8")))
    except OSError as err:
        raise CheckpointError(f"could not write {path}: {err.strerror or err}; the previous {path.name} "
                              "(if any) is untouched") from None


def check_run_files(run_dir: Path) -> None:
    """Before anything is written: every file a run writes must be a file (or absent)."""
    for name in (*RUN_FILES, "config.yaml"):
        path = run_dir / name
        if os.path.lexists(path) and not path.is_file():
            what = "a directory" if path.is_dir() else "not a regular file"
            raise CheckpointError(f"{path} is {what}: move it out of the way or choose another --run-dir; "
                                  "nothing in the run directory was changed")


def nothing_to_resume(run_dir: Path) -> CheckpointError:
    """The error for --resume without last.npz, saying what the directory does hold."""
    path = run_dir / "last.npz"
    found = [name for name in run_files(run_dir) if name != "last.npz"]  # best.npz, metrics.jsonl
    if "best.npz" in found:
        return CheckpointError(
            f"nothing to resume: {path} does not exist, but {run_dir} holds {' and '.join(found)} (a run "
            "stopped before its first last.npz). To continue from the best checkpoint, copy "
            f"{run_dir}/best.npz to {path} and pass --resume again; to start afresh, pass --overwrite")
    held = f" ({run_dir} holds only {found[0]})" if found else ""
    return CheckpointError(f"nothing to resume: {path} does not exist{held}; pass --overwrite (or drop "
                           "--resume) to start afresh")


def resume_diffs(old: Config, cfg: Config) -> list[str]:
    """What the checkpoint's config and the new one disagree on that resuming cannot bridge."""
    pairs = [(f"model.{k}", v, getattr(cfg.model, k)) for k, v in asdict(old.model).items()
             if k != "dropout"]  # a training-time regulariser: the parameters fit either way
    pairs.append(("data.mode", old.data.mode, cfg.data.mode))
    pairs.append(("train.optimizer", old.train.optimizer, cfg.train.optimizer))  # its slots would be lost
    if cfg.data.mode == "stream":  # the carried hidden state holds one row per stream
        pairs.append(("data.batch_size", old.data.batch_size, cfg.data.batch_size))
    return [f"{key}: {a!r} in the checkpoint, {b!r} now" for key, a, b in pairs if a != b]


def pin_dropout(cfg: Config, ckpt, model: CharModel, corpus) -> float:
    """What model.dropout `auto` stands for: a resumed run keeps its checkpoint's number; a new run
    (fine-tuning too) computes it (model.auto_dropout) from the model's parameters, the corpus's training
    characters and train.steps, the same in every data-parallel worker."""
    kept = (ckpt.config.get("model") or {}).get("dropout") if ckpt is not None else None
    if isinstance(kept, (int, float)) and not isinstance(kept, bool):
        log.info("model.dropout auto: %g, the value this run started with (in its checkpoint)", kept)
        return float(kept)
    n_params, n_chars = model.flat_grad.size, corpus.train_chars()
    planned = cfg.train.steps * corpus.chars_per_step(cfg.data.batch_size, cfg.data.seq_len)
    p = auto_dropout(n_params, n_chars, planned)
    log.info("model.dropout auto: %g (%s parameters, %.2f per training character, %.1f planned passes)",
             p, f"{n_params:,}", n_params / n_chars, planned / n_chars)
    return p


def fix_schedule_horizon(cfg: Config, old: Config | None, step: int = 0) -> None:
    """Pin train.lr_decay_steps: a new run's is its train.steps; a resumed run keeps the checkpoint's
    unless the user sets it, so more steps never make a cosine learning rate jump back up unasked."""
    t = cfg.train
    if old is None:
        t.lr_decay_steps = t.lr_decay_steps or t.steps
        return
    kept = old.train.lr_decay_steps or old.train.steps  # older checkpoints: the horizon was train.steps
    if t.lr_decay_steps == 0:
        t.lr_decay_steps = kept
        if t.lr_schedule == "cosine" and t.steps > kept:
            log.info("the cosine schedule keeps its horizon of %d steps (train.lr_decay_steps): steps after "
                     "%d run at its floor, lr %.3g; set train.lr_decay_steps to stretch it", kept, kept,
                     0.1 * t.lr)
    elif t.lr_decay_steps != kept and t.lr_schedule == "cosine":
        before = lr_at(replace(t, lr_decay_steps=kept), step)
        log.warning("train.lr_decay_steps=%d replaces the checkpoint's %d: the cosine learning rate moves "
                    "from %.3g to %.3g at step %d", t.lr_decay_steps, kept, before, lr_at(t, step), step + 1)
