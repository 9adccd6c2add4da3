"""The object store and the log registry, against a local directory and a real S3 HTTP server."""

from __future__ import annotations

import pickle
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest

from fleetloop.schema import STREAMS, DriveLogs
from fleetloop.settings import S3Settings, Settings, StorageSettings
from fleetloop.store.logs import (
    ARRIVALS_PREFIX,
    LogConflictError,
    LogNotFoundError,
    content_sha256,
    get_log,
    get_manifest,
    list_logs,
    put_log,
)
from fleetloop.store.objects import LocalStore, ObjectNotFound, S3Store, StorageError, get_store, make_s3_client

pytest_plugins = ["tests.fixtures_s3"]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    s3: S3Settings = request.getfixturevalue("s3_settings")
    return S3Store(s3.bucket, "team/a", make_s3_client(s3))


def make_log(log_id: str, n_frames: int = 6, seed: int = 0) -> DriveLogs:
    """A small synthetic log with every stream populated."""
    rng = np.random.default_rng(seed)
    frames = np.arange(n_frames, dtype=np.int32)
    n_det = 2 * n_frames
    det_frames = np.repeat(frames, 2)

    def cols(schema: pa.Schema, n: int, **given) -> pa.Table:
        data = {}
        for f in schema:
            if f.name in given:
                data[f.name] = given[f.name]
            elif pa.types.is_floating(f.type):
                data[f.name] = rng.uniform(0, 50, n).astype(np.float32)
            elif pa.types.is_string(f.type):
                data[f.name] = rng.choice(["car", "pedestrian", None], n).tolist() if f.nullable else ["car"] * n
        return pa.table(data, schema=schema)

    return DriveLogs(
        frames=cols(
            STREAMS["frames"], n_frames,
            log_id=[log_id] * n_frames, frame=frames,
            timestamp_ns=(1_700_000_000_000_000_000 + frames.astype(np.int64) * 100_000_000),
        ),
        lidar_detections=cols(
            STREAMS["lidar_detections"], n_det,
            log_id=[log_id] * n_det, frame=det_frames, det_id=np.tile([0, 1], n_frames).astype(np.int32),
        ),
        camera_detections=cols(
            STREAMS["camera_detections"], n_det,
            log_id=[log_id] * n_det, frame=det_frames, det_id=np.tile([0, 1], n_frames).astype(np.int32),
        ),
        tracks=cols(
            STREAMS["tracks"], n_frames,
            log_id=[log_id] * n_frames, frame=frames, track_id=np.ones(n_frames, np.int64),
            sensor=["camera"] * n_frames, state=["confirmed"] * n_frames,
        ),
        calibration=pa.table(
            {
                "log_id": [log_id],
                "P": [list(rng.uniform(-1, 1, 12))],
                "lidar_to_cam": [list(rng.uniform(-1, 1, 12))],
                "image_width": [1242],
                "image_height": [375],
            },
            schema=STREAMS["calibration"],
        ),
    )


# ---------------------------------------------------------------- the Store interface


def test_put_if_absent_creates_once(store) -> None:
    assert store.put_if_absent("reg/versions/1.json", b"first") is True
    assert store.put_if_absent("reg/versions/1.json", b"second") is False
    assert store.get_bytes("reg/versions/1.json") == b"first"
    assert store.list("reg/") == ["reg/versions/1.json"]  # no lock or temporary files show


def test_put_if_match_is_compare_and_swap(store) -> None:
    store.put_bytes("alias/production.json", b"v1")
    data, tag = store.get_versioned("alias/production.json")
    assert data == b"v1"
    assert store.put_if_match("alias/production.json", b"v2", tag) is True
    assert store.put_if_match("alias/production.json", b"v3", tag) is False  # stale tag loses
    assert store.get_bytes("alias/production.json") == b"v2"
    assert store.put_if_match("alias/missing.json", b"x", tag) is False
    with pytest.raises(ObjectNotFound):
        store.get_versioned("alias/missing.json")
    assert store.list("alias/") == ["alias/production.json"]


def test_concurrent_create_only_and_cas_have_one_winner(store) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        created = list(pool.map(lambda i: store.put_if_absent("race/claim", str(i).encode()), range(16)))
    assert created.count(True) == 1
    store.put_bytes("race/counter", b"0")

    def bump(_: int) -> int:
        wins = 0
        for _ in range(5):
            while True:
                data, tag = store.get_versioned("race/counter")
                if store.put_if_match("race/counter", str(int(data) + 1).encode(), tag):
                    wins += 1
                    break
        return wins

    with ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(bump, range(4))) == 20
    assert store.get_bytes("race/counter") == b"20"  # no lost update


def test_bytes_roundtrip_overwrite_and_missing(store) -> None:
    store.put_bytes("a/b/c.bin", b"one")
    assert store.get_bytes("a/b/c.bin") == b"one"
    store.put_bytes("a/b/c.bin", b"two")  # replace
    assert store.get_bytes("a/b/c.bin") == b"two"
    assert store.exists("a/b/c.bin")
    assert not store.exists("a/b/nope.bin")
    with pytest.raises(ObjectNotFound, match=r"nope\.bin"):
        store.get_bytes("a/b/nope.bin")
    with pytest.raises(ObjectNotFound):
        store.get_file("a/b/nope.bin", Path("/tmp/never-written"))


def test_list_is_a_sorted_string_prefix_listing_with_start_after(store) -> None:
    keys = ["x/1.json", "x/2.json", "x/10/a.json", "xy/1.json", "y/1.json", "top.json"]
    for k in keys:
        store.put_bytes(k, k.encode())
    assert store.list("x/") == ["x/1.json", "x/10/a.json", "x/2.json"]
    assert store.list("x") == ["x/1.json", "x/10/a.json", "x/2.json", "xy/1.json"]
    assert store.list("x/1") == ["x/1.json", "x/10/a.json"]
    assert store.list() == sorted(keys)
    assert store.list("x/", start_after="x/10/a.json") == ["x/2.json"]
    assert store.list("nothing/") == []


def test_delete_is_idempotent(store) -> None:
    store.put_bytes("d/e/f.txt", b"x")
    store.delete("d/e/f.txt")
    assert not store.exists("d/e/f.txt")
    assert store.list("d/") == []
    store.delete("d/e/f.txt")  # again: no error


def test_files_roundtrip(store, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    payload = np.random.default_rng(1).bytes(300_000)
    src.write_bytes(payload)
    store.put_file("files/blob.bin", src)
    out = store.get_file("files/blob.bin", tmp_path / "deep" / "dir" / "out.bin")
    assert out.read_bytes() == payload
    assert [p.name for p in out.parent.iterdir()] == ["out.bin"]  # no temporary left behind


def test_url_for_reads_the_object(store) -> None:
    store.put_bytes("img/0001.png", b"\x89PNG fake image")
    url = store.url_for("img/0001.png", expires=120)
    if isinstance(store, LocalStore):
        assert url.startswith("file://")
        assert Path(url.removeprefix("file://")).read_bytes() == b"\x89PNG fake image"
    else:
        assert "X-Amz-Expires=120" in url
        r = httpx.get(url, timeout=5)  # a presigned GET over real HTTP, no credentials
        assert r.status_code == 200 and r.content == b"\x89PNG fake image"


@pytest.mark.parametrize("bad", ["", "/abs", "a/../b", "a//b", "dir/", "a\\b"])
def test_invalid_keys_are_rejected(store, bad: str) -> None:
    with pytest.raises(ValueError, match="invalid storage key"):
        store.put_bytes(bad, b"x")


def test_local_writes_leave_no_partial_object(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("k/v.bin", b"old")

    class Boom(Exception):
        pass

    def failing_write(f) -> None:
        f.write(b"half of the new cont")
        raise Boom

    with pytest.raises(Boom):
        store._atomic_write("k/v.bin", failing_write)
    assert store.get_bytes("k/v.bin") == b"old"
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["v.bin"]
    # a temporary left by a crash (kill -9 mid-write) is never listed as an object
    (tmp_path / "k" / ".v.bin.fltmp-abc123").write_bytes(b"junk")
    assert store.list("k/") == ["k/v.bin"]


def test_s3_prefix_isolates_stores(s3_settings: S3Settings) -> None:
    client = make_s3_client(s3_settings)
    a, b = S3Store(s3_settings.bucket, "a", client), S3Store(s3_settings.bucket, "/b/", client)
    a.put_bytes("k.txt", b"A")
    b.put_bytes("k.txt", b"B")
    assert (a.get_bytes("k.txt"), b.get_bytes("k.txt")) == (b"A", b"B")
    assert a.list() == ["k.txt"]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_settings.bucket)["Contents"]]
    assert sorted(keys) == ["a/k.txt", "b/k.txt"]


def test_get_store_from_settings(tmp_path: Path, s3_settings: S3Settings) -> None:
    local = get_store(Settings(home=tmp_path))
    assert isinstance(local, LocalStore) and local.root == (tmp_path / "store").resolve()
    s3 = get_store(Settings(home=tmp_path, storage=StorageSettings(backend="s3", s3=s3_settings)))
    assert isinstance(s3, S3Store) and s3.bucket == s3_settings.bucket
    s3.put_bytes("hello.txt", b"hi")
    assert s3.get_bytes("hello.txt") == b"hi"
    assert "secret" not in repr(s3).lower()
    # stores travel to other processes (Dask workers): pickled, they rebuild their client
    for store in (local, s3):
        copy = pickle.loads(pickle.dumps(store))
        assert type(copy) is type(store) and copy.location == store.location
    assert pickle.loads(pickle.dumps(s3)).get_bytes("hello.txt") == b"hi"
    with pytest.raises(TypeError, match="from_settings"):
        pickle.dumps(S3Store(s3_settings.bucket, "", make_s3_client(s3_settings)))


def test_missing_bucket_is_a_clear_error(s3_server) -> None:
    s3 = S3Settings(bucket="no-such-bucket-here", endpoint_url=s3_server.endpoint_url)
    store = S3Store(s3.bucket, "", make_s3_client(s3))
    with pytest.raises(StorageError, match=r"no-such-bucket-here.*does not exist"):
        store.put_bytes("k", b"x")
    store.ensure_bucket()
    store.put_bytes("k", b"x")
    store.ensure_bucket()  # again: no error
    assert store.get_bytes("k") == b"x"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dead_endpoint_fails_in_seconds_with_default_retries() -> None:
    port = _free_port()  # nobody listens there
    s3 = S3Settings(bucket="logs-bucket", endpoint_url=f"http://127.0.0.1:{port}")
    store = S3Store(s3.bucket, "", make_s3_client(s3))
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=rf"s3://logs-bucket/logs/l1/manifest.json at http://127.0.0.1:{port}"):
        store.put_bytes("logs/l1/manifest.json", b"{}")
    assert time.monotonic() - t0 < 10  # botocore's defaults would retry for much longer


@pytest.mark.parametrize("op", ["put_bytes", "get_bytes", "exists", "list", "put_file", "get_file"])
def test_dead_endpoint_gives_a_storage_error_naming_it(op: str, tmp_path: Path, s3_server) -> None:
    port = _free_port()
    s3 = S3Settings(bucket="logs-bucket", endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1)
    store = S3Store(s3.bucket, "", make_s3_client(s3))
    src = tmp_path / "f.bin"
    src.write_bytes(b"x")
    calls = {
        "put_bytes": lambda: store.put_bytes("logs/l1/manifest.json", b"{}"),
        "get_bytes": lambda: store.get_bytes("logs/l1/manifest.json"),
        "exists": lambda: store.exists("logs/l1/manifest.json"),
        "list": lambda: store.list("logs/l1/"),
        "put_file": lambda: store.put_file("logs/l1/manifest.json", src),
        "get_file": lambda: store.get_file("logs/l1/manifest.json", tmp_path / "out.bin"),
    }
    t0 = time.monotonic()
    with pytest.raises(StorageError) as err:
        calls[op]()
    elapsed = time.monotonic() - t0
    assert elapsed < 10, f"{op} took {elapsed:.1f}s to fail"
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and "logs-bucket" in msg and "logs/l1/" in msg


# ---------------------------------------------------------------- the log registry


def _assert_same_logs(a: DriveLogs, b: DriveLogs) -> None:
    for name in STREAMS:
        ta, tb = getattr(a, name), getattr(b, name)
        assert ta.schema.equals(tb.schema), name
        assert ta.equals(tb), name


def test_put_and_get_log_roundtrip(store) -> None:
    logs = make_log("drive-0001")
    m = put_log(store, logs, source="unit-test")
    assert (m.log_id, m.n_frames, m.source) == ("drive-0001", 6, "unit-test")
    assert m.streams == {name: t.num_rows for name, t in logs.tables().items()}
    assert m.arrived_at.tzinfo is not None
    assert sorted(store.list("logs/drive-0001/")) == sorted(  # streams under the content hash
        [f"logs/drive-0001/{m.sha256}/{s}.parquet" for s in STREAMS] + ["logs/drive-0001/manifest.json"]
    )
    back = get_log(store, "drive-0001")
    _assert_same_logs(back, logs)
    assert get_manifest(store, "drive-0001") == m
    with pytest.raises(LogNotFoundError, match="drive-0002"):
        get_log(store, "drive-0002")


def test_put_log_is_idempotent(store) -> None:
    logs = make_log("drive-0001")
    first = put_log(store, logs, source="a")
    # the same content, chunked differently, is the same log
    rechunked = DriveLogs(**{n: pa.concat_tables([t.slice(0, 3), t.slice(3)]) for n, t in logs.tables().items()})
    assert content_sha256(rechunked) == first.sha256
    again = put_log(store, rechunked, source="b")
    assert again == first
    assert len(store.list(ARRIVALS_PREFIX)) == 1
    assert [m.log_id for m in list_logs(store)] == ["drive-0001"]


def test_different_content_under_same_id_conflicts_unless_replace(store) -> None:
    first = put_log(store, make_log("drive-0001", seed=0), source="a")
    changed = make_log("drive-0001", seed=1)
    with pytest.raises(LogConflictError, match="drive-0001"):
        put_log(store, changed, source="b")
    assert get_manifest(store, "drive-0001") == first
    replaced = put_log(store, changed, source="b", replace=True)
    assert replaced.sha256 != first.sha256
    _assert_same_logs(get_log(store, "drive-0001"), changed)
    assert list_logs(store) == [replaced]
    assert len(store.list(ARRIVALS_PREFIX)) == 1


def test_list_logs_since(store) -> None:
    t0 = datetime(2024, 5, 6, 3, 0, tzinfo=UTC)
    ms = [
        put_log(store, make_log(f"drive-{i}"), source="s", arrived_at=t0 + timedelta(hours=i))
        for i in range(4)
    ]
    assert list_logs(store) == ms
    assert list_logs(store, since=t0 + timedelta(minutes=90)) == ms[2:]
    assert list_logs(store, since=ms[1].arrived_at) == ms[2:]  # strictly after: a cursor
    assert list_logs(store, since=t0 - timedelta(days=1)) == ms
    assert list_logs(store, since=t0 + timedelta(days=1)) == []
    naive = (t0 + timedelta(minutes=150)).replace(tzinfo=None)  # naive means UTC
    assert list_logs(store, since=naive) == ms[3:]
    # real arrival times: a log put now arrived after all of them
    now_log = put_log(store, make_log("drive-now"), source="s")
    assert list_logs(store, since=ms[-1].arrived_at) == [now_log]


def test_half_written_log_is_invisible_and_a_rerun_completes_it(store) -> None:
    logs = make_log("drive-0007")
    # an upload that died before the manifest: every table is there, the manifest is not
    import pyarrow.parquet as pq

    for name, t in logs.tables().items():
        sink = pa.BufferOutputStream()
        pq.write_table(t, sink)
        store.put_bytes(f"logs/drive-0007/{name}.parquet", sink.getvalue().to_pybytes())
    assert get_manifest(store, "drive-0007") is None
    with pytest.raises(LogNotFoundError):
        get_log(store, "drive-0007")
    assert list_logs(store) == []
    m = put_log(store, logs, source="rerun")
    assert list_logs(store) == [m]
    _assert_same_logs(get_log(store, "drive-0007"), logs)


def test_missing_index_entry_is_repaired_by_a_rerun(store) -> None:
    logs = make_log("drive-0008")
    m = put_log(store, logs, source="s")
    (entry,) = store.list(ARRIVALS_PREFIX)
    store.delete(entry)  # died between the manifest and the index entry
    assert list_logs(store) == []
    assert put_log(store, logs, source="s") == m
    assert list_logs(store) == [m]


def test_put_log_takes_exactly_one_log(store) -> None:
    both = DriveLogs.concat([make_log("a-1"), make_log("a-2")])
    with pytest.raises(ValueError, match="exactly one log"):
        put_log(store, both, source="s")
    with pytest.raises(ValueError, match="exactly one log"):
        put_log(store, DriveLogs.empty(), source="s")
    mixed = make_log("a-1")
    mixed = DriveLogs(**{**mixed.tables(), "calibration": make_log("a-2").calibration})
    with pytest.raises(ValueError, match="other logs"):
        put_log(store, mixed, source="s")
    with pytest.raises(ValueError, match="invalid log_id"):
        put_log(store, make_log("../evil"), source="s")
    assert store.list() == []


def test_s3_outage_mid_put_fails_clearly_then_rerun_completes_without_duplicates(s3_server, s3_settings) -> None:
    store = S3Store(s3_settings.bucket, "", make_s3_client(s3_settings))
    logs = [make_log(f"drive-{i}") for i in range(3)]
    put_log(store, logs[0], source="s")

    # the server goes away after two stream tables of the second log were written
    original_put = store.put_bytes
    writes = 0

    def put_then_outage(key: str, data: bytes) -> None:
        nonlocal writes
        writes += 1
        if writes == 3:
            s3_server.stop()
        original_put(key, data)

    store.put_bytes = put_then_outage  # type: ignore[method-assign]
    try:
        t0 = time.monotonic()
        with pytest.raises(StorageError, match=rf"{s3_settings.bucket}.*logs/drive-1/.*127\.0\.0\.1:{s3_server.port}"):
            put_log(store, logs[1], source="s")
        assert time.monotonic() - t0 < 10
        assert not s3_server.running
    finally:
        s3_server.start()
        del store.put_bytes

    assert [m.log_id for m in list_logs(store)] == ["drive-0"]  # the half-written log is invisible
    for log in logs:  # the rerun
        put_log(store, log, source="s")
    assert [m.log_id for m in list_logs(store)] == ["drive-0", "drive-1", "drive-2"]
    assert len(store.list(ARRIVALS_PREFIX)) == 3
    for log in logs:
        _assert_same_logs(get_log(store, log.log_ids[0]), log)
