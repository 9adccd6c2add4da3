"""``grow``: append the labels delivered since the last version as a new dataset version.

Steps, in this order, all under the repository's write lock::

    recover      finish or undo what a killed grow left (see below)
    collect      label shards in the store that no batch consumed yet -> validate -> BuiltBatch
    written      data/batches/bNNNNN/{labels,frames}-00000.parquet          (never one file per frame)
    added        dvc add data/batches/bNNNNN          -> bNNNNN.dvc (one per batch)
    pushed       dvc push bNNNNN.dvc                  -> the data is in the DVC remote
    staged       manifest.json + lineage/bNNNNN.json written, git add
    committed    git commit                           (the local commit point)
    indexed      the per-frame index cached in .git/fleetloop/ (a cache: rebuilt when stale)
    tagged       git tag -a dataset-vN                (only after the data is pushed)
    published    git push --atomic origin main dataset-vN   (when a git remote is configured)

Crash safety: a tag is created only after its data is in the DVC remote, so every tag can be
pulled. A killed grow leaves either the old version or a commit that the next grow finishes:
``recover`` discards uncommitted work (a batch folder or ``.dvc`` file with no commit is removed,
the work tree reset to HEAD: its label shards are still unconsumed, so the rerun rebuilds the
batch), tags a committed but untagged version after pushing its data again (a no-op when it is
there), and pushes tags the git remote lacks. Label shards count as consumed only through a
commit, so no labeled row is lost or taken twice.

Test hook: ``FLEETLOOP_DATASET_CRASH_AT=<step>`` makes grow SIGKILL itself right after that step
(a step name above; the crash tests kill at each of :data:`STEPS`, the points between two steps
that change state). Never set it outside tests.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field, ValidationError

from fleetloop.dataset.batches import BATCHES_DIR, INDEX_SCHEMA, batch_name, fold, frame_index, read_batch
from fleetloop.dataset.build import BuiltBatch, LabelValidator, build_batch, list_label_shards, write_batch
from fleetloop.dataset.config import DatasetConfig, DatasetError, check_dir_path
from fleetloop.dataset.dvc import BRANCH, GIT_REMOTE, Repo, repo_lock
from fleetloop.dataset.manifest import (
    LINEAGE_DIR,
    MANIFEST_FILE,
    TAG_PREFIX,
    BatchInfo,
    Lineage,
    Manifest,
    Problem,
    compute_counts,
    tag_of,
)
from fleetloop.dataset.params import GrowParams
from fleetloop.settings import redact
from fleetloop.store.objects import Store

__all__ = ["CRASH_ENV", "STEPS", "GrowResult", "grow", "open_repo", "read_manifest"]

CRASH_ENV = "FLEETLOOP_DATASET_CRASH_AT"
STEPS = ("written", "added", "pushed", "staged", "committed", "indexed", "tagged")
MAX_PROBLEMS = 200
_INDEX_DIR = Path(".git") / "fleetloop"

README = """# fleetloop dataset

Labeled frames for the perception model, one growth batch per version, versioned with git + DVC.
Written by `fleetloop dataset grow`; read a version with `fleetloop dataset checkout N --to DIR`
or `dvc import <this repo> data/batches --rev dataset-vN`. Layout and guarantees: fleetloop's
docs/dataset.md.
"""


def _checkpoint(step: str) -> None:
    """The crash-test hook: die here, at once, if asked to."""
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


class GrowResult(BaseModel):
    """What a grow did. ``version`` is the dataset's version afterwards (0: empty)."""

    version: int
    tag: str | None
    created: bool  # this call made a new version
    nothing_new: bool
    batch: int | None = None
    frames: int = 0  # in the version
    objects: int = 0
    frames_added: int = 0  # frame rows in the new batch (labeled + empty + unusable)
    objects_added: int = 0
    negatives: int = 0
    removed: int = 0
    superseded: int = 0
    deliveries: int = 0  # annotation revisions read from the new shards
    label_shards: list[str] = Field(default_factory=list)
    campaigns: list[str] = Field(default_factory=list)
    invalid: int = 0  # annotation revisions left out by the labels suite
    stale: int = 0  # deliveries older than what the dataset holds
    missing_images: int = 0
    problems: list[Problem] = Field(default_factory=list)  # the first MAX_PROBLEMS
    recovered: list[str] = Field(default_factory=list)  # what this call finished or undid first
    step_seconds: dict[str, float] = Field(default_factory=dict)  # time of each step (recover, collect, written, …)
    warnings: list[str] = Field(default_factory=list)
    seconds: float = 0.0

    @property
    def message(self) -> str:
        if self.created:
            return f"{self.tag}: +{self.frames_added:,} frames, +{self.objects_added:,} objects " \
                   f"({self.frames:,} frames, {self.objects:,} objects in all)"
        return f"nothing new ({self.tag or 'no version yet'})"


# ---------------------------------------------------------------------------------------- reading


def read_manifest(repo: Repo, rev: str = "HEAD") -> Manifest | None:
    """The manifest at ``rev`` (None before the first version). :class:`DatasetError` naming the
    version and the file when it is not a valid manifest."""
    data = repo.show(rev, MANIFEST_FILE)
    if not data:
        return None
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        raise DatasetError(f"{_rev_name(rev, data)}'s {MANIFEST_FILE} in {repo.root} is invalid: "
                           f"{_problems(exc)}") from None


def misplaced_tag(where: str | Path, tag: str, found: int | None) -> DatasetError:
    """The error for a tag ``dataset-vN`` at a commit that does not hold version N (made or moved
    by hand): what it holds, and the repair."""
    holds = f"version {found}'s manifest" if found else "no manifest"
    return DatasetError(f"the tag {tag} in {redact(str(where))} points at a commit that holds {holds}, not version "
                        f"{tag.removeprefix(TAG_PREFIX)}'s (a tag made or moved by hand?): delete it (`git tag -d {tag}` "
                        "there, and on the git remote if it was pushed); grow re-creates the tag of a version it made, "
                        "at that version's commit")


def _rev_name(rev: str, data: bytes) -> str:
    """``dataset-vN`` for a tag, else ``dataset-vN (rev)`` when the file still says its version."""
    if rev.removeprefix("refs/tags/").startswith(TAG_PREFIX):
        return rev.removeprefix("refs/tags/")
    try:
        version = json.loads(data).get("version")
    except (ValueError, AttributeError):
        version = None
    return f"{tag_of(version)} ({rev})" if isinstance(version, int) else rev


def _problems(exc: ValidationError, most: int = 3) -> str:
    errors = exc.errors()
    out = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {'missing' if e['type'] == 'missing' else e['msg']}"
                    for e in errors[:most])
    return out + (f" (+{len(errors) - most} more)" if len(errors) > most else "")


def _index_paths(repo: Repo) -> tuple[Path, Path]:
    d = repo.root / _INDEX_DIR
    return d / "index.parquet", d / "index.json"


def _save_index(repo: Repo, index: pa.Table, version: int, commit: str) -> None:
    data_path, meta_path = _index_paths(repo)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = data_path.with_suffix(".tmp")
    pq.write_table(index, tmp)
    os.replace(tmp, data_path)
    meta_path.write_text(json.dumps({"version": version, "commit": commit}))


def _load_index(repo: Repo, manifest: Manifest | None, head: str | None) -> pa.Table:
    """The folded per-frame index of HEAD's version: the cached one when it belongs to HEAD, else
    rebuilt from the batch folders (pulling the ones this clone lacks)."""
    if manifest is None:
        return INDEX_SCHEMA.empty_table()
    data_path, meta_path = _index_paths(repo)
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("commit") == head and meta.get("version") == manifest.version:
            return pq.read_table(data_path).cast(INDEX_SCHEMA)
    except (OSError, ValueError, pa.ArrowException):
        pass
    missing = [b.path + ".dvc" for b in manifest.batches if not (repo.root / b.path).is_dir()]
    if missing:
        repo.pull(missing)
    parts = []
    for b in manifest.batches:
        frames, labels = read_batch(repo.root / b.path, images=False)
        n = pa.array([b.batch] * frames.num_rows, pa.int32())
        m = pa.array([b.batch] * labels.num_rows, pa.int32())
        parts.append(frame_index(frames.append_column(pa.field("batch", pa.int32(), nullable=False), n),
                                 labels.append_column(pa.field("batch", pa.int32(), nullable=False), m)))
    index = fold(pa.concat_tables(parts)) if parts else INDEX_SCHEMA.empty_table()
    if head is not None:
        _save_index(repo, index, manifest.version, head)
    return index


# ---------------------------------------------------------------------------------------- recovery


def open_repo(config: DatasetConfig, recovered: list[str] | None = None) -> Repo:
    """The working repository, created (or cloned from the git remote) when missing, with any
    leftover of a killed grow finished or undone. Call under :func:`repo_lock`."""
    notes = recovered if recovered is not None else []
    root = Path(config.repo_dir)
    check_dir_path(root, "the dataset repository")
    repo = Repo(root, config)
    for leftover in root.parent.glob(f".{root.name}.init-*"):
        Repo.discard(leftover)
    if config.git_remote:
        Repo.ensure_bare(config.git_remote, config)
    if not repo.exists():
        if root.exists() and any(root.iterdir()):
            raise DatasetError(f"{root} exists and is not a dataset repository (no .git and .dvc): "
                               "move it away or point the dataset config elsewhere")
        if root.exists():
            root.rmdir()
        remote_main = None
        if config.git_remote:
            probe = Repo(root.parent, config)
            out = probe.git("ls-remote", config.git_remote, f"refs/heads/{BRANCH}", cwd=root.parent).stdout
            remote_main = out.split()[0] if out.strip() else None
        if remote_main:
            tmp = root.parent / f".{root.name}.init-{os.getpid()}"
            Repo.clone(config.git_remote, tmp, config)  # type: ignore[arg-type]
            os.rename(tmp, root)
            repo = Repo(root, config)
            repo._ensure_identity()
            notes.append(f"cloned the dataset repository from {redact(config.git_remote or '')}")
        else:
            repo = Repo.create(root, config, README)
    else:
        _check_branch(repo)
        _undo_uncommitted(repo, notes)
    if config.git_remote:
        repo.configure_git_remote(config.git_remote)
        _catch_up(repo, notes)
    _check_dvc_remote(repo)
    _finish_pending(repo, notes)
    _check_newer_tags(repo)
    return repo


def _check_newer_tags(repo: Repo) -> None:
    """Refuse a tag ``dataset-vN`` beyond the newest version ``main`` holds (made by hand): the
    next version's tag would fail after its commit."""
    manifest = read_manifest(repo)
    version = manifest.version if manifest else 0
    for name in sorted(repo.tags(TAG_PREFIX)):
        n = name.removeprefix(TAG_PREFIX)
        if n.isdigit() and int(n) > version:
            found = read_manifest(repo, f"refs/tags/{name}")
            raise misplaced_tag(repo.root, name, found.version if found else None)


def _check_dvc_remote(repo: Repo) -> None:
    """Refuse to grow a dataset whose versions were pushed to another DVC remote than the config
    names: switching would leave the older versions' data in the old remote only (a tag whose data
    is in no single remote). Before the first version there is nothing to strand: grow points the
    remote at the config's and commits that with the first version (after its push succeeded).
    The same remote reached through another endpoint is this clone's ``.dvc/config.local`` only."""
    if read_manifest(repo) is None:
        return
    have, want = repo.dvc_remote_url(), repo.config.resolved_remote_url()
    if have != want:
        raise DatasetError(
            f"the dataset in {repo.root} keeps its versions' data in the DVC remote {have}, but the config names "
            f"{want}: grow does not switch DVC remotes (the older versions would stay in {have} only). Set the "
            f"config back to {have} (FLEETLOOP_DATASET__DVC_REMOTE_URL or the storage backend), or move the data: "
            f"copy {have} to {want}, then `dvc remote modify storage url {want}` and `git commit -am` in "
            f"{repo.root} (docs/dataset.md, \"Moving the DVC remote\")")
    repo.configure_dvc_remote(local=True)


def _check_branch(repo: Repo) -> None:
    """Refuse a working repository whose HEAD was moved off ``main`` by hand (a tag or another
    branch checked out): grow would commit there, take again the shards ``main`` consumed and fail
    to tag (or tag a commit ``main`` does not hold), after resetting the work tree and removing the
    batch folders that commit does not list. Checked before anything is changed."""
    branch = repo.branch()
    if branch == BRANCH:
        return
    head = repo.head()
    where = f"it is on branch {branch}" if branch else f"HEAD is detached at {head[:10] if head else '?'}"
    raise DatasetError(f"the dataset repository {repo.root} is not on branch {BRANCH} ({where}): grow commits on "
                       f"{BRANCH} only; run `git checkout {BRANCH}` there (keep any commit of your own on a branch "
                       "first) and grow again")


def _undo_uncommitted(repo: Repo, notes: list[str]) -> None:
    removed = repo.remove_stale_git_locks()
    if removed:
        notes.append(f"removed stale git locks {removed}")
    changed, _untracked = repo.changes()  # untracked files are left alone (git reset keeps them)
    if changed:
        repo.reset_hard()
        shown = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
        notes.append(f"reset uncommitted changes to {shown} (git reset --hard: a killed grow's or a hand edit)")
    manifest = read_manifest(repo)
    known = {Path(b.path).name for b in manifest.batches} if manifest else set()
    base = repo.root / BATCHES_DIR
    if base.is_dir():
        for entry in sorted(base.iterdir()):
            if entry.name == ".gitignore":
                continue
            name = entry.name.removesuffix(".dvc")
            if name not in known:
                if entry.is_dir():
                    Repo.discard(entry)
                else:
                    entry.unlink()
                notes.append(f"removed uncommitted {BATCHES_DIR}/{entry.name}")


def _catch_up(repo: Repo, notes: list[str]) -> None:
    """Fast-forward to the git remote when another machine grew the dataset; refuse divergence."""
    head = repo.head()
    remote_main = repo.remote_refs().get(f"refs/heads/{BRANCH}")
    if not remote_main or remote_main == head:
        return
    if not repo.has_commit(remote_main):
        repo.fetch()
    if head and repo.is_ancestor(remote_main, head):
        return  # we are ahead: the next publish pushes
    if head and repo.is_ancestor(head, remote_main):
        repo.fast_forward(remote_main)
        notes.append(f"fast-forwarded to {GIT_REMOTE}/{BRANCH} ({remote_main[:10]})")
        return
    raise DatasetError(f"the dataset repository {repo.root} and its git remote {redact(repo.config.git_remote or '')} have "
                       f"diverged (local {head and head[:10]}, remote {remote_main[:10]}): resolve by hand")


def _finish_pending(repo: Repo, notes: list[str]) -> None:
    """Tag a committed but untagged version (after pushing its data), publish what the git remote lacks."""
    manifest = read_manifest(repo)
    if manifest is None:
        return
    head = repo.head()
    tags = repo.tags(TAG_PREFIX)
    missing = [h.version for h in manifest.history if h.version < manifest.version and tag_of(h.version) not in tags]
    if missing:
        _retag(repo, manifest, missing, notes)
    tag = tag_of(manifest.version)
    if tag not in tags:
        last = manifest.batches[-1]
        repo.push([last.path + ".dvc"])  # verify: uploads whatever the remote lacks, fails if it cannot
        repo.tag(tag, _tag_message(manifest))
        notes.append(f"tagged {tag} after pushing its data to the DVC remote")
    tags = repo.tags(TAG_PREFIX)
    if repo.config.git_remote:
        remote = repo.remote_refs()
        refs = [f"refs/tags/{t}" for t, sha in sorted(tags.items()) if remote.get(f"refs/tags/{t}") != sha]
        if refs or remote.get(f"refs/heads/{BRANCH}") != head:
            repo.publish([f"refs/heads/{BRANCH}", *refs])
            if refs:
                notes.append(f"pushed {', '.join(r.removeprefix('refs/tags/') for r in refs)} to {GIT_REMOTE}")


def _retag(repo: Repo, manifest: Manifest, versions: list[int], notes: list[str]) -> None:
    """Re-create the tags of older versions that were deleted, at the commit that made each version
    (found by its commit message and checked against its manifest), after pushing its batch again."""
    commits: dict[int, str] = {}
    for line in repo.git("log", "--format=%H %s", "HEAD").stdout.splitlines():
        sha, _, subject = line.partition(" ")
        head, sep, _ = subject.partition(":")
        if sep and head.startswith(TAG_PREFIX) and head.removeprefix(TAG_PREFIX).isdigit():
            commits.setdefault(int(head.removeprefix(TAG_PREFIX)), sha)
    lost = []
    for v in versions:
        at = commits.get(v)
        m = read_manifest(repo, at) if at else None
        if at is None or m is None or m.version != v:
            lost.append(tag_of(v))
            continue
        repo.push([b.path + ".dvc" for b in manifest.batches if b.version == v])
        repo.tag(tag_of(v), _tag_message(m), rev=at)
        notes.append(f"re-created the missing tag {tag_of(v)} at {at[:10]} after pushing its data to the DVC remote")
    if lost:
        notes.append(f"missing tags {', '.join(lost)}: no commit of theirs found, not re-created")


def _tag_message(m: Manifest) -> str:
    return f"dataset version {m.version}: {m.frames} frames, {m.objects} objects, {len(m.batches)} batches"


# ---------------------------------------------------------------------------------------- grow


def grow(
    store: Store,
    config: DatasetConfig,
    params: GrowParams,
    *,
    validate: LabelValidator,
    now: datetime | None = None,
) -> GrowResult:
    """Append the label shards no batch consumed yet as the next version (see the module doc).

    ``validate`` is the labels suite (``fleetloop.ingest.validation.validate_labels``; passed in
    because the loop's steps do not import each other). Nothing new, or nothing usable in the new
    shards, makes no version. Raises :class:`DatasetError` when git or DVC fails.
    """
    t0 = time.perf_counter()
    recovered: list[str] = []
    timings: dict[str, float] = {}
    last = [t0]

    def mark(step: str) -> None:
        now_ = time.perf_counter()
        timings[step] = round(now_ - last[0], 3)
        last[0] = now_
        _checkpoint(step)

    with repo_lock(config):
        repo = open_repo(config, recovered)
        mark("recover")
        head = repo.head()
        manifest = read_manifest(repo)
        version = manifest.version if manifest else 0
        result = GrowResult(version=version, tag=tag_of(version) if version else None, created=False,
                            nothing_new=True, recovered=recovered,
                            frames=manifest.frames if manifest else 0, objects=manifest.objects if manifest else 0)
        consumed = manifest.consumed_shards() if manifest else set()
        new_keys = [k for k in list_label_shards(store) if k not in consumed]
        if not new_keys:
            result.seconds, result.step_seconds = round(time.perf_counter() - t0, 3), dict(timings)
            return result
        ratios = dict(manifest.split_ratios) if manifest else dict(params.splits)
        if manifest and ratios != dict(params.splits):
            result.warnings.append(f"params ask for split ratios {dict(params.splits)}; the dataset keeps its own "
                                   f"{ratios} (changing them would move logs between splits)")
        index = _load_index(repo, manifest, head)
        n = version + 1
        built = build_batch(store, new_keys, index, batch=n, ratios=ratios, with_images=params.with_images,
                            validate=validate)
        mark("collect")
        _report(result, built, new_keys)
        if built.frames.num_rows == 0:
            result.seconds, result.step_seconds = round(time.perf_counter() - t0, 3), dict(timings)
            return result

        rel = f"{BATCHES_DIR}/{batch_name(n)}"
        files = write_batch(repo.root / rel, built, params.shard_rows)
        mark("written")
        repo.add(rel)
        mark("added")
        staged = [rel + ".dvc", f"{BATCHES_DIR}/.gitignore"]
        if manifest is None and repo.configure_dvc_remote():  # no version yet: committed with the first one
            staged.append(".dvc/config")
            result.recovered.append(f"pointed the DVC remote at {config.resolved_remote_url()}")
        repo.push([rel + ".dvc"])
        mark("pushed")

        created_at = (now or datetime.now(UTC)).astimezone(UTC)
        new_index = fold(pa.concat_tables([index, built.index]))
        counts = compute_counts(new_index, params.rare_share)
        info = BatchInfo(
            batch=n, path=rel, version=n, created_at=created_at, label_shards=new_keys, campaigns=built.campaigns,
            frames=built.frames.num_rows, objects=built.labels.num_rows, negatives=built.negatives,
            removed=built.removed, superseded=built.superseded, files=files,
        )
        new = Manifest(version=n, tag=tag_of(n), created_at=created_at, split_ratios=ratios,
                       rare_share=params.rare_share, batches=[*(manifest.batches if manifest else []), info],
                       history=list(manifest.history) if manifest else [], **counts)
        new.history.append(new.info())
        lineage = Lineage(
            batch=n, version=n, created_at=created_at, label_shards=built.shard_deliveries, campaigns=built.campaigns,
            deliveries=built.deliveries, frames=info.frames, objects=info.objects, negatives=info.negatives,
            removed=info.removed, superseded=info.superseded, split_ratios=ratios, with_images=params.with_images,
            problems=built.problems[:MAX_PROBLEMS * 5], problems_total=_kinds(built.problems),
        )
        (repo.root / MANIFEST_FILE).write_text(new.model_dump_json(indent=1) + "\n")
        lineage_rel = f"{LINEAGE_DIR}/{batch_name(n)}.json"
        (repo.root / LINEAGE_DIR).mkdir(exist_ok=True)
        (repo.root / lineage_rel).write_text(lineage.model_dump_json(indent=1) + "\n")
        repo.stage([*staged, MANIFEST_FILE, lineage_rel])
        mark("staged")
        commit = repo.commit(f"{tag_of(n)}: +{info.frames} frames from {', '.join(built.campaigns)}")
        mark("committed")
        _save_index(repo, new_index, n, commit)
        mark("indexed")
        repo.tag(tag_of(n), _tag_message(new))
        mark("tagged")
        if config.git_remote:
            repo.publish([f"refs/heads/{BRANCH}", f"refs/tags/{tag_of(n)}"])
        mark("published")

        result.version, result.tag, result.created, result.nothing_new, result.batch = n, tag_of(n), True, False, n
        result.frames, result.objects = new.frames, new.objects
        result.frames_added, result.objects_added = info.frames, info.objects
        result.negatives, result.removed, result.superseded = info.negatives, info.removed, info.superseded
    result.seconds, result.step_seconds = round(time.perf_counter() - t0, 3), dict(timings)
    return result


def _kinds(problems: list[Problem]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in problems:
        out[p.kind] = out.get(p.kind, 0) + 1
    return out


def _report(result: GrowResult, built: BuiltBatch, keys: list[str]) -> None:
    kinds = _kinds(built.problems)
    result.label_shards = keys
    result.campaigns = built.campaigns
    result.deliveries = built.deliveries
    result.invalid = kinds.get("invalid_labels", 0)
    result.stale = kinds.get("stale", 0)
    result.missing_images = kinds.get("missing_image", 0)
    result.problems = built.problems[:MAX_PROBLEMS]
