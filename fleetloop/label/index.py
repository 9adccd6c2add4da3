"""The campaign index: every campaign fleetloop pushed to, open until its tasks are all synced.

One small object per campaign, ``labeling/campaigns/<name>.json``, created (create-only) by the
first push and updated by each sync: ``open`` while some task has no delivered annotation,
``complete`` once every task of the campaign has one (decided by counting tasks: Label Studio has
no "batch completed" event). ``label-sync`` with no campaign syncs every open campaign, so
annotations finished on last week's campaign after the week turned over are still delivered.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel

from fleetloop.store import keys
from fleetloop.store.objects import ObjectNotFound, Store

PREFIX = keys.CAMPAIGNS


class CampaignRecord(BaseModel):
    name: str
    state: Literal["open", "complete"] = "open"
    created_at: str
    tasks: int = 0
    synced: int = 0
    updated_at: str | None = None
    completed_at: str | None = None


def _key(name: str) -> str:
    return f"{PREFIX}{name}.json"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def register(store: Store, name: str) -> CampaignRecord:
    """Record the campaign as open (a no-op when it is already known)."""
    record = CampaignRecord(name=name, created_at=_now())
    if not store.put_if_absent(_key(name), record.model_dump_json(indent=2).encode()):
        return get(store, name)
    return record


def get(store: Store, name: str) -> CampaignRecord:
    return CampaignRecord.model_validate_json(store.get_bytes(_key(name)))


def update(store: Store, name: str, *, tasks: int, synced: int) -> CampaignRecord:
    """Record a sync's counts; the campaign is complete when every task is synced. A campaign
    that gains tasks again (a re-push) reopens; a complete campaign whose tasks were all deleted
    in Label Studio (cleanup) stays complete."""
    try:
        record = get(store, name)
    except ObjectNotFound:
        record = CampaignRecord(name=name, created_at=_now())
    complete = synced >= tasks and (tasks > 0 or record.state == "complete")
    record = record.model_copy(update={
        "tasks": tasks, "synced": synced, "updated_at": _now(),
        "state": "complete" if complete else "open",
        "completed_at": (record.completed_at or _now()) if complete else None,
    })
    store.put_bytes(_key(name), record.model_dump_json(indent=2).encode())
    return record


def campaigns(store: Store, state: Literal["open", "complete"] | None = None) -> list[CampaignRecord]:
    """Known campaigns (oldest first), optionally only those in ``state``."""
    records = [CampaignRecord.model_validate_json(store.get_bytes(k)) for k in store.list(PREFIX) if k.endswith(".json")]
    records.sort(key=lambda r: (r.created_at, r.name))
    return [r for r in records if state is None or r.state == state]
