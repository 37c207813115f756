"""Reading the small files the daemon is handed (keys, the token, its state) without surprises."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class NotASmallFile(ValueError):
    """The path is not a regular file, or is larger than the reader takes."""


def read_small(path: str | Path, limit: int, *, follow_links: bool = True) -> bytes:
    """The bytes of the regular file at `path`, of at most `limit` bytes.

    Opened non-blocking, so a FIFO (no writer) or a device opens at once and is then refused
    as not regular, rather than hanging the reader or feeding it without end (/dev/zero).
    `follow_links=False` refuses a symbolic link (OSError ELOOP): for a file in a directory
    someone less trusted can write. Raises OSError when it cannot be opened or read, and
    NotASmallFile when it is not a regular file or is too large.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotASmallFile(f"{path} is not a regular file")
        data = f.read(limit + 1)  # the size may change under us: count what is read
    if len(data) > limit:
        raise NotASmallFile(f"{path} is over {limit} bytes")
    return data
