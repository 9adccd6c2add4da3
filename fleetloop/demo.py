"""The main job on the embedded default: the loop end to end on one machine.

Local services (Prefect server + UI, Label Studio) → two weeks of a generated fleet, the second
with a weather and class shift → ingest + validate → ``weekly-cycle`` (drift → steered mining →
label push → sync) → a simulated labeling team answers the tasks through Label Studio's API →
``label-sync`` delivers the labels. Safe to rerun: every step is idempotent.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
from pydantic import BaseModel

from fleetloop.settings import Settings


class DemoResult(BaseModel):
    prefect_ui: str
    label_studio: str
    logs: int
    frames: int
    quarantined: int
    drift_share: float
    slice_boost: dict[str, float]
    mined_frames: int
    selected: int
    campaign: str
    tasks: int
    annotated: int
    labels_delivered: int
    label_boxes: int
    cycle_was_noop: bool


def write_fleet(out: Path, logs_per_week: int, frames: int) -> tuple[Path, Path, Path]:
    """Last week (clear days, mostly cars) and this week (rain and night, more pedestrians and
    cyclists) in the parquet layout, plus their ground truth for the simulated labelers."""
    import pyarrow as pa

    from fleetloop.ingest.importers.parquet import write_parquet_log
    from fleetloop.sim.sample import generate_fleet

    last, _, truth_a = generate_fleet(logs_per_week, frames, seed=1, weathers=[("clear", "day")],
                                      class_mix=(0.8, 0.15, 0.05), prefix="week-a")
    this, _, truth_b = generate_fleet(logs_per_week, frames, seed=2,
                                      weathers=[("rain", "day"), ("clear", "night"), ("rain", "night")],
                                      class_mix=(0.5, 0.3, 0.2), prefix="week-b")
    write_parquet_log(last, out / "last-week")
    write_parquet_log(this, out / "this-week")
    pq.write_table(pa.concat_tables([truth_a, truth_b]), out / "truth.parquet")
    return out / "last-week", out / "this-week", out / "truth.parquet"


def run_demo(settings: Settings, *, logs_per_week: int = 4, frames: int = 200, budget: int = 40, say=print) -> DemoResult:
    from fleetloop.ingest.ingest import ingest
    from fleetloop.local import services

    say("Starting the local services (the first run installs Label Studio: 1-2 minutes)")
    for st in services.up(settings):
        if not st.healthy:
            raise RuntimeError(f"{st.name} is not healthy at {st.url}: {st.detail} (log: {st.log})")
        say(f"  {st.name}: {st.url}")
    api_url = services.ensure_prefect_env(settings)

    from fleetloop.flows.label import label_sync
    from fleetloop.flows.mine import ingest_logs
    from fleetloop.flows.weekly import weekly_cycle
    from fleetloop.label import api as labeling
    from fleetloop.sim.labeling_team import TeamConfig, simulate
    from fleetloop.store.objects import get_store

    demo_dir = settings.home / "demo"
    say(f"Generating two weeks of fleet logs under {demo_dir}")
    last_week, this_week, truth_path = write_fleet(demo_dir, logs_per_week, frames)
    store = get_store(settings)
    backfill = ingest(store, last_week, "parquet",
                               arrived_at=datetime.now(timezone.utc) - timedelta(days=8))
    current = ingest_logs(str(this_week), "parquet")
    say(f"Ingested {backfill.frames + current.frames:,} frames "
        f"({len(backfill.quarantined) + len(current.quarantined)} logs quarantined)")

    say("Running the weekly cycle: drift -> mining -> label push -> sync")
    record = weekly_cycle(budget=budget)
    label_step = record["steps"].get("label", {})
    campaign = label_step.get("campaign")
    if not campaign:
        raise RuntimeError(f"the weekly cycle did not push to labeling: {label_step}")
    say(f"The simulated labeling team answers campaign {campaign}")
    with labeling.client_for(settings) as client:
        team = simulate(campaign, pq.read_table(truth_path), client=client,
                        team=TeamConfig(noise_px=1.0, skip_rate=0.05, seed=0))
    say(f"  {team.answered} tasks labeled, {team.unusable} marked unusable, {team.boxes} boxes")
    label_sync(campaign)
    status = labeling.status(campaign)
    drift = record["steps"].get("monitor-drift", {})
    mined = record["steps"].get("mine", {})
    from fleetloop.label.sync import read_labels

    labels = read_labels(store, campaign)
    return DemoResult(
        prefect_ui=api_url.removesuffix("/api") if api_url else "",
        label_studio=status["url"],
        logs=len(record["logs"]), frames=backfill.frames + current.frames,
        quarantined=len(backfill.quarantined) + len(current.quarantined),
        drift_share=drift.get("share_drifted", 0.0), slice_boost=drift.get("slice_boost", {}),
        mined_frames=mined.get("frames", 0), selected=mined.get("selected", 0), campaign=campaign,
        tasks=status["tasks"], annotated=status["annotated"], labels_delivered=status["synced"],
        label_boxes=labels.num_rows, cycle_was_noop=bool(record.get("noop")),
    )
