"""The labeling steps as plain functions over the settings: what the CLI and the Prefect flows
(``label-push``, ``label-sync``) call. Each resolves Label Studio (``settings.label_studio`` URL
+ token, else the local server), the store and the home directory from the settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleetloop.label.client import LabelStudioClient
from fleetloop.label.push import PushReport, load_logs_for, push, read_selection, read_selection_text
from fleetloop.label.sync import SyncReport, campaign_status, sync
from fleetloop.settings import Settings, get_settings


def client_for(settings: Settings | None = None) -> LabelStudioClient:
    settings = settings or get_settings()
    return LabelStudioClient.from_settings(home=settings.home)


def selection_rows(selection: Path | str, settings: Settings | None = None) -> list[dict[str, Any]]:
    """Rows of a selection CSV: a local file, or else a key in the store (e.g. the
    ``mining/<run>/selected.csv`` a mining run wrote)."""
    path = Path(selection)
    if path.exists():
        return read_selection(path)
    from fleetloop.store.objects import ObjectNotFound, get_store

    store = get_store(settings or get_settings())
    try:
        text = store.get_bytes(str(selection)).decode()
    except (ObjectNotFound, ValueError):
        return read_selection(path)  # raises "does not exist" naming the path
    return read_selection_text(text, f"{store.location}/{selection}")


def push_selection(
    selection: Path | str,
    campaign: str,
    *,
    source: Path | str | None = None,
    format: str = "kitti-tracking",
    settings: Settings | None = None,
    batch_size: int = 200,
    model_version: str | None = None,
) -> PushReport:
    """``fleetloop label push``: the selected frames (logs from ``source``, else from the store)
    become tasks of the campaign; frames already pushed are skipped."""
    settings = settings or get_settings()
    rows = selection_rows(selection, settings)
    logs = load_logs_for(rows, source, format)
    with client_for(settings) as client:
        return push(
            rows,
            logs,
            campaign,
            client=client,
            home=settings.home,
            batch_size=batch_size,
            model_version=model_version or settings.label_studio.model_version,
        )


def sync_campaign(
    campaign: str, *, settings: Settings | None = None, page_size: int = 100, shard_size: int = 5000
) -> SyncReport:
    """``fleetloop label sync``: deliver new and updated annotations to ``labels/<campaign>/``
    in the store, exactly once."""
    from fleetloop.store.objects import get_store

    settings = settings or get_settings()
    with client_for(settings) as client:
        return sync(
            campaign,
            client=client,
            store=get_store(settings),
            home=settings.home,
            page_size=page_size,
            shard_size=shard_size,
        )


def status(campaign: str, *, settings: Settings | None = None) -> dict[str, Any]:
    """``fleetloop label status``: tasks, annotated, synced (and a few more counts)."""
    from fleetloop.store.objects import get_store

    settings = settings or get_settings()
    with client_for(settings) as client:
        return campaign_status(campaign, client=client, store=get_store(settings))
