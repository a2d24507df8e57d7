"""Run directories: the lock that keeps two trainings apart, finding and loading checkpoints.

    with RunLock(Path("runs/lstm")):        # a second training there is refused
        ...
    model, vocab, cfg = load_model(find_checkpoint(Path("runs")))
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .checkpoint import CheckpointError, load_checkpoint
from .config import Config, build_model, config_from_dict
from .data import DataError, Vocab
from .model import CharModel, ShapeError


class RunLock:
    """An exclusive lock on <run_dir>/.lock, released when the process ends, even by kill -9."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.fd = run_dir, None

    def __enter__(self) -> RunLock:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            why = "a file is in the way" if isinstance(err, (FileExistsError, NotADirectoryError)) else ""
            raise CheckpointError(f"cannot use {self.run_dir} as the run directory: "
                                  f"{why or err.strerror or err}; choose another --run-dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise CheckpointError(f"another training (pid {holder}) is using {self.run_dir}; wait for it "
                                  "to finish or choose another --run-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        for tmp in [*self.run_dir.glob(".*.npz.*.tmp"), *self.run_dir.glob("cache/.*.tmp.npy")]:
            tmp.unlink(missing_ok=True)  # left by a kill -9 mid-write; only the lock holder writes here
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # closing releases the lock


def find_checkpoint(root: Path) -> Path:
    """The most recently updated run under `root`: its best.npz, else its last.npz."""
    runs = [d for d in root.glob("*") if (d / "best.npz").exists() or (d / "last.npz").exists()]
    if not runs:
        raise CheckpointError(f"no checkpoint found under ./{root}: train one with `rnnchar train` or pass "
                              "--checkpoint")
    newest = max(runs, key=lambda d: max(p.stat().st_mtime for p in d.glob("*.npz")))
    return newest / "best.npz" if (newest / "best.npz").exists() else newest / "last.npz"


def load_model(path: Path) -> tuple[CharModel, Vocab, Config]:
    """The model, vocabulary and config stored in a checkpoint (validated, never unpickled)."""
    ckpt = load_checkpoint(path)
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

