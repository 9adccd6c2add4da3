"""Mining over the store: plan a run (which logs, in which shards, under which key), mine each
shard, then rank and select once.

Reruns are safe by construction: a run is keyed on its inputs (log manifests + params + budget).
Each shard's output is written atomically under the run key, so a rerun skips finished shards and
a crashed run resumes; the final outputs are written once per key.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import UTC, datetime

import pyarrow as pa
from pydantic import BaseModel, Field

from fleetloop.store import keys
from fleetloop.store.objects import table_from_bytes, table_to_bytes


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")



class MiningRun(BaseModel):
    key: str
    log_ids: list[str]
    shards: list[list[str]]
    budget: int | None
    unlisted: dict[str, str] = Field(default_factory=dict)  # manifests that are not valid log manifests


class ShardOutput(BaseModel):
    index: int
    key: str  # store key of the shard's ranked frames
    frames: int
    flags: int
    skipped: list[str] = Field(default_factory=list)
    judged_camera: str | None = None  # the camera stream whose errors count (None: no camera)
    unreadable: dict[str, str] = Field(default_factory=dict)  # logs left out: gone or damaged when read
    resumed: bool = False


class MiningSummary(BaseModel):
    run_key: str
    logs: int
    frames: int
    flags: int
    flagged_frames: int
    selected: int
    budget: int | None
    reasons: dict[str, int]  # reason -> number of frames flagged with it
    skipped: list[str]
    judged_camera: list[str] = Field(default_factory=list)  # the judged camera stream of the shards
    unreadable: dict[str, str] = Field(default_factory=dict)  # logs left out (log id -> why); a rerun retries them
    slice_boost: dict[str, float]
    ranked_key: str
    selected_key: str
    top: list[dict]  # the top selected frames (for artifacts)
    reused: bool = False  # the run's outputs already existed: nothing was recomputed
    created_at: str = Field(default_factory=_now)


def plan_mining(store, params, budget: int | None, *, since: datetime | None = None,
                log_ids: list[str] | None = None, frames_per_shard: int = 50_000,
                unlisted: dict[str, str] | None = None) -> MiningRun:
    """Which logs (arrived at or after ``since``; ``log_ids``: only these), in which shards, under
    which run key. Logs whose manifest cannot be read are left out and named (``unlisted``): those
    the listing finds (with ``log_ids``, only wanted ones) and those the caller's own listing found
    (``unlisted``: e.g. while it answered a query, whose tags a damaged manifest cannot show)."""
    from fleetloop.store.logs import list_logs

    found: dict[str, str] = {}
    manifests = list_logs(store, since=since, inclusive=True, problems=found)
    wanted = set(log_ids) if log_ids is not None else None
    if wanted is not None:
        found = {k: v for k, v in found.items() if k in wanted}  # other logs' damage is not this run's
    unlisted = {**(unlisted or {}), **found}
    if wanted is not None:
        missing = wanted - {m.log_id for m in manifests} - set(unlisted)  # a damaged one: left out, named
        if missing:
            raise LookupError(f"logs not in the store: {sorted(missing)} (ingest them first: fleetloop ingest)")
        manifests = [m for m in manifests if m.log_id in wanted]
    manifests = sorted(manifests, key=lambda m: m.log_id)
    h = hashlib.sha256()
    for m in manifests:
        h.update(f"{m.log_id}:{m.sha256}\n".encode())
    # what the ranking depends on: not the calibration's provenance (when it was fitted, on what),
    # or a rerun of a cycle that refits the same severities would mine the week again
    h.update(params.model_dump_json(exclude={"calibration"}).encode())
    h.update(f"budget={budget}".encode())
    shards: list[list[str]] = []
    current: list[str] = []
    n = 0
    for m in manifests:
        current.append(m.log_id)
        n += m.n_frames
        if n >= frames_per_shard:
            shards.append(current)
            current, n = [], 0
    if current:
        shards.append(current)
    return MiningRun(key=h.hexdigest()[:16], log_ids=[m.log_id for m in manifests], shards=shards, budget=budget,
                     unlisted=unlisted)


def _run_prefix(run_key: str) -> str:
    return f"{keys.MINING}{run_key}"


def mine_shard(store, run_key: str, index: int, log_ids: list[str], params) -> ShardOutput:
    """Mine one shard of logs; its ranked frames go to the store. Skips a finished shard (whose
    frames are still there: one deleted since, e.g. by a bucket's expiry rule, is mined again). A
    log that is gone or damaged when read is left out and named (``unreadable``); the others are
    mined, and the shard is done only without such logs (a rerun retries them)."""
    from fleetloop.mine.mining import mine
    from fleetloop.store.logs import read_logs

    key = f"{_run_prefix(run_key)}/shards/{index:05d}.parquet"
    meta_key = f"{_run_prefix(run_key)}/shards/{index:05d}.json"
    if store.exists(meta_key):
        out = ShardOutput.model_validate_json(store.get_bytes(meta_key))
        if not out.unreadable and store.exists(out.key):
            return out.model_copy(update={"resumed": True})
    unreadable: dict[str, str] = {}
    logs = read_logs(store, log_ids, unreadable)
    result = mine(logs, params)
    store.put_bytes(key, table_to_bytes(result.frames))
    out = ShardOutput(index=index, key=key, frames=result.frames.num_rows, flags=result.flags.num_rows,
                      skipped=list(result.skipped), judged_camera=result.judged_camera, unreadable=unreadable)
    store.put_bytes(meta_key, out.model_dump_json().encode())  # written last: marks the shard done
    return out


def finish_mining(store, run: MiningRun, shards: list[ShardOutput], params, top_n: int = 20) -> MiningSummary:
    """Rank all shards' frames, select under the budget, write the run's outputs once (again
    when one of them is gone: a rerun would otherwise fail on it for good)."""
    from fleetloop.mine.mining import rank, select

    prefix = _run_prefix(run.key)
    summary_key = f"{prefix}/summary.json"
    unreadable = run.unlisted | {k: v for s in shards for k, v in s.unreadable.items()}
    if store.exists(summary_key) and not unreadable:
        summary = MiningSummary.model_validate_json(store.get_bytes(summary_key))
        if not summary.unreadable and store.exists(summary.ranked_key) and store.exists(summary.selected_key):
            return summary.model_copy(update={"reused": True})
    frames = pa.concat_tables([table_from_bytes(store.get_bytes(s.key)) for s in shards]) if shards else None
    if frames is None or frames.num_rows == 0:
        why = "; ".join(f"{k}: {v}" for k, v in list(unreadable.items())[:3])
        raise LookupError("no frames to mine: " + (f"every log of this selection is unreadable ({why})" if why
                                                   else "the store holds no logs for this selection"))
    ranked = rank(frames)
    selected = select(ranked, run.budget, params) if run.budget else ranked
    ranked_key, selected_key = f"{prefix}/ranked.parquet", f"{prefix}/selected.csv"
    store.put_bytes(ranked_key, table_to_bytes(ranked))
    store.put_bytes(selected_key, frames_to_csv(selected))
    reasons: dict[str, int] = {}
    for cell in ranked.column("reasons").to_pylist():
        for r in filter(None, (cell or "").split(";")):
            name = r.split(":")[0]
            reasons[name] = reasons.get(name, 0) + 1
    skipped = sorted({s for sh in shards for s in sh.skipped})
    scores = ranked.column("score").to_numpy()
    summary = MiningSummary(
        run_key=run.key, logs=len(run.log_ids), frames=ranked.num_rows, flags=sum(s.flags for s in shards),
        flagged_frames=int((scores > 0).sum()), selected=selected.num_rows, budget=run.budget,
        reasons=dict(sorted(reasons.items(), key=lambda kv: -kv[1])), skipped=skipped,
        judged_camera=list(dict.fromkeys(s.judged_camera for s in shards if s.judged_camera)), unreadable=unreadable,
        slice_boost=dict(getattr(params, "slice_boost", {}) or {}), ranked_key=ranked_key, selected_key=selected_key,
        top=_top(selected, top_n),
    )
    store.put_bytes(summary_key, summary.model_dump_json(indent=2).encode())  # last: marks the run done
    store.put_bytes(keys.MINING_LATEST, json.dumps({"run_key": run.key, "created_at": summary.created_at}).encode())
    return summary


def _top(selected: pa.Table, n: int) -> list[dict]:
    """The first picks with their score at the time of the pick (after the diversity discount,
    so the list reads in decreasing order)."""
    t = selected.slice(0, n)
    if "selected_score" in t.column_names:
        t = t.set_column(t.column_names.index("score"), "score", t.column("selected_score"))
    return t.select(["log_id", "frame", "score", "reasons"]).to_pylist()


def frames_to_csv(frames: pa.Table) -> bytes:
    cols = ["log_id", "frame", "score", "reasons"] + [c for c in frames.column_names if c not in
                                                    ("log_id", "frame", "score", "reasons")]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    w.writerows(zip(*(frames.column(c).to_pylist() for c in cols), strict=False))
    return buf.getvalue().encode()


def mine_direct(store, params, budget: int | None, **plan_options) -> MiningSummary:
    """The whole mining step without Prefect (the reference the orchestration is measured against)."""
    run = plan_mining(store, params, budget, **plan_options)
    shards = [mine_shard(store, run.key, i, logs, params) for i, logs in enumerate(run.shards)]
    return finish_mining(store, run, shards, params)


