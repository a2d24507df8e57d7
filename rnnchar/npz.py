"""Reading arrays out of an ``.npz`` one at a time, checked before their data is read.

``np.load`` of an ``.npz`` believes every member's sizes and reads what it is asked for; a
small hostile file can declare gigabytes (a deflated member of zeros) or a header of any
length. Here a member is read only when asked for by name, and its zip entry (encryption,
compression method, declared size) and ``.npy`` header (dtype, shape, length) are checked
first, so refusing a member costs a few hundred bytes of reading::

    with NpzReader("runs/tiny/last.npz") as npz:
        vocab = npz.read("vocab", kinds="iu", max_bytes=1 << 20)  # integers, at most 1 MiB, or NpzError
        embed = npz.read("param/embed.W", kinds="f", shape=(len(vocab) + 2, 4))  # that shape, or NpzError

Never unpickles: an object dtype is refused from the header. Errors are NpzError, whose
message names the member and the problem (the caller adds the file name).
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib

import numpy as np

MAX_HEADER = 10_000  # bytes of .npy header (numpy's own default limit); ours are ~100
_CHUNK = 1 << 24  # read data 16 MiB at a time: a member is never held twice in memory
_KINDS = {"f": "float32 or float64", "i": "integer", "u": "integer", "b": "bool", "U": "text"}


class NpzError(ValueError):
    """A member is missing, corrupt, of the wrong dtype or shape, or larger than allowed."""


def dtype_ok(dtype: np.dtype, kinds: str) -> bool:
    """dtype kind in ``kinds`` ("f" float, "i"/"u" int, "b" bool, "U" text); floats only float32/float64."""
    return dtype.kind in kinds and (dtype.kind != "f" or dtype in (np.float32, np.float64))


def _header(f, key: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from a .npy header of bounded length."""
    try:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise NpzError(f"array '{key}' uses .npy format version {version}, which is not read")
        fmt = np.lib.format
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        return read(f, max_header_size=MAX_HEADER)
    except (ValueError, SyntaxError, RecursionError, MemoryError) as err:
        if isinstance(err, NpzError):
            raise
        lines = str(err).strip().splitlines() or [type(err).__name__]
        why = lines[0][:200].rstrip(".")  # numpy's first line, without its allow_pickle advice
        raise NpzError(f"array '{key}' has an invalid .npy header (at most {MAX_HEADER} bytes are read): "
                       f"{why}") from None


def _read_exactly(f, nbytes: int, key: str) -> bytearray:
    buf = bytearray(nbytes)
    view, got = memoryview(buf), 0
    while got < nbytes:
        chunk = f.read(min(_CHUNK, nbytes - got))
        if not chunk:
            raise NpzError(f"array '{key}' is truncated: {got} of {nbytes} bytes")
        view[got:got + len(chunk)] = chunk
        got += len(chunk)
    if f.read(1):  # also makes zipfile check the CRC of what was read
        raise NpzError(f"array '{key}' is longer than its .npy header says")
    return buf


class NpzReader:
    """An open .npz whose members are read lazily by name (without the .npy suffix)."""

    def __init__(self, path: str | os.PathLike):
        self.zip = zipfile.ZipFile(path)
        self.members = {info.filename[:-4]: info for info in self.zip.infolist()
                        if info.filename.endswith(".npy")}

    def __enter__(self) -> NpzReader:
        return self

    def __exit__(self, *exc) -> None:
        self.zip.close()

    def read(self, key: str, kinds: str, shape: tuple[int, ...] | None = None,
             max_bytes: int | None = None) -> np.ndarray:
        """Member `key`, refused unless its dtype kind is in `kinds`, its shape is `shape` (if given)
        and its data is at most `max_bytes` (if given): all checked before the data is read."""
        info = self.members[key]
        if info.flag_bits & 0x1:
            raise NpzError(f"array '{key}' is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise NpzError(f"array '{key}' uses zip compression method {info.compress_type}; only stored "
                           "and deflated members are read")
        try:
            with self.zip.open(info) as f:
                got, fortran, dtype = _header(f, key)
                self._check(key, dtype, kinds, got, shape)
                nbytes = math.prod(got) * dtype.itemsize
                if max_bytes is not None and nbytes > max_bytes:
                    raise NpzError(f"array '{key}' declares {nbytes:,} bytes of data; at most {max_bytes:,} "
                                   "are allowed")
                if info.file_size != f.tell() + nbytes:
                    raise NpzError(f"array '{key}' is corrupt: its zip entry declares {info.file_size:,} "
                                   f"bytes, its .npy header {f.tell() + nbytes:,}")
                data = _read_exactly(f, nbytes, key)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as err:
            raise NpzError(f"array '{key}' is corrupt or truncated: {err}") from None
        if nbytes == 0:
            return np.empty(got, dtype)
        return np.frombuffer(data, dtype).reshape(got, order="F" if fortran else "C")

    @staticmethod
    def _check(key: str, dtype: np.dtype, kinds: str, got: tuple, shape: tuple | None) -> None:
        if dtype.hasobject:
            raise NpzError(f"array '{key}' holds Python objects; refusing to load pickled data (it could "
                           "run code)")
        if not dtype_ok(dtype, kinds):
            expected = " or ".join(dict.fromkeys(_KINDS[k] for k in kinds))
            raise NpzError(f"array '{key}' has dtype {dtype}; expected {expected}")
        if shape is not None and got != tuple(shape):
            raise NpzError(f"array '{key}' has shape {got}, but the config stored with it implies "
                           f"{tuple(shape)}")
