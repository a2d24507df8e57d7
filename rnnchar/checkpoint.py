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
checkpoint intact. Loading reads only the members above, lazily, each checked
from its zip entry and .npy header before its data is read (npz.py); given
`shapes_of`, every array must have the shape the stored config implies, so a
hostile file costs neither memory nor a model. Usage::

    save_checkpoint("runs/x/last.npz", Checkpoint(config, vocab, params, opt_state, step, rng_state, history))
    ckpt = load_checkpoint("runs/x/last.npz")  # the CLI passes shapes_of=runs.checkpoint_shapes
"""

from __future__ import annotations

import json
import os
import signal
import zipfile
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .fileio import not_regular, write_atomically
from .npz import NpzError, NpzReader, dtype_ok

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 kept the carried stream state among the optimizer slots
_REQUIRED = ("format_version", "config_json", "meta_json", "vocab")
MAX_TEXT_CHARS = 1 << 24  # config_json, meta_json: 16 Mi characters (a long run's history is < 1 Mi)
MAX_VOCAB = 0x110000  # vocab entries: one per Unicode code point at most


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


def _numeric(name: str, arr: Any, path: Path, kinds: str) -> np.ndarray:
    """``arr`` as an ndarray whose dtype kind is in ``kinds``; finite if floating."""
    arr = np.asarray(arr)
    if not dtype_ok(arr.dtype, kinds):
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
    try:
        write_atomically(path, lambda f: np.savez(f, **arrays))
    except OSError as err:
        reason = err.strerror or str(err)
        if not path.parent.is_dir():
            reason = f"folder {path.parent} does not exist"
        raise CheckpointError(f"could not write checkpoint {path}: {reason}; "
                              "the previous checkpoint (if any) is untouched") from err


def _check_file(path: Path) -> None:
    """A regular file that starts like a zip archive (np.load would try .npy or pickle formats)."""
    try:
        if path.is_dir():
            raise CheckpointError(f"checkpoint {path} is a directory, not a .npz file")
        if not path.exists():
            raise CheckpointError(f"checkpoint {path} does not exist")
        if (why := not_regular(path)) is not None:  # a FIFO or device would block or never end
            raise CheckpointError(f"checkpoint {path} is not a regular file: {why}")
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    if magic[:2] != b"PK":
        what = "an empty file" if not magic else "not a zip archive"
        raise CheckpointError(f"{path}: not an .npz checkpoint ({what})")


def _json_of(npz: NpzReader, key: str) -> Any:
    text = npz.read(key, "U", shape=(), max_bytes=4 * MAX_TEXT_CHARS).item()
    try:
        return json.loads(text)
    except ValueError as err:
        raise NpzError(f"'{key}' is not valid JSON: {err}") from None
    except RecursionError:
        raise NpzError(f"'{key}' is nested too deeply to be a checkpoint's JSON") from None


def _header_arrays(npz: NpzReader) -> tuple[int, dict, dict, np.ndarray]:
    """(version, config, meta, vocab): the small members, once the version and the keys are checked."""
    if "format_version" in npz.members:
        version = npz.read("format_version", "iub", max_bytes=64)
        if version.shape != () or version.dtype.kind not in "iu" or int(version) not in READABLE_VERSIONS:
            raise NpzError(f"checkpoint format version {version.tolist()!r}, but this rnnchar reads version "
                           f"{FORMAT_VERSION} (and older version 1)")
    missing = [k for k in _REQUIRED if k not in npz.members]
    if missing:
        raise NpzError(f"not an rnnchar checkpoint: missing {', '.join(missing)}")
    config, meta = _json_of(npz, "config_json"), _json_of(npz, "meta_json")
    expected = {"step": int, "rng_state": dict, "history": list, "meta": dict}
    if not isinstance(config, dict) or not isinstance(meta, dict) or any(
            not isinstance(meta.get(k), t) or isinstance(meta.get(k), bool) for k, t in expected.items()):
        raise NpzError("config_json must be an object and meta_json an object with step (int), rng_state, "
                       "history (list) and meta")
    vocab = npz.read("vocab", "iu", max_bytes=8 * MAX_VOCAB)
    if vocab.ndim != 1:
        raise NpzError(f"'vocab' must be a 1-D integer array, got shape {vocab.shape}")
    return int(version), config, meta, vocab


def _finite(key: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise NpzError(f"'{key}' contains NaN or inf")
    return arr


def _params(npz: NpzReader, shapes: dict | None) -> dict[str, np.ndarray]:
    """The param/ members; with `shapes`, exactly the names and shapes the stored config implies."""
    names = [k[len("param/"):] for k in npz.members if k.startswith("param/")]
    if shapes is not None:
        want = {k[len("param/"):] for k in shapes if k.startswith("param/")}
        missing, extra = sorted(want - set(names)), sorted(set(names) - want)
        if missing or extra:
            raise NpzError(f"parameters do not match the model its config describes: missing {missing}, "
                           f"unexpected {extra}")
    if not names:
        raise NpzError("checkpoint holds no parameters")
    return {n: _finite(f"param/{n}", npz.read(f"param/{n}", "f", (shapes or {}).get(f"param/{n}")))
            for n in names}


def _carried(npz: NpzReader, key: str, state: str, shapes: dict | None) -> np.ndarray:
    """A carried stream state "<j>/<k>", stored as `key`; with `shapes`, of the shape they list."""
    if shapes is not None and f"carry/{state}" not in shapes:
        raise NpzError(f"'{key}' holds a carried stream state, but the config stored with it carries none")
    return _finite(key, npz.read(key, "f", None if shapes is None else shapes[f"carry/{state}"]))


def _opt_state_and_carry(npz: NpzReader, shapes: dict | None, version: int) -> tuple[dict, dict]:
    """The opt/ and carry/ members. With `shapes`: a parameter's slot ("cache/layer0.W") is floating
    with the parameter's shape, the carried state has the shapes listed, and any other slot must be
    a number (Adam's step count). Version 1 kept the carried state as opt/carry/<j>/<k>."""
    opt_state, carry = {}, {}
    for key in [k for k in npz.members if k.startswith(("opt/", "carry/"))]:
        name = key.partition("/")[2]
        if key.startswith("carry/") or (version == 1 and name.startswith("carry/")):
            state = name.removeprefix("carry/") if key.startswith("opt/") else name
            carry[state] = _carried(npz, key, state, shapes)
            continue
        owner = "param/" + name.partition("/")[2]
        if shapes is None:
            arr = npz.read(key, "fiub")
        elif owner in shapes:
            arr = npz.read(key, "f", shapes[owner])
        else:
            arr = npz.read(key, "iuf", shape=())
        opt_state[name] = _finite(key, arr)
    return opt_state, carry


ShapesOf = Callable[[dict, np.ndarray], dict]


def load_checkpoint(path: str | os.PathLike, shapes_of: ShapesOf | None = None) -> Checkpoint:
    """Read and check a checkpoint; never unpickles. Raises CheckpointError on any problem.

    Members are read lazily: only those the format names, each checked from its zip entry and .npy
    header before its data is read (text at most MAX_TEXT_CHARS, vocab at most MAX_VOCAB entries).
    `shapes_of(config, vocab)`, if given, returns {member: shape} for every parameter (and optional
    extras such as the carried state) as the stored config implies them, so a file that does not
    fit its own config is refused before any large array is read or any model built; a ValueError
    from it means the stored config or vocabulary is invalid.
    """
    path = Path(path)
    _check_file(path)
    try:
        with NpzReader(path) as npz:
            version, config, meta, vocab = _header_arrays(npz)
            try:
                shapes = shapes_of(config, vocab) if shapes_of is not None else None
            except ValueError as err:
                raise CheckpointError(f"{path}: the stored config or vocabulary is invalid: {err}") from None
            params = _params(npz, shapes)
            opt_state, carry = _opt_state_and_carry(npz, shapes, version)
    except NpzError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error, NotImplementedError,
            RuntimeError) as err:
        raise CheckpointError(f"{path}: not a valid .npz checkpoint (truncated or corrupt?): {err}") from None
    return Checkpoint(config=config, vocab=vocab.astype(np.int64), params=params, opt_state=opt_state,
                      step=meta["step"], rng_state=meta["rng_state"], history=meta["history"],
                      meta=meta["meta"], carry=carry)
