"""Checkpoints: one self-contained, never-pickled ``.npz`` per run.

Layout (all plain arrays, so ``np.load(path, allow_pickle=False)`` reads it)::

    format_version   0-d int64: 2 (version 1 files are still read)
    config_json      0-d unicode: the resolved config
    meta_json        0-d unicode: step, rng_state, history, meta (best_val_loss in nats per char)
    vocab            (V - 2,) int64 code points
    param/<name>     float32/float64 parameters, dotted names ("embed.W", "layer0.Wx", "decoder.b")
    opt/<slot>       optimizer slots: "cache/<name>" (rmsprop); "m/<name>", "v/<name>", "t" (adam)
    carry/<j>/<k>    stream mode: state k of layer j carried into the next window, (B, H_j)

Version 1 kept the carried state among the optimizer slots (``opt/carry/<j>/<k>``);
``load_checkpoint`` moves it to ``Checkpoint.carry``. Saving is atomic (temp file
in the same folder, fsync, rename), so a crash or Ctrl-C leaves the previous
checkpoint intact. Usage::

    save_checkpoint("runs/x/last.npz", Checkpoint(config, vocab, params, opt_state, step, rng_state, history))
    ckpt = load_checkpoint("runs/x/last.npz")
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .fileio import not_regular

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 kept the carried stream state among the optimizer slots
_REQUIRED = ("format_version", "config_json", "meta_json", "vocab")


class CheckpointError(Exception):
    """A checkpoint could not be written or read; the message names the file and the problem."""


@dataclass
class Checkpoint:
    """Everything needed to sample, evaluate or resume a run exactly."""

    config: dict
    vocab: np.ndarray
    params: dict[str, np.ndarray]
    opt_state: dict[str, np.ndarray]
    step: int
    rng_state: dict
    history: list[dict]
    meta: dict = field(default_factory=dict)
    carry: dict[str, np.ndarray] = field(default_factory=dict)  # stream state: "<layer>/<k>" -> (B, H)


def _json_default(obj: Any) -> Any:
    """Let numpy scalars and arrays (e.g. a float32 loss in the history) into JSON."""
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _dtype_ok(arr: np.ndarray, kinds: str) -> bool:
    """dtype kind in ``kinds`` ("f" float, "i"/"u" int, "b" bool); floats only float32/float64."""
    return arr.dtype.kind in kinds and (arr.dtype.kind != "f" or arr.dtype in (np.float32, np.float64))


def _numeric(name: str, arr: Any, path: Path, kinds: str) -> np.ndarray:
    """``arr`` as an ndarray whose dtype kind is in ``kinds``; finite if floating."""
    arr = np.asarray(arr)
    if not _dtype_ok(arr, kinds):
        raise CheckpointError(f"refusing to save checkpoint {path}: '{name}' has dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise CheckpointError(f"refusing to save checkpoint {path}: '{name}' contains NaN or inf "
                              "(training diverged?); the previous checkpoint is untouched")
    return arr


def _arrays_to_save(path: Path, ckpt: Checkpoint) -> dict[str, np.ndarray]:
    """The named arrays of the .npz, checked: finite float params, numeric slots, JSON metadata."""
    arrays = {f"param/{name}": _numeric(f"param/{name}", w, path, "f") for name, w in ckpt.params.items()}
    for slot, value in ckpt.opt_state.items():
        arrays[f"opt/{slot}"] = _numeric(f"opt/{slot}", value, path, "fiub")
    for key, value in ckpt.carry.items():
        arrays[f"carry/{key}"] = _numeric(f"carry/{key}", value, path, "f")
    meta = {"step": int(ckpt.step), "rng_state": ckpt.rng_state, "history": ckpt.history, "meta": ckpt.meta}
    try:
        arrays["config_json"] = np.array(json.dumps(ckpt.config, default=_json_default))
        arrays["meta_json"] = np.array(json.dumps(meta, default=_json_default))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"refusing to save checkpoint {path}: metadata is not JSON-serialisable: "
                              f"{err}") from None
    arrays["format_version"] = np.array(FORMAT_VERSION, dtype=np.int64)
    arrays["vocab"] = np.asarray(_numeric("vocab", ckpt.vocab, path, "iu"), dtype=np.int64)
    return arrays


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; best effort (not every platform can open a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def _signals_held():
    """Hold SIGINT/SIGTERM while a checkpoint is written: a Ctrl-C lands after the write, never
    between creating the temporary file and cleaning it up."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically: the old file is replaced only by a complete new one."""
    with _signals_held():
        _save(Path(path), ckpt)


def _save(path: Path, ckpt: Checkpoint) -> None:
    arrays = _arrays_to_save(path, ckpt)
    folder = path.parent
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        reason = err.strerror or str(err)
        if not folder.is_dir():
            reason = f"folder {folder} does not exist"
        raise CheckpointError(f"could not write checkpoint {path}: {reason}; "
                              "the previous checkpoint (if any) is untouched") from err
    finally:
        if tmp is not None:  # failed or interrupted (Ctrl-C): leave no half-written file behind
            try:
                os.unlink(tmp)
            except OSError:
                pass
    _fsync_dir(folder)


def _read_array(z: Any, key: str, path: Path) -> np.ndarray:
    """One array from the open archive, with every failure turned into a CheckpointError."""
    try:
        return z[key]
    except ValueError as err:
        if "pickle" in str(err):
            raise CheckpointError(f"{path}: array '{key}' holds Python objects; refusing to load "
                                  "pickled data (it could run code)") from None
        raise CheckpointError(f"{path}: array '{key}' is corrupt: {err}") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as err:
        raise CheckpointError(f"{path}: array '{key}' is corrupt or truncated: {err}") from None


def _read_all(path: Path) -> dict[str, np.ndarray]:
    """Every array of the .npz, eagerly; checks the keys and the format version."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    if magic[:2] != b"PK":  # np.load would otherwise try .npy or pickle formats
        what = "an empty file" if not magic else "not a zip archive"
        raise CheckpointError(f"{path}: not an .npz checkpoint ({what})")
    try:
        with np.load(path, allow_pickle=False) as z:
            version = _read_array(z, "format_version", path) if "format_version" in z.files else None
            if version is not None and (version.shape != () or version.dtype.kind not in "iu"
                                        or int(version) not in READABLE_VERSIONS):
                raise CheckpointError(f"{path}: checkpoint format version {version.tolist()!r}, but this "
                                      f"rnnchar reads version {FORMAT_VERSION} (and older version 1)")
            missing = [k for k in _REQUIRED if k not in z.files]
            if missing:
                raise CheckpointError(f"{path}: not an rnnchar checkpoint: missing {', '.join(missing)}")
            return {key: _read_array(z, key, path) for key in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise CheckpointError(f"{path}: not a valid .npz checkpoint (truncated or corrupt?): {err}") from None


def _json_of(arrays: dict[str, np.ndarray], key: str, path: Path) -> Any:
    arr = arrays[key]
    if arr.shape != () or arr.dtype.kind != "U":
        raise CheckpointError(f"{path}: '{key}' must be a text scalar, got dtype {arr.dtype} "
                              f"shape {arr.shape}")
    try:
        return json.loads(arr.item())
    except ValueError as err:
        raise CheckpointError(f"{path}: '{key}' is not valid JSON: {err}") from None


def _checked(arrays: dict[str, np.ndarray], prefix: str, path: Path, kinds: str) -> dict[str, np.ndarray]:
    """The arrays under ``prefix`` (prefix stripped), each of an allowed dtype."""
    out = {}
    for key, arr in arrays.items():
        if not key.startswith(prefix):
            continue
        if not _dtype_ok(arr, kinds):
            raise CheckpointError(f"{path}: '{key}' has dtype {arr.dtype}; expected "
                                  f"{'float32 or float64' if kinds == 'f' else 'a numeric dtype'}")
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise CheckpointError(f"{path}: '{key}' contains NaN or inf")
        out[key[len(prefix):]] = arr
    return out


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and check a checkpoint; never unpickles. Raises CheckpointError on any problem."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a .npz file")
    if (why := not_regular(path)) is not None:  # a FIFO would block the open, a device never end
        raise CheckpointError(f"cannot read checkpoint {path}: {why}")
    arrays = _read_all(path)
    vocab = arrays["vocab"]
    if vocab.ndim != 1 or vocab.dtype.kind not in "iu":
        raise CheckpointError(f"{path}: 'vocab' must be a 1-D integer array, got dtype {vocab.dtype} "
                              f"shape {vocab.shape}")
    params = _checked(arrays, "param/", path, "f")
    if not params:
        raise CheckpointError(f"{path}: checkpoint holds no parameters")
    config, meta = _json_of(arrays, "config_json", path), _json_of(arrays, "meta_json", path)
    expected = {"step": int, "rng_state": dict, "history": list, "meta": dict}
    if not isinstance(config, dict) or not isinstance(meta, dict) or any(
            not isinstance(meta.get(k), t) or isinstance(meta.get(k), bool) for k, t in expected.items()):
        raise CheckpointError(f"{path}: config_json must be an object and meta_json an object with "
                              "step (int), rng_state, history (list) and meta")
    opt_state, carry = _checked(arrays, "opt/", path, "fiub"), _checked(arrays, "carry/", path, "f")
    if int(arrays["format_version"]) == 1:  # version 1 stored the carried state as opt/carry/...
        carry = {k[len("carry/"):]: opt_state.pop(k) for k in list(opt_state) if k.startswith("carry/")}
    return Checkpoint(config=config, vocab=vocab.astype(np.int64), params=params, opt_state=opt_state,
                      step=meta["step"], rng_state=meta["rng_state"], history=meta["history"],
                      meta=meta["meta"], carry=carry)
