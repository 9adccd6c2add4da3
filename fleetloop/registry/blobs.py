"""Model files, content-addressed: ``blobs/sha256/<hex>``, written create-only, verified on read.

A blob is written only under the hash of its own bytes and only if no object is there
(``put_if_absent``): identical files dedupe across versions, and no write can ever replace a
stored file. Reading hashes the bytes again; a mismatch is an :class:`IntegrityError`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path, PurePosixPath

from fleetloop.registry.errors import IntegrityError, RegistryError
from fleetloop.registry.keys import Layout
from fleetloop.store.objects import Store


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_relpath(rel: str) -> str:
    """A file's path inside a model directory: relative, ``/``-separated, no ``..``."""
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or any(part in ("", ".", "..") for part in rel.split("/")) or "\\" in rel:
        raise IntegrityError(f"unsafe file path {rel!r} in a model directory")
    return rel


def scan_model_dir(model_dir: Path) -> dict[str, Path]:
    """The regular files under ``model_dir`` by relative posix path, sorted."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise RegistryError(f"model directory {model_dir} does not exist or is not a directory")
    files = {check_relpath(p.relative_to(model_dir).as_posix()): p for p in sorted(model_dir.rglob("*")) if p.is_file()}
    if not files:
        raise RegistryError(f"model directory {model_dir} holds no files")
    return files


def put_blob(store: Store, layout: Layout, sha256: str, data: bytes) -> bool:
    """Store ``data`` under its hash, create-only. ``True`` if written, ``False`` if that content
    was already there. Bytes that do not hash to ``sha256`` are refused."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise IntegrityError(f"refused to write blob {sha256}: the bytes hash to {actual}")
    return store.put_if_absent(layout.blob(sha256), data)


def upload_files(store: Store, layout: Layout, files: dict[str, Path]) -> tuple[dict[str, str], int, int]:
    """Upload every file as a blob. Returns ({relpath: sha256}, total bytes, blobs newly written)."""
    hashes: dict[str, str] = {}
    total = written = 0
    for rel, path in files.items():
        try:
            data = path.read_bytes()
        except OSError as exc:  # unreadable (permissions, I/O) or gone since the scan: nothing is carded
            raise RegistryError(f"cannot read {path} of the model directory: {exc.strerror or exc}") from None
        digest = hashlib.sha256(data).hexdigest()
        hashes[rel] = digest
        total += len(data)
        if store.exists(layout.blob(digest)):
            continue  # same content already stored (dedupe): one HEAD, no upload
        written += put_blob(store, layout, digest, data)
    return hashes, total, written


def download_files(store: Store, layout: Layout, files: dict[str, str], to_dir: Path) -> Path:
    """Write each file to ``to_dir/<relpath>`` after checking its sha256 (atomic per file)."""
    to_dir = Path(to_dir)
    to_dir.mkdir(parents=True, exist_ok=True)
    root = to_dir.resolve()
    for rel, digest in sorted(files.items()):
        target = (root / check_relpath(rel)).resolve()
        if root not in target.parents:
            raise IntegrityError(f"file path {rel!r} leaves {to_dir}")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.part-")
        os.close(fd)
        try:
            store.get_file(layout.blob(digest), Path(tmp))
            actual = sha256_file(Path(tmp))
            if actual != digest:
                raise IntegrityError(
                    f"{layout.blob(digest)} ({rel}) is corrupt: its bytes hash to {actual}, the card says {digest}"
                )
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return to_dir
