"""A real S3-compatible HTTP server on loopback for tests (moto's ThreadedMotoServer).

Use from any test module with ``pytest_plugins = ["tests.fixtures_s3"]``:

- ``s3_server`` (session): an :class:`S3Server`; ``.endpoint_url`` is ``http://127.0.0.1:<port>``.
  ``with s3_server.down(): ...`` takes it off the network (connections refused) and brings it
  back at the same port afterwards, with its data intact (an outage, not a data loss).
  ``.stop()`` / ``.start()`` do the same by hand.
- ``s3_bucket``: a fresh, empty bucket name on that server.
- ``s3_settings``: a :class:`fleetloop.settings.S3Settings` pointing at that bucket.

Fake credentials are set in the environment for the session (``AWS_ACCESS_KEY_ID`` etc.), so
boto3, DVC and subprocesses started by tests find them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from fleetloop.settings import S3Settings

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}


class S3Server:
    """A ThreadedMotoServer on 127.0.0.1 that can be stopped and restarted at the same port."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._server = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        if self._server is not None:
            return
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self.port = server.get_host_and_port()[1]  # the real port when started with 0
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()  # closes the listening socket: connections are refused
            self._server = None

    @contextmanager
    def down(self) -> Iterator[None]:
        """The server is unreachable inside the block and back (same port, same data) after it."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with pytest.MonkeyPatch.context() as mp:
        for k, v in FAKE_AWS_ENV.items():
            mp.setenv(k, v)
        server = S3Server()
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    if not s3_server.running:  # a previous test left it down
        s3_server.start()
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_settings(s3_server: S3Server, s3_bucket: str) -> S3Settings:
    return S3Settings(bucket=s3_bucket, endpoint_url=s3_server.endpoint_url, max_attempts=2, connect_timeout_s=2)
