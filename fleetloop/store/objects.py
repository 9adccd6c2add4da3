"""Object storage: one small interface, two backends.

:class:`LocalStore` keeps objects as files under a directory (the embedded default);
:class:`S3Store` keeps them in an S3 bucket through boto3 (AWS, MinIO, moto, any S3-compatible
endpoint). Keys are ``/``-separated relative paths (``logs/0001/frames.parquet``); listing is by
plain string prefix, in lexicographic key order, as S3 does it.

Writes are atomic: a reader sees the old object or the new one, never half of one (local: write a
temporary file next to the target, then ``os.replace``; S3: a PUT is atomic). Every failure to
reach the storage is a :class:`StorageError` whose message names the endpoint, bucket and key.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetloop.settings import redact
from fleetloop.store.atomic import write_atomic

if TYPE_CHECKING:
    import pyarrow as pa

    from fleetloop.settings import S3Settings, Settings

__all__ = [
    "LocalStore",
    "ObjectNotFound",
    "S3Store",
    "StorageError",
    "Store",
    "get_store",
    "make_s3_client",
    "table_from_bytes",
    "table_to_bytes",
]

# Marker in the names of local temporary files; listing skips them, keys may not contain it.
_TMP_MARK = ".fltmp-"


class StorageError(RuntimeError):
    """The object store could not be reached or refused an operation (message says where)."""


class ObjectNotFound(StorageError, KeyError):
    """No object under that key."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not key or key.startswith("/") or key.endswith("/"):
        raise ValueError(f"invalid storage key {key!r}: a non-empty relative path like 'a/b.json'")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\\" in key or _TMP_MARK in key:
        raise ValueError(f"invalid storage key {key!r}: empty, '.', '..' parts or backslashes")
    return key


def _check_prefix(prefix: str) -> str:
    if prefix == "":
        return prefix
    if prefix.startswith("/") or "\\" in prefix or ".." in prefix.split("/"):
        raise ValueError(f"invalid storage prefix {prefix!r}")
    return prefix


class Store(ABC):
    """Object storage. Keys are relative ``/``-separated paths."""

    #: where the store is, for messages (never holds secrets)
    location: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` under ``key`` atomically (replacing any object there)."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object's content; :class:`ObjectNotFound` if there is none."""

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Upload a local file under ``key`` atomically."""

    @abstractmethod
    def get_file(self, key: str, path: Path) -> Path:
        """Download the object to ``path`` (parents created, written atomically); returns ``path``."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "", *, start_after: str | None = None) -> list[str]:
        """Keys starting with ``prefix`` (a string prefix, not a directory), sorted, and only
        those greater than ``start_after`` when given (S3's ``StartAfter``)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""

    @abstractmethod
    def url_for(self, key: str, expires: int = 3600) -> str:
        """A URL to read the object: presigned for S3 (valid ``expires`` seconds), ``file://`` for local."""

    # Conditional writes: every state change of the registry, the dataset and the log registry is
    # one create-only or compare-and-swap write (S3 ``IfNoneMatch``/``IfMatch``; the same
    # semantics on the local backend), never a check followed by a write.

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create the object only if there is none under ``key``; ``False`` if one exists."""

    @abstractmethod
    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object's content and its version tag (an ETag); :class:`ObjectNotFound` if none."""

    @abstractmethod
    def put_if_match(self, key: str, data: bytes, etag: str) -> bool:
        """Replace the object only if its version tag is still ``etag``; ``False`` if it changed
        (or is gone)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location})"


class LocalStore(Store):
    """Objects as files under ``root`` (created on first write)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.location = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _error(self, op: str, key: str, exc: BaseException) -> StorageError:
        return StorageError(f"local store {self.root}: {op} {key!r} failed: {exc}")

    def _atomic_write(self, key: str, write: Any) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, write, tmp_mark=_TMP_MARK)
        except OSError as exc:
            raise self._error("write", key, exc) from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(key, data)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(f"local store {self.root}: no object {key!r}") from exc
        except OSError as exc:
            raise self._error("read", key, exc) from exc

    def put_file(self, key: str, path: Path) -> None:
        try:
            src = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise self._error(f"upload of {path} to", key, exc) from exc
        with src:
            self._atomic_write(key, lambda f: shutil.copyfileobj(src, f, 1 << 20))

    def get_file(self, key: str, path: Path) -> Path:
        src = self._path(key)
        path = Path(path)
        if not src.is_file():
            raise ObjectNotFound(f"local store {self.root}: no object {key!r}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{_TMP_MARK}")
            os.close(fd)
            try:
                shutil.copyfile(src, tmp)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise self._error(f"download to {path} of", key, exc) from exc
        return path

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "", *, start_after: str | None = None) -> list[str]:
        _check_prefix(prefix)
        # Walk only the deepest directory the prefix names, then filter by string prefix.
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        keys: list[str] = []
        if self.root.exists() and not self.root.is_dir():  # a misconfigured root is not an empty store
            raise StorageError(f"local store {self.root}: list {prefix!r} failed: the store's root is not a directory "
                               "(check FLEETLOOP_STORAGE__LOCAL_ROOT / FLEETLOOP_HOME)")
        if not base.is_dir():
            return keys
        try:
            for dirpath, _dirs, files in os.walk(base):
                rel = Path(dirpath).relative_to(self.root).as_posix()
                for name in files:
                    if _TMP_MARK in name:
                        continue
                    key = name if rel == "." else f"{rel}/{name}"
                    if key.startswith(prefix) and (start_after is None or key > start_after):
                        keys.append(key)
        except OSError as exc:
            raise self._error("list", prefix, exc) from exc
        keys.sort()
        return keys

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise self._error("delete", key, exc) from exc
        # Prune directories the delete left empty, up to (not including) the root.
        parent = path.parent
        while parent != self.root and self.root in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def url_for(self, key: str, expires: int = 3600) -> str:
        return self._path(key).as_uri()

    def put_if_absent(self, key: str, data: bytes) -> bool:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}{_TMP_MARK}")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o644)
                try:
                    os.link(tmp, target)  # atomic, and never replaces an existing file
                except FileExistsError:
                    return False
                return True
            finally:
                Path(tmp).unlink(missing_ok=True)
        except OSError as exc:
            raise self._error("create", key, exc) from exc

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        data = self.get_bytes(key)
        return data, _etag(data)

    def put_if_match(self, key: str, data: bytes, etag: str) -> bool:
        target = self._path(key)
        with self._key_lock(target):
            try:
                current = target.read_bytes()
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise self._error("read", key, exc) from exc
            if _etag(current) != etag:
                return False
            self.put_bytes(key, data)
            return True

    @contextlib.contextmanager
    def _key_lock(self, target: Path) -> Iterator[None]:
        """Serialise compare-and-swap on one key across processes (a hidden lock file beside it)."""
        lock = target.parent / f".{target.name}{_TMP_MARK}lock"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"local store {self.root}: cannot lock {target}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock


def make_s3_client(s3: S3Settings) -> Any:
    """A boto3 S3 client for the configured endpoint, with short timeouts and few retries so a
    dead endpoint fails in seconds. Credentials: the settings' keys, else boto3's default chain."""
    import boto3
    from botocore.config import Config

    options: dict[str, Any] = dict(
        connect_timeout=s3.connect_timeout_s,
        read_timeout=s3.read_timeout_s,
        retries={"max_attempts": s3.max_attempts, "mode": "standard"},
        signature_version="s3v4",  # presigned URLs too (MinIO and current AWS regions need v4)
    )
    if s3.endpoint_url:
        # S3-compatible servers (MinIO, moto): path-style URLs, checksums only where required.
        options.update(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
    key_id = secret = None  # None: boto3's default credential chain
    if s3.access_key_id is not None and s3.secret_access_key is not None:
        key_id, secret = s3.access_key_id.get_secret_value(), s3.secret_access_key.get_secret_value()
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        region_name=s3.region,
        config=Config(**options),
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )


class S3Store(Store):
    """Objects in ``s3://bucket/prefix`` through a boto3 S3 client (see :func:`make_s3_client`)."""

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client
        # for messages: an endpoint URL's embedded credentials (user:pass@) masked
        self.endpoint = redact(getattr(getattr(client, "meta", None), "endpoint_url", None) or "AWS S3")
        self.location = f"s3://{bucket}/{self.prefix} at {self.endpoint}"
        self._settings: S3Settings | None = None  # set by from_settings: makes the store picklable

    @classmethod
    def from_settings(cls, s3: S3Settings) -> S3Store:
        store = cls(s3.bucket, s3.prefix, make_s3_client(s3))
        store._settings = s3
        return store

    def __getstate__(self) -> dict[str, Any]:
        # boto3 clients do not pickle; a store sent to another process (Dask) rebuilds its client.
        if self._settings is None:
            raise TypeError("an S3Store built from a client cannot be pickled: use S3Store.from_settings / get_store")
        return {"settings": self._settings, "prefix": self.prefix}

    def __setstate__(self, state: dict[str, Any]) -> None:
        s3 = state["settings"]
        self.__init__(s3.bucket, state["prefix"], make_s3_client(s3))  # type: ignore[misc]
        self._settings = s3

    def _key(self, key: str) -> str:
        return self.prefix + _check_key(key)

    def _error(self, op: str, key: str, exc: BaseException) -> StorageError:
        code = _error_code(exc)
        if code in ("NoSuchKey", "404", "NotFound"):
            return ObjectNotFound(f"S3 {self.endpoint}: no object s3://{self.bucket}/{self.prefix}{key}")
        what = f"s3://{self.bucket}/{self.prefix}{key}"
        hint = ""
        if code == "NoSuchBucket":
            hint = f" (bucket {self.bucket!r} does not exist: create it or set FLEETLOOP_STORAGE__S3__BUCKET)"
        return StorageError(f"S3 {op} {what} at {self.endpoint} failed: {redact(str(exc))}{hint}")

    def _call(self, op: str, key: str, fn: Any, **kwargs: Any) -> Any:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except (BotoCoreError, ClientError, Boto3Error) as exc:
            raise self._error(op, key, exc) from exc

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (MinIO/moto/dev setups)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise StorageError(f"S3 head bucket {self.bucket!r} at {self.endpoint} failed: {redact(str(exc))}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"S3 head bucket {self.bucket!r} at {self.endpoint} failed: {redact(str(exc))}") from exc
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StorageError(f"S3 create bucket {self.bucket!r} at {self.endpoint} failed: {redact(str(exc))}") from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call("put", key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError

        resp = self._call("get", key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        try:
            return resp["Body"].read()
        except BotoCoreError as exc:  # connection lost while streaming the body
            raise self._error("get", key, exc) from exc

    def put_file(self, key: str, path: Path) -> None:
        if not Path(path).is_file():
            raise StorageError(f"S3 upload to s3://{self.bucket}/{self._key(key)}: no local file {path}")
        self._call(
            "upload", key, self.client.upload_file,
            Filename=str(path), Bucket=self.bucket, Key=self._key(key), Config=_transfer_config(),
        )

    def get_file(self, key: str, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # s3transfer downloads to a temporary name and renames it into place.
        self._call(
            "download", key, self.client.download_file,
            Bucket=self.bucket, Key=self._key(key), Filename=str(path), Config=_transfer_config(),
        )
        return path

    def exists(self, key: str) -> bool:
        try:
            self._call("head", key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "", *, start_after: str | None = None) -> list[str]:
        _check_prefix(prefix)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        if start_after is not None:
            kwargs["StartAfter"] = self.prefix + start_after
        keys: list[str] = []

        def _pages() -> None:
            for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
                keys.extend(obj["Key"][len(self.prefix):] for obj in page.get("Contents", []))

        self._call("list", prefix + "*", _pages)
        return keys  # S3 lists in key (UTF-8 binary) order

    def delete(self, key: str) -> None:
        self._call("delete", key, self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def url_for(self, key: str, expires: int = 3600) -> str:
        from urllib.parse import urlsplit

        url: str = self._call(
            "presign", key, self.client.generate_presigned_url,
            ClientMethod="get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=expires,
        )
        # Handed to Label Studio (stored in its tasks, shown to annotators): an endpoint's embedded
        # user:pass@ is dropped (not part of the signature, which covers the host: still valid).
        parts = urlsplit(url)
        if "@" in parts.netloc:
            url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        return url

    def _conditional_put(self, op: str, key: str, data: bytes, **condition: str) -> bool:
        """One conditional PUT: ``True`` if written, ``False`` on a failed precondition (412). A
        409 (S3's answer to concurrent conditional writes on one key) is retried."""
        from botocore.exceptions import ClientError

        for attempt in range(8):
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
                return True
            except ClientError as exc:
                code = _error_code(exc)
                if code in ("PreconditionFailed", "412"):
                    return False
                if code in ("ConditionalRequestConflict", "409") and attempt < 7:
                    time.sleep(0.05 * (attempt + 1))
                    continue
                if code in ("NoSuchKey", "404") and "IfMatch" in condition:
                    return False
                raise self._error(op, key, exc) from exc
            except Exception as exc:  # BotoCoreError: connection problems
                raise self._error(op, key, exc) from exc
        return False

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._conditional_put("create", key, data, IfNoneMatch="*")

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        from botocore.exceptions import BotoCoreError

        resp = self._call("get", key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        try:
            return resp["Body"].read(), str(resp["ETag"])
        except BotoCoreError as exc:
            raise self._error("get", key, exc) from exc

    def put_if_match(self, key: str, data: bytes, etag: str) -> bool:
        return self._conditional_put("compare-and-swap", key, data, IfMatch=etag)


def _etag(data: bytes) -> str:
    """The local backend's version tag: the content's hash (S3 uses its own ETag)."""
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


def _error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code"))
    return None


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    # Few download retries: the client's own retry settings already apply per request.
    return TransferConfig(multipart_threshold=64 << 20, num_download_attempts=2)


def get_store(settings: Settings | None = None) -> Store:
    """The store the settings name: ``local`` (``settings.store_root``) or ``s3``."""
    from fleetloop.settings import get_settings

    settings = settings or get_settings()
    if settings.storage.backend == "s3":
        return S3Store.from_settings(settings.storage.s3)
    return LocalStore(settings.store_root)


def table_to_bytes(table: pa.Table) -> bytes:
    """A table as Parquet bytes (for ``put_bytes``)."""
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def table_from_bytes(data: bytes) -> pa.Table:
    import io

    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data))
