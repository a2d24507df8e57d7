"""Small file helpers: regular files only where a file is seeked or read twice; atomic writes.

    why = not_regular("corpus.txt")     # None for a regular file, else a reason: "it is a FIFO ..."
    with open("corpus.txt", "rb") as f:
        data = read_capped(f, STDIN_CAP, "corpus.txt")  # TooLong past the cap
    write_atomically("runs/x/notes.txt", lambda f: f.write(b"all or nothing"))  # the old file or the new

A FIFO would hang the second read (or the first, with no writer), a device such as
/dev/zero never ends: neither is opened where a file is read twice or seeked (checkpoints,
stream corpora). Text read once from a pipe, stdin or a device is read up to a cap.
Checkpoints, the id cache, config.yaml and metrics.jsonl are all written by `write_atomically`:
a reader sees the old file or the complete new one, never a half-written one.
Only the standard library is imported here.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

STDIN_CAP = 1 << 28  # 256 MiB: text read from stdin, a pipe or a device; use a file for more


class TooLong(ValueError):
    """More than the cap was offered on a stream that cannot be sized in advance."""


def not_regular(path) -> str | None:
    """None for a regular file (symlinks followed), else why not: "no such file", "it is a FIFO"..."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as err:
        return err.strerror or str(err)
    if stat.S_ISREG(mode):
        return None
    kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    return f"it is {kind}"


def read_capped(binary_stream, cap: int, name: str) -> bytearray:
    """All bytes of a stream, refusing (TooLong) more than `cap`, in bounded memory."""
    data = bytearray()
    while chunk := binary_stream.read(1 << 20):
        data += chunk
        if len(data) > cap:
            raise TooLong(f"{name} holds more than {cap >> 20} MiB; write the text to a regular file and "
                          "pass its path instead")
    return data


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], object],
                     suffix: str = ".tmp") -> None:
    """Replace `path` by a complete new file: `write(f)` fills a temporary file beside it (flushed and
    fsynced), which is then renamed over `path`. On any failure, Ctrl-C included, the temporary file
    is removed, `path` is untouched and the exception propagates (OSError for the caller to word).

    The temporary file is `.<name>.<token><random><suffix>` in the same folder (a run directory
    sweeps `.*.tmp` left by a kill -9), created 0600 by mkstemp, then given the usual permissions.
    """
    path = Path(path)
    folder = path.parent
    prefix = f".{path.name}.{secrets.token_hex(4)}"  # ours alone: found even if mkstemp is interrupted
    try:
        fd, tmp = tempfile.mkstemp(suffix=suffix, prefix=prefix, dir=folder)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:  # also KeyboardInterrupt: leave no half-written file behind
        _remove_temporary(folder, prefix, suffix)
        raise
    _fsync_dir(folder)


def _remove_temporary(folder: Path, prefix: str, suffix: str) -> None:
    """Remove our temporary file, also when mkstemp created it but was interrupted before naming it."""
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix) and n.endswith(suffix)]
    except OSError:
        return
    for name in names:
        try:
            os.unlink(folder / name)
        except OSError:
            pass


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
