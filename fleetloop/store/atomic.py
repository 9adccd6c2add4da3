"""Local files written whole: into a temporary file of a unique name beside the target, flushed
and fsynced, then renamed over it. Concurrent writers never share a temporary file (the last
rename wins, whole); on any failure (a full disk, a kill) the temporary file is removed or, after
a kill, left as a dot-file beside an untouched target."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: Path, write: Callable[[BinaryIO], object], *, mode: int = 0o644) -> None:
    """Write ``path`` whole with ``write(file)``, or leave it as it was. Errors (``OSError`` from
    the file system, anything ``write`` raises) propagate after the clean-up. ``mode``: the new
    file's permissions (``mkstemp``'s 0600 would hide it from other users)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
