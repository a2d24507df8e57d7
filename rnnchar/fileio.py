"""Small file checks shared by the readers: regular files only where a file is seeked or read twice.

    why = not_regular("corpus.txt")     # None for a regular file, else a reason: "it is a FIFO ..."
    with open("corpus.txt", "rb") as f:
        data = read_capped(f, STDIN_CAP, "corpus.txt")  # TooLong past the cap

A FIFO would hang the second read (or the first, with no writer), a device such as
/dev/zero never ends: neither is opened where a file is read twice or seeked (checkpoints,
stream corpora). Text read once from a pipe, stdin or a device is read up to a cap.
Only the standard library is imported here.
"""

from __future__ import annotations

import os
import stat

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
