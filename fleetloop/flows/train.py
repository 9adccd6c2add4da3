"""``retrain``: dvc repro on a dataset version → register → promotion gate → promote or reject."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from fleetloop.flows.common import params, settings
from fleetloop.flows.param_types import DatasetVersion
from fleetloop.retrain import RetrainOutcome, retrain_latest


@flow(name="retrain", log_prints=True)
def retrain_flow(dataset_version: DatasetVersion | None = None, why: str = "", force: bool = False) -> RetrainOutcome:
    """Train on a dataset version, register the model, and promote it if it passes the gate
    against production.

    Args:
        dataset_version: N of dataset-vN to train on (an integer: ``true`` is not 1); empty: the
            latest version.
        why: Recorded with the registration and the promotion decision.
        force: Train again even when this dataset version was trained with these params and this
            pipeline (e.g. after the trainer's code changed).
    """
    logger = get_run_logger()  # the trainer's lines (its epochs) in the run's log, as they come
    out = retrain_latest(settings(), params(), dataset_version, who="fleetloop retrain", why=why,
                         progress=lambda line: logger.info("trainer: %s", line), force=force)
    publish_retrain(out)
    return out


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


def publish_retrain(out: RetrainOutcome) -> None:
    verdict = "**promoted to production**" if out.promoted else f"**not promoted** ({out.action})"
    reasons = "\n".join(f"- {r}" for r in out.reasons) or "- none"
    overall = out.metrics.get("overall", {})
    create_markdown_artifact(key="promotion-decision", markdown=f"""# Model v{out.model_version}: {verdict}

Trained on `dataset-v{out.dataset_version}`{' (reused: trained before with the same params)' if out.reused else ''}
in {out.train_seconds:.0f} s; {out.metrics.get('primary', 'map50')} overall **{_fmt(overall.get('map50'))}**
on {overall.get('support', 0)} objects; CPU latency {_fmt(out.latency_ms)} ms per image.
Production: v{out.production_before} → v{out.production_after}.

Reasons:
{reasons}
""", description="The promotion gate's decision")
    rows = [{"slice": name, "candidate": _fmt(row.get("candidate")), "production": _fmt(row.get("production")),
             "delta": _fmt(row.get("delta")), "support": row.get("support"), "gated": row.get("gated"),
             "ok": row.get("ok")} for name, row in sorted(out.slices.items())]
    if rows:
        create_table_artifact(key="candidate-vs-production", table=rows,
                              description=f"v{out.model_version} against production, per slice")
    get_run_logger().info("model v%d: %s", out.model_version, "promoted" if out.promoted else out.action)
