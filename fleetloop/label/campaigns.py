"""Labeling campaigns: one Label Studio project each, created on demand and found again by name.

The project's labeling config (``label_config.xml``) draws 2D boxes over fleetloop's class
taxonomy and offers a per-task "frame is unusable" choice; the config is checked against
:data:`fleetloop.schema.CLASSES` so the two cannot drift apart.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from fleetloop.label.client import LabelStudioClient, LabelStudioError
from fleetloop.schema import CLASSES

#: names of the labeling config's controls (the annotation results refer to them)
BOX_CONTROL, IMAGE_OBJECT, STATUS_CONTROL = "box", "image", "frame_status"
UNUSABLE = "frame is unusable"
_MARK = "fleetloop campaign"
#: Label Studio refuses project titles shorter than 3 characters
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{2,49}$")


class CampaignError(LabelStudioError):
    """A campaign name or project that fleetloop cannot use."""


@dataclass(frozen=True)
class Campaign:
    name: str
    project_id: int
    model_version: str | None = None  # the project's selected model version (predictions shown)


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):  # "$" of .match would let a trailing newline in
        raise CampaignError(
            f"invalid campaign name {name!r}: 3-50 characters, letters, digits, '.', '_' or '-', starting alphanumeric"
        )
    return name


def task_key(campaign: str, log_id: str, frame: int) -> str:
    """The ``fleetloop_key`` a pushed task carries in its data (what push and sync agree on)."""
    return f"{campaign}/{log_id}/{int(frame)}"


@lru_cache
def label_config() -> str:
    """The labeling config, verified to offer exactly the taxonomy's classes."""
    xml = resources.files("fleetloop.label").joinpath("label_config.xml").read_text()
    root = ET.fromstring(xml)
    boxes = root.find(f".//RectangleLabels[@name='{BOX_CONTROL}']")
    labels = tuple(e.get("value") for e in boxes.iter("Label")) if boxes is not None else ()
    if labels != CLASSES:
        raise CampaignError(f"label_config.xml offers {labels}, the taxonomy is {CLASSES}: fix the config")
    if root.find(f".//Choice[@value='{UNUSABLE}']") is None:
        raise CampaignError(f"label_config.xml has no {UNUSABLE!r} choice")
    return xml


def config_problems(xml: str) -> list[str]:
    """What a project's labeling config lacks of fleetloop's (the box control with every class of
    the taxonomy, the "frame is unusable" choice): labelers could not label what it lacks, so
    objects would become background. Extra controls or labels are allowed (a region from them is
    rejected annotation by annotation)."""
    try:
        root = ET.fromstring(xml or "")
    except ET.ParseError as exc:
        return [f"the labeling config is not valid XML ({exc})"]
    problems = []
    boxes = root.find(f".//RectangleLabels[@name='{BOX_CONTROL}']")
    if boxes is None:
        problems.append(f"no RectangleLabels control named {BOX_CONTROL!r}")
    else:
        labels = {e.get("value") for e in boxes.iter("Label")}
        missing = [c for c in CLASSES if c not in labels]
        if missing:
            problems.append(f"control {BOX_CONTROL!r} lacks the labels {missing}")
    status = root.find(f".//Choices[@name='{STATUS_CONTROL}']")
    if status is None or status.find(f".//Choice[@value='{UNUSABLE}']") is None:
        problems.append(f"no Choices control {STATUS_CONTROL!r} with the choice {UNUSABLE!r}")
    return problems


def find_campaign(client: LabelStudioClient, name: str) -> Campaign | None:
    """The campaign's project by exact title, or None. A same-titled project fleetloop did not
    create is an error (its config may not match)."""
    check_name(name)
    page = 1
    while True:
        body = client.request(
            "GET",
            "/api/projects",
            params={"page": page, "page_size": 100, "title": name, "include": "id,title,description,model_version"},
            ok=(200, 404),
        )
        if body is None or (isinstance(body, dict) and "results" not in body):
            return None
        for p in body["results"]:
            if p.get("title") == name:
                if _MARK not in (p.get("description") or ""):
                    raise CampaignError(
                        f"Label Studio {client.url}: project {p['id']} is titled {name!r} but was not created by"
                        " fleetloop; choose another campaign name"
                    )
                return Campaign(name, int(p["id"]), p.get("model_version") or None)
        if not body.get("next"):
            return None
        page += 1


def ensure_campaign(client: LabelStudioClient, name: str) -> Campaign:
    """Find the campaign's project, or create it (idempotent on reruns)."""
    found = find_campaign(client, name)
    if found is not None:
        return found
    body = client.request(
        "POST",
        "/api/projects",
        json={
            "title": name,
            "description": f"{_MARK} {name}: frames mined by fleetloop; the banner says why each was sent.",
            "label_config": label_config(),
            "show_collab_predictions": True,  # labelers start from the model's boxes
            "maximum_annotations": 1,
        },
    )
    return Campaign(name, int(body["id"]), None)


def select_model_version(client: LabelStudioClient, campaign: Campaign, model_version: str) -> Campaign:
    """Make the project show predictions of ``model_version`` (label-studio #5115). Label Studio
    only accepts a version that some prediction of the project carries: call after importing."""
    if campaign.model_version == model_version:
        return campaign
    client.request("PATCH", f"/api/projects/{campaign.project_id}", json={"model_version": model_version})
    return Campaign(campaign.name, campaign.project_id, model_version)


def ensure_local_files_storage(client: LabelStudioClient, campaign: Campaign, directory: Path) -> None:
    """Label Studio only serves ``/data/local-files/`` paths under a local-files storage of the
    project: register ``directory`` (idempotent; nothing is synced from it)."""
    directory = Path(directory).resolve()
    existing = client.request("GET", "/api/storages/localfiles", params={"project": campaign.project_id})
    if any(Path(s.get("path", "")) == directory for s in existing or []):
        return
    directory.mkdir(parents=True, exist_ok=True)
    client.request(
        "POST",
        "/api/storages/localfiles",
        json={
            "project": campaign.project_id,
            "path": str(directory),
            "title": f"fleetloop renders {campaign.name}",
            "use_blob_urls": True,
            "regex_filter": r".*\.png$",
        },
    )
