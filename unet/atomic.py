"""Files written whole or not at all: a temporary file beside the target, then a rename.
Checkpoints, cache entries, predicted masks, predict's record and the outbox's journal are all
written this way, so a crash or a kill mid-write leaves the previous file (or none), never a
torn one."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

# The process's umask, read once at import (reading it means setting it): mkstemp makes files
# 0600, and the files written here get the mode a plain open() would give them.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomically(path: Path, write: Callable[[IO[bytes]], None],
                     durable: bool = False) -> None:
    """Calls `write(f)` on a new temporary file in `path`'s folder (made if missing), then
    renames it to `path`. `durable`: fsync before the rename, so that the content also survives
    a power cut (checkpoints); a file that can be made again (a mask, a cache entry) skips that
    cost. A failed write removes its temporary file and raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
