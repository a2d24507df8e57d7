"""What a run directory says about its run, read without loading the model.

    for info in list_runs(Path("runs")):             # newest first
        print(info.name, info.steps_done, info.best_val_bpc)
    curve = read_curve(Path("runs/tiny"))            # step, elapsed, train and val bits/char

Sources: config.yaml (cell, sizes, planned steps), metrics.jsonl (one record per
evaluation), and the step counter in last.npz (read alone from the archive).
A damaged or missing file leaves its fields None; listing never fails on one
bad run.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from .config import LN2, ConfigError, load_config
from .npz import NpzReader

RUN_FILES = ("last.npz", "best.npz", "metrics.jsonl")


@dataclass
class RunInfo:
    name: str
    path: str
    cell: str | None
    hidden_sizes: list[int] | None
    steps_done: int | None
    steps_planned: int | None
    best_val_bpc: float | None
    chars_per_sec: float | None
    updated: float  # seconds since the epoch: the newest of the run's files

    def as_dict(self) -> dict:
        d = asdict(self)
        d["updated"] = datetime.fromtimestamp(self.updated).isoformat(timespec="seconds")
        return d


@dataclass
class Curve:
    """One run's learning curve: parallel lists, one entry per evaluation."""

    name: str
    steps: list[int]
    elapsed_s: list[float]  # training time, continued across resumes
    train_bpc: list[float | None]
    val_bpc: list[float | None]


def is_run(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in RUN_FILES)


def read_metrics(run_dir: Path) -> list[dict]:
    """The JSON records of metrics.jsonl; lines that are not a JSON object are skipped."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            records.append(rec)
    return records


def _number(value) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def train_bpc_of(rec: dict) -> float | None:
    """Training loss in bits/char from a metrics record (`train_bpc`, or older nats `train_loss`)."""
    if "train_bpc" in rec:
        return _number(rec["train_bpc"])
    nats = _number(rec.get("train_loss_nats", rec.get("train_loss")))
    return None if nats is None else nats / LN2


def _checkpoint_meta(path: Path) -> dict:
    """A checkpoint's metadata (step, history, ...), reading only that member; {} if unreadable."""
    try:
        with NpzReader(path) as npz:
            text = npz.read("meta_json", kinds="U", shape=(), max_bytes=64 << 20)
        meta = json.loads(text.item())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, RecursionError):  # NpzError is a ValueError
        return {}
    return meta if isinstance(meta, dict) else {}


def checkpoint_step(path: Path) -> int | None:
    """The step counter of a checkpoint; None if unreadable."""
    step = _checkpoint_meta(path).get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def checkpoint_summary(path: Path) -> str:
    """'step N, validation X bits/char' for a checkpoint (what is known of it)."""
    meta = _checkpoint_meta(path)
    step = checkpoint_step(path)
    history = meta.get("history") if isinstance(meta.get("history"), list) else []
    vals = [_number(r.get("val_bpc")) for r in history if isinstance(r, dict) and r.get("step") == step]
    parts = [f"step {step:,}" if step is not None else "step unknown"]
    if vals and vals[-1] is not None:
        parts.append(f"validation {vals[-1]:.4f} bits/char")
    return ", ".join(parts)


def run_info(run_dir: Path) -> RunInfo:
    """Everything `rnnchar runs` shows about one run directory."""
    try:
        cfg = load_config(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
    except ConfigError:
        cfg = None
    records = read_metrics(run_dir)
    vals = [v for v in (_number(r.get("val_bpc")) for r in records) if v is not None]
    done = checkpoint_step(run_dir / "last.npz") if (run_dir / "last.npz").is_file() else None
    if done is None and records:
        done = records[-1]["step"]
    times = [(run_dir / n).stat().st_mtime for n in RUN_FILES if (run_dir / n).exists()]
    return RunInfo(name=run_dir.name, path=str(run_dir), cell=cfg.model.cell if cfg else None,
                   hidden_sizes=list(cfg.model.hidden_sizes) if cfg else None, steps_done=done,
                   steps_planned=cfg.train.steps if cfg else None, best_val_bpc=min(vals) if vals else None,
                   chars_per_sec=_number(records[-1].get("chars_per_sec")) if records else None,
                   updated=max(times, default=os.stat(run_dir).st_mtime))


def list_runs(root: Path) -> list[RunInfo]:
    """Every run directly under `root` (or `root` itself if it is one), newest first."""
    dirs = [root] if is_run(root) else sorted(d for d in root.iterdir() if is_run(d))
    return sorted((run_info(d) for d in dirs), key=lambda r: r.updated, reverse=True)


def read_curve(run_dir: Path) -> Curve:
    """The learning curve in metrics.jsonl; elapsed time keeps counting across resumes."""
    records = read_metrics(run_dir)
    elapsed, offset, previous = [], 0.0, 0.0
    for rec in records:
        t = _number(rec.get("elapsed_s")) or 0.0
        if t < previous:  # a resumed process restarted its clock
            offset += previous
        previous = t
        elapsed.append(offset + t)
    return Curve(name=str(run_dir), steps=[r["step"] for r in records], elapsed_s=elapsed,
                 train_bpc=[train_bpc_of(r) for r in records],
                 val_bpc=[_number(r.get("val_bpc")) for r in records])
