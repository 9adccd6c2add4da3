"""The labeling steps as plain functions over the settings: what the CLI and the Prefect flows
(``label-push``, ``label-sync``) call. The entry points pass the settings in, with Label Studio
resolved (``settings.label_studio``: URL + token, and the document root when the server serves
local files); nothing here reads settings on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from fleetloop.label import index
from fleetloop.label.campaigns import check_name
from fleetloop.label.client import LabelStudioClient
from fleetloop.label.push import (
    PushReport,
    decode_selection,
    load_logs_for,
    push,
    read_selection,
    read_selection_text,
)
from fleetloop.label.sync import LabelValidator, SyncError, SyncReport, campaign_status, sync
from fleetloop.schema import DriveLogs
from fleetloop.settings import Settings
from fleetloop.store.objects import ObjectNotFound, Store, get_store


def client_for(settings: Settings) -> LabelStudioClient:
    return LabelStudioClient.from_settings(settings.label_studio)


def selection_rows(selection: Path | str, store: Store) -> list[dict[str, Any]]:
    """Rows of a selection CSV: a local file, or else a key in the store (e.g. the
    ``mining/<run>/selected.csv`` a mining run wrote)."""
    path = Path(selection)
    if path.exists():
        return read_selection(path)
    try:
        data = store.get_bytes(str(selection))
    except (ObjectNotFound, ValueError):
        return read_selection(path)  # raises "does not exist" naming the path
    where = f"{store.location}/{selection}"
    return read_selection_text(decode_selection(data, where), where)


def push_selection(
    selection: Path | str,
    campaign: str,
    settings: Settings,
    *,
    logs: DriveLogs | None = None,
    batch_size: int = 200,
    model_version: str | None = None,
    camera_stream: str | None = None,
    rows: list[dict[str, Any]] | None = None,
) -> PushReport:
    """``fleetloop label push``: the selected frames (from ``logs`` when given, else from the
    store's logs) become tasks of the campaign; frames already pushed are skipped. The campaign
    is recorded as open in the campaign index once its Label Studio project exists (a push that
    fails before leaves no campaign behind). ``camera_stream``: the judged stream whose boxes are
    the pre-annotations (the miner's ``mine.camera_stream``). ``rows``: the selection's rows when
    the caller has read them already (:func:`selection_rows`), else they are read here."""
    check_name(campaign)  # a usage error before anything is read or created
    store = get_store(settings)
    if rows is None:
        rows = selection_rows(selection, store)
    if logs is None:
        logs = load_logs_for(rows, store)
    with client_for(settings) as client:
        return push(
            rows,
            logs,
            campaign,
            client=client,
            home=settings.home,
            document_root=settings.label_studio.document_root,
            store=store,
            s3_client=getattr(store, "client", None),
            batch_size=batch_size,
            model_version=model_version or settings.label_studio.model_version,
            camera_stream=camera_stream,
            on_campaign=lambda _: index.register(store, campaign),  # only once its project exists
        )


def sync_campaign(
    campaign: str,
    settings: Settings,
    *,
    validate: LabelValidator | None = None,
    page_size: int = 100,
    shard_size: int = 5000,
) -> SyncReport:
    """``fleetloop label sync --campaign C``: deliver new and updated annotations to
    ``labels/<campaign>/`` in the store, exactly once, then record in the campaign index whether
    every task is now synced (complete)."""
    store = get_store(settings)
    with client_for(settings) as client:
        report = sync(campaign, client=client, store=store, home=settings.home, page_size=page_size,
                      shard_size=shard_size, validate=validate)
        st = campaign_status(campaign, client=client, store=store)
    index.update(store, campaign, tasks=st["tasks"], synced=st["synced"])
    return report


class OpenSync(BaseModel):
    """What one ``sync every open campaign`` did."""

    campaigns: list[str] = Field(default_factory=list)  # synced
    reports: list[SyncReport] = Field(default_factory=list)
    completed: list[str] = Field(default_factory=list)  # became complete in this sync
    failed: dict[str, str] = Field(default_factory=dict)  # campaign -> why (the others still ran)

    @property
    def delivered(self) -> int:
        return sum(r.delivered for r in self.reports)


class SyncIncomplete(RuntimeError):
    """Some open campaigns failed to sync; the others were delivered. ``out`` (when known) says
    what was delivered and which failed, and why."""

    def __init__(self, message: str, out: OpenSync | None = None) -> None:
        super().__init__(message)
        self.out = out

    @classmethod
    def of(cls, out: OpenSync) -> SyncIncomplete:
        from fleetloop.settings import redact

        return cls(redact(f"{out.delivered} annotations delivered from {len(out.reports)} open campaign(s); "
                          "campaigns that failed to sync: "
                          + "; ".join(f"{name}: {' '.join(why.split())}" for name, why in out.failed.items())), out)


def sync_open_campaigns(settings: Settings, *, validate: LabelValidator | None = None, page_size: int = 100,
                        shard_size: int = 5000) -> OpenSync:
    """Sync every open campaign of the index (oldest first). One campaign that fails (e.g. its
    project was deleted) is reported and the others go on."""
    store = get_store(settings)
    out = OpenSync()
    for record in index.campaigns(store, "open"):
        try:
            out.reports.append(sync_campaign(record.name, settings, validate=validate, page_size=page_size,
                                             shard_size=shard_size))
        except Exception as exc:  # one campaign's failure never stops the others
            out.failed[record.name] = f"{type(exc).__name__}: {exc}"
            continue
        out.campaigns.append(record.name)
        if index.get(store, record.name).state == "complete":
            out.completed.append(record.name)
    return out


def status(campaign: str, settings: Settings) -> dict[str, Any]:
    """``fleetloop label status``: tasks, annotated, synced (and a few more counts)."""
    with client_for(settings) as client:
        return campaign_status(campaign, client=client, store=get_store(settings))


def statuses(settings: Settings) -> list[dict[str, Any]]:
    """``fleetloop label status`` without a campaign: every campaign of the index (oldest first),
    its state (open / complete) and dates, and :func:`status`'s counts. A campaign Label Studio
    no longer has (its project deleted) keeps its row, with ``error`` saying so; the others go on."""
    store = get_store(settings)
    records = index.campaigns(store)
    if not records:
        return []
    rows = []
    with client_for(settings) as client:
        for r in records:
            row: dict[str, Any] = {"campaign": r.name, "state": r.state, "created_at": r.created_at,
                                   "completed_at": r.completed_at}
            try:
                row.update(campaign_status(r.name, client=client, store=store))
            except SyncError as exc:
                row["error"] = str(exc)
            rows.append(row)
    return rows
