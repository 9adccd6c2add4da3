"""Concurrent writers and kills against the log registry (issue 12, defects 1, 2 and 8), on a
local directory and on a real S3-compatible HTTP server (moto), where separate processes stand
for separate machines sharing a bucket.

- two writers of one log id, forced to interleave (both check before either writes): exactly
  one stores it, the other reports a conflict; what is stored matches its manifest;
- two real ``fleetloop ingest`` processes of the same 60 log ids with different content;
- a stream changed behind the registry's back is refused on read, naming the log;
- a kill at any write of ``put_log`` leaves the log listed and readable, or not stored at all;
- two real ``fleetloop mine --out same.csv`` processes;
- three real ``fleetloop retrain`` processes on one training workspace (the weekly cycle and an
  engineer's on-demand retrain overlapping).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fleetloop.ingest.importers.parquet import write_parquet_log
from fleetloop.settings import S3Settings
from fleetloop.store.logs import ARRIVALS_PREFIX, content_sha256, get_log, get_manifest, list_logs, put_log
from fleetloop.store.objects import LocalStore, S3Store, Store, make_s3_client
from tests.factory_logs import make_log

pytest_plugins = ["tests.fixtures_s3"]

ROOT = Path(__file__).resolve().parents[2]
FLEETLOOP = [sys.executable, "-m", "fleetloop"]


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict:
    """A store, and the environment that points a ``fleetloop`` process at the same store."""
    home = tmp_path / "home"
    if request.param == "local":
        return {"store": lambda prefix="": LocalStore(home / ("store" + (f"-{prefix}" if prefix else ""))),
                "env": {"FLEETLOOP_HOME": str(home), "FLEETLOOP_STORAGE__BACKEND": "local"}}
    s3: S3Settings = request.getfixturevalue("s3_settings")
    return {"store": lambda prefix="": S3Store(s3.bucket, prefix, make_s3_client(s3)),
            "env": {"FLEETLOOP_HOME": str(home), "FLEETLOOP_STORAGE__BACKEND": "s3",
                    "FLEETLOOP_STORAGE__S3__BUCKET": s3.bucket,
                    "FLEETLOOP_STORAGE__S3__ENDPOINT_URL": str(s3.endpoint_url)}}


# --------------------------------------------------------------------------- interleaved writers


class _BothCheckFirst(Store):
    """A store whose first read of a manifest, per thread, waits until both threads have read
    theirs: both writers see "no log yet" before either writes (the race, made certain)."""

    def __init__(self, inner: Store) -> None:
        self.inner, self.location = inner, inner.location
        self.barrier = threading.Barrier(2, timeout=30)
        self.local = threading.local()

    def _after_manifest_read(self, key: str) -> None:
        if key.endswith("manifest.json") and not getattr(self.local, "waited", False):
            self.local.waited = True
            self.barrier.wait()

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.inner.get_bytes(key)
        finally:
            self._after_manifest_read(key)

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        try:
            return self.inner.get_versioned(key)
        finally:
            self._after_manifest_read(key)

    def put_bytes(self, key, data): return self.inner.put_bytes(key, data)
    def put_file(self, key, path): return self.inner.put_file(key, path)
    def get_file(self, key, path): return self.inner.get_file(key, path)
    def exists(self, key): return self.inner.exists(key)
    def list(self, prefix="", *, start_after=None): return self.inner.list(prefix, start_after=start_after)
    def delete(self, key): return self.inner.delete(key)
    def url_for(self, key, expires=3600): return self.inner.url_for(key, expires)
    def put_if_absent(self, key, data): return self.inner.put_if_absent(key, data)
    def put_if_match(self, key, data, etag): return self.inner.put_if_match(key, data, etag)


def _race(store: Store, logs: list) -> tuple[list, list[BaseException]]:
    results, errors = [], []

    def put(i: int, one) -> None:
        try:
            results.append(put_log(store, one, source=f"writer-{i}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(i, one)) for i, one in enumerate(logs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results, errors


def test_interleaved_writers_of_one_log_id_one_stores_it_the_other_conflicts(backend: dict) -> None:
    store = backend["store"]()
    a, b = make_log("drive-1", seed=1), make_log("drive-1", seed=2)
    results, errors = _race(_BothCheckFirst(store), [a, b])
    assert len(results) == 1, f"both writers stored drive-1 (one silently replaced the other): {results}"
    (error,) = errors
    assert "drive-1" in str(error) and "already exists" in str(error)  # the loser is told
    (winner,) = results
    stored = get_log(store, "drive-1")  # verifies the hash
    assert content_sha256(stored) == winner.sha256 == get_manifest(store, "drive-1").sha256
    assert winner.sha256 in (content_sha256(a), content_sha256(b))
    assert list_logs(store) == [winner]
    loser_sha = ({content_sha256(a), content_sha256(b)} - {winner.sha256}).pop()
    assert not [k for k in store.list("logs/drive-1/") if loser_sha in k]  # the loser cleaned up after itself
    assert len(store.list(ARRIVALS_PREFIX)) == 1


def test_interleaved_writers_of_the_same_content_both_succeed_and_store_it_once(backend: dict) -> None:
    store = backend["store"]()
    results, errors = _race(_BothCheckFirst(store), [make_log("drive-2"), make_log("drive-2")])
    assert errors == [] and len(results) == 2 and results[0] == results[1]
    assert list_logs(store) == [results[0]]
    assert len(store.list(ARRIVALS_PREFIX)) == 1
    get_log(store, "drive-2")


# --------------------------------------------------------------------------- hash verified on read


def test_a_stream_changed_behind_the_registry_is_refused_on_read_naming_the_log(backend: dict) -> None:
    store = backend["store"]()
    put_log(store, make_log("drive-3", seed=3), source="s")
    other = backend["store"]("elsewhere")
    put_log(other, make_log("drive-3", seed=4), source="s")
    (key,) = [k for k in store.list("logs/drive-3/") if k.endswith("/tracks.parquet")]
    (foreign,) = [k for k in other.list("logs/drive-3/") if k.endswith("/tracks.parquet")]
    store.put_bytes(key, other.get_bytes(foreign))  # a valid table, but not this log's
    with pytest.raises(RuntimeError, match=r"drive-3.*(corrupt|sha256|hash)"):
        get_log(store, "drive-3")


# --------------------------------------------------------------------------- a kill at any write


class _Killed(BaseException):
    """The process died here (nothing after this point runs)."""


class _DiesAtWrite(_BothCheckFirst):
    """A store that dies at its ``n``-th write (put, create, swap or delete)."""

    def __init__(self, inner: Store, n: int) -> None:
        super().__init__(inner)
        self.n, self.writes = n, 0

    def _write(self) -> None:
        self.writes += 1
        if self.writes == self.n:
            raise _Killed

    def _after_manifest_read(self, key: str) -> None:  # no barrier: one writer
        pass

    def put_bytes(self, key, data):
        self._write()
        return self.inner.put_bytes(key, data)

    def put_if_absent(self, key, data):
        self._write()
        return self.inner.put_if_absent(key, data)

    def put_if_match(self, key, data, etag):
        self._write()
        return self.inner.put_if_match(key, data, etag)

    def delete(self, key):
        self._write()
        return self.inner.delete(key)


def test_a_kill_at_any_write_leaves_the_log_listed_and_readable_or_not_stored(backend: dict) -> None:
    """Never "stored but invisible": for each write of put_log, die there, then look."""
    logs = make_log("drive-4")
    for n in range(1, 12):
        store = backend["store"](f"kill-{n}")
        dying = _DiesAtWrite(store, n)
        try:
            put_log(dying, logs, source="s")
        except _Killed:
            pass
        else:
            assert dying.writes < n  # put_log finished before the n-th write: every point was tried
            break
        manifest = get_manifest(store, "drive-4")
        listed = list_logs(store)
        if manifest is None:
            assert listed == [], f"killed at write {n}: listed but not stored"
        else:
            assert listed == [manifest], f"killed at write {n}: stored but not listed"
            get_log(store, "drive-4")
        m = put_log(store, logs, source="s")  # a rerun completes (or finds) the log
        assert list_logs(store) == [m]
    else:
        pytest.fail("put_log made more than 10 writes")


# --------------------------------------------------------------------------- real processes


def _run_two(cmds: list[list[str]], env: dict, cwd: Path) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen(c, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    out = []
    for p, c in zip(procs, cmds, strict=True):
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(c, p.returncode, stdout, stderr))
    return out


N_LOGS = 60


def test_two_ingest_processes_of_the_same_ids_with_different_content(backend: dict, tmp_path: Path) -> None:
    """Every log ends up stored once, whole, from one source; the other process reports it as a
    conflict (exit 1); nothing is silently replaced."""
    ids = [f"log-{i:03d}" for i in range(N_LOGS)]
    sources = {}
    for name, seed in (("a", 100), ("b", 200)):
        sources[name] = tmp_path / name
        for i, log_id in enumerate(ids):
            write_parquet_log(make_log(log_id, n_frames=5, seed=seed + i), sources[name])
    env = {**os.environ, **backend["env"]}
    runs = _run_two([[*FLEETLOOP, "ingest", str(sources[n]), "--format", "parquet"] for n in ("a", "b")], env, ROOT)

    stored = {}
    store = backend["store"]()
    for log_id in ids:
        m = get_manifest(store, log_id)
        assert m is not None, f"{log_id} not stored"
        logs = get_log(store, log_id)  # hash verified on read
        assert content_sha256(logs) == m.sha256, f"{log_id}: the manifest does not match the streams"
        stored[log_id] = m
    assert sorted(m.log_id for m in list_logs(store)) == ids

    new = [int(re.search(r"(\d+) new", r.stdout).group(1)) for r in runs]
    conflicts = [set(re.findall(r"not stored (log-\d+)", r.stdout)) for r in runs]
    assert sum(new) == N_LOGS, [r.stdout[-2000:] for r in runs]  # each log stored once: none replaced
    assert conflicts[0] | conflicts[1] == set(ids) and not conflicts[0] & conflicts[1]
    for r, lost in zip(runs, conflicts, strict=True):
        assert r.returncode == (1 if lost else 0), r.stdout + r.stderr
    by_source = {m.source.split(":", 1)[1] for m in stored.values()}
    assert by_source <= {str(sources["a"]), str(sources["b"])}


def test_two_mine_processes_writing_one_out_never_mix_rows(tmp_path: Path) -> None:
    """Two ``fleetloop mine --out same.csv`` at once, twice: the file is always exactly
    one run's output, and both exit 0."""
    subprocess.run([*FLEETLOOP, "sample", str(tmp_path / "s1"), "--logs", "2", "--frames", "40", "--seed", "1"],
                   check=True, cwd=ROOT, capture_output=True)
    subprocess.run([*FLEETLOOP, "sample", str(tmp_path / "s2"), "--logs", "3", "--frames", "60", "--seed", "2"],
                   check=True, cwd=ROOT, capture_output=True)
    cmd = [*FLEETLOOP, "mine", "--format", "parquet", "--no-validate", "-q"]
    expected = set()
    for s in ("s1", "s2"):
        subprocess.run([*cmd, str(tmp_path / s), "--out", str(tmp_path / f"{s}.csv")], check=True, cwd=ROOT)
        expected.add((tmp_path / f"{s}.csv").read_bytes())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "same.csv"
    for _ in range(2):
        runs = _run_two([[*cmd, str(tmp_path / s), "--out", str(out)] for s in ("s1", "s2")], dict(os.environ), ROOT)
        assert [r.returncode for r in runs] == [0, 0], "\n".join(r.stdout + r.stderr for r in runs)
        assert out.read_bytes() in expected
        assert [p.name for p in out_dir.iterdir()] == ["same.csv"]


def test_three_retrains_at_once_train_once_and_all_report_that_model(tmp_path: Path) -> None:
    """Before the workspace lock the second ``dvc init`` failed with no output; now the others wait
    for the first, find its model registered for this dataset version and these params, and
    report it (exit 0: already production)."""
    import json

    from tests.production.world import build, pipeline_params

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("FLEETLOOP_")},
           "FLEETLOOP_HOME": str(tmp_path / "home"), "FLEETLOOP_STORAGE__BACKEND": "local",
           "FLEETLOOP_PARAMS": str(pipeline_params(tmp_path / "pipeline"))}
    build(env, tmp_path / "world")  # dataset-v1 from a small simulated seed set
    procs = [subprocess.Popen([*FLEETLOOP, "retrain", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e[-2000:] for _, e in outs]
    docs = [json.loads(o) for o, _ in outs]
    assert {d["model_version"] for d in docs} == {1}
    assert all(next(iter(d)) == "ok" and d["ok"] is True for d in docs)  # exit 0: ok, the document's first key
    assert sorted(d["reused"] for d in docs) == [False, True, True]
    assert sorted(d["action"] for d in docs) == ["noop", "noop", "promote"]
    listed = subprocess.run([*FLEETLOOP, "registry", "list", "--json"], env=env, capture_output=True, text=True, check=True)
    assert [v["version"] for v in json.loads(listed.stdout)] == [1]

    # a version the dataset does not have is named as such, before anything runs
    missing = subprocess.run([*FLEETLOOP, "retrain", "--dataset", "5", "--json"], env=env, capture_output=True, text=True)
    assert missing.returncode == 2
    assert json.loads(missing.stdout)["error"] == "no dataset version 5 (dataset-v5): it has versions 1"
    missing = subprocess.run([*FLEETLOOP, "retrain", "--dataset", "5"], env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "training on" not in missing.stderr, missing.stderr  # no promise of work first
    # and a DVC command that fails is quoted with DVC's own error, not "no output"
    from fleetloop.dataset.config import DatasetError, dataset_config
    from fleetloop.dataset.dvc import Repo
    from tests.production.world import settings_from

    workspace = Repo(tmp_path / "home" / "train", dataset_config(settings_from(env)))
    with pytest.raises(DatasetError, match="unknown Git revision 'dataset-v9'"):
        workspace.dvc("update", "--rev", "dataset-v9", "data/dataset.dvc")
