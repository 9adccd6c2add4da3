"""Local files written whole: into a temporary file of a unique name beside the target, flushed
and fsynced, then renamed over it. Concurrent writers never share a temporary file (the last
rename wins, whole); on any failure (a full disk, a kill) the temporary file is removed or, after
a kill, left as a dot-file beside an untouched target. :func:`writable_dir_problem` tells before
a long run whether its output directory can be written at all."""

from __future__ import annotations

import contextlib
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


def writable_dir_problem(directory: Path) -> str | None:
    """Why files cannot be written into ``directory`` (it is missing, not a directory, or not
    writable), or None. Tried for real: a temporary file is created and removed (``os.access``
    says yes to root on a read-only mount), so a run learns it in a second, not after the work."""
    if not directory.exists():
        return f"directory {directory} does not exist"
    if not directory.is_dir():
        return f"{directory} is not a directory"
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".fleetloop-probe-")
    except OSError as exc:
        return f"directory {directory} is not writable ({exc.strerror or exc})"
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
    return None
