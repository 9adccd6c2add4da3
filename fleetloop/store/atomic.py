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


def write_atomic(path: Path, content: bytes | Callable[[BinaryIO], object], *, mode: int = 0o644,
                 tmp_mark: str = ".") -> None:
    """Write ``path`` whole, or leave it as it was: ``content`` is the bytes, or ``write(file)``
    that writes them. Errors (``OSError`` from the file system, anything ``write`` raises)
    propagate after the clean-up. ``mode``: the new file's permissions (``mkstemp`` creates it
    0600, so a private file is never readable by others, not even while written; the default
    0644 keeps an output visible to other users). ``tmp_mark``: what follows ``.<name>`` in the
    temporary file's name (a store marks its own so that listings skip them)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{tmp_mark}", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(content, bytes):
                fh.write(content)
            else:
                content(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
