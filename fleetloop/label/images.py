"""Task images: make a frame's image loadable by the labeler's browser, or say why it is not.

Label Studio never fetches images itself: the labeler's browser does. So every task image URL
must be reachable from the browser:

* :class:`LocalFilesPublisher` (embedded default): files under the local server's document root
  (``<home>``) are served by Label Studio at ``/data/local-files/?d=<relative path>``;
* :class:`StorePublisher` (production): the file is uploaded to the object store and the task
  gets a presigned URL.

A frame's own image reference (``frames.image_uri``: a path, ``file://``, ``s3://`` or
``http(s)://``) is checked before a task points at it: one that exists but cannot be decoded
raises :class:`ImageProblem`, which the push reports for that frame.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, unquote, urlparse


class ImageProblem(ValueError):
    """A frame's image cannot be used (missing, unreadable, not an image)."""


class Publisher(Protocol):
    def publish(self, path: Path, key: str) -> str:
        """Make the local file ``path`` reachable and return its URL; ``key`` is a stable name."""


class LocalFilesPublisher:
    """Label Studio's local-files serving. ``document_root`` is its LOCAL_FILES_DOCUMENT_ROOT;
    ``image_dir`` (under it) holds ``<campaign>/...`` and each campaign's directory is registered
    as the project's local-files storage (Label Studio serves nothing outside such storages), so
    a file elsewhere is linked (or copied) to ``image_dir/<key>`` first."""

    def __init__(self, document_root: Path, image_dir: Path):
        self.root = Path(document_root).resolve()
        self.image_dir = Path(image_dir).resolve()
        if self.root not in self.image_dir.parents:
            raise ValueError(f"{self.image_dir} is not under Label Studio's document root {self.root}")

    def publish(self, path: Path, key: str) -> str:
        path = Path(path).resolve()
        target = self.image_dir / key
        if path != target:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            try:
                os.link(path, target)
            except OSError:  # another filesystem
                shutil.copyfile(path, target)
        return "/data/local-files/?d=" + quote(target.relative_to(self.root).as_posix())


class StorePublisher:
    """Upload to a :class:`fleetloop.store.objects.Store` and hand out a presigned URL."""

    def __init__(self, store, prefix: str, expires: int = 7 * 24 * 3600):
        self.store, self.prefix, self.expires = store, prefix.strip("/"), expires

    def publish(self, path: Path, key: str) -> str:
        store_key = f"{self.prefix}/{key}"
        self.store.put_file(store_key, Path(path))
        url = self.store.url_for(store_key, expires=self.expires)
        if url.startswith("file:"):
            raise ImageProblem(
                f"{self.store!r} gives file:// URLs, which a labeler's browser cannot load from a remote"
                " Label Studio: use the S3 storage backend (presigned URLs) or the local Label Studio server"
            )
        return url


def check_image_bytes(data: bytes, where: str) -> tuple[int, int]:
    """Decode the header and verify the image; returns (width, height)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageProblem(f"image {where} cannot be loaded: {exc}") from exc
    return size


def local_image_path(uri: str) -> Path | None:
    """The local file an image reference names, or None if it is a remote URL."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme in ("",) or (len(parsed.scheme) == 1 and uri[1:3] in (":\\", ":/")):
        return Path(uri)
    return None


def resolve_image(uri: str, publisher: Publisher, key: str, s3_client=None) -> tuple[str, int, int]:
    """The URL a task should use for a frame's image reference, with the image's size.

    Local files and ``s3://`` objects are read and verified first; ``http(s)://`` URLs are used
    as they are (the browser fetches them) and their size must come from the calibration.
    """
    path = local_image_path(uri)
    if path is not None:
        if not path.is_file():
            raise ImageProblem(f"image {uri} does not exist")
        width, height = check_image_bytes(path.read_bytes(), uri)
        return publisher.publish(path, key + path.suffix.lower()), width, height
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if s3_client is None:
            raise ImageProblem(f"image {uri} is in S3 but no S3 client is configured (set FLEETLOOP_STORAGE__S3__*)")
        try:
            body = s3_client.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"].read()
        except Exception as exc:  # botocore's errors: report, do not stop the batch
            raise ImageProblem(f"image {uri} cannot be read: {exc}") from exc
        width, height = check_image_bytes(body, uri)
        url = s3_client.generate_presigned_url(
            ClientMethod="get_object",
            Params={"Bucket": parsed.netloc, "Key": parsed.path.lstrip("/")},
            ExpiresIn=7 * 24 * 3600,
        )
        return url, width, height
    if parsed.scheme in ("http", "https"):
        return uri, 0, 0
    raise ImageProblem(f"image reference {uri!r} has an unsupported scheme {parsed.scheme!r}")
