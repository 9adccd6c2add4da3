"""``grow-dataset``: labels delivered since the last version become ``dataset-vN+1``."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from fleetloop.dataset.config import dataset_config
from fleetloop.dataset.growth import GrowResult, grow
from fleetloop.flows.common import params, settings, store
from fleetloop.ingest.validation import label_failures


@flow(name="grow-dataset", log_prints=True)
def grow_dataset() -> GrowResult:
    """Append every label shard not yet in the dataset (all synced campaigns) as one growth
    batch, validated with the labels suite; push the data, commit, then tag. Nothing new: no
    version."""
    result = grow(store(), dataset_config(settings()), params().grow, validate=label_failures)
    publish_grow(result)
    return result


def publish_grow(r: GrowResult) -> None:
    logger = get_run_logger()
    if r.nothing_new:
        logger.info("dataset: nothing new (still dataset-v%d)", r.version)
        md = f"# Dataset: nothing new\n\nNo label shard since `dataset-v{r.version}`; no version was made."
    else:
        problems = "\n".join(f"- {p}" for p in r.problems[:30]) or "- none"
        md = f"""# Dataset `{r.tag}`

**{r.frames_added}** frames added in batch {r.batch} ({r.objects_added} objects, {r.negatives} verified empty,
{r.superseded} superseding earlier labels, {r.removed} removed as unusable) from campaigns
{', '.join(f'`{c}`' for c in r.campaigns) or 'none'}.

The version holds **{r.frames}** frames and **{r.objects}** objects. Left out: {r.invalid} invalid annotation
revisions (labels suite), {r.stale} stale deliveries, {r.missing_images} frames without an image.

Problems:
{problems}
"""
        logger.info("dataset %s: %d frames (+%d)", r.tag, r.frames, r.frames_added)
    create_markdown_artifact(key="dataset-version", markdown=md, description="The dataset version this run made")
