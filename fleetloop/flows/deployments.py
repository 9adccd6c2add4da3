"""Every flow as a deployment: the weekly cycle on its cron schedule, each step on demand.

Two ways to run them, neither needs Docker:
- ``fleetloop deploy --serve``: one long-running process registers the deployments and runs
  their flow runs (``prefect.serve``).
- ``fleetloop deploy`` then ``fleetloop worker``: deployments in a ``process`` work pool, loaded
  from this source tree by a Prefect process worker.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from fleetloop.settings import Settings

if TYPE_CHECKING:
    from prefect import Flow

SOURCE_ROOT = Path(__file__).resolve().parents[2]


class ScheduleError(ValueError):
    """A cron setting Prefect cannot schedule (the message names the variable)."""


def _cron(settings: Settings, field: str):
    """The schedule of the cron setting ``field`` (``weekly_cron``...), or a :class:`ScheduleError`
    naming its ``FLEETLOOP_PREFECT__*`` variable."""
    from prefect.schedules import Cron

    try:
        return Cron(getattr(settings.prefect, field), timezone=settings.prefect.timezone)
    except ValueError as exc:  # "Invalid cron string: ...", "Random and Hashed expressions are unsupported"
        raise ScheduleError(f"FLEETLOOP_PREFECT__{field.upper()}: {exc} (five fields: minute hour "
                            "day-of-month month day-of-week, e.g. '0 3 * * 1')") from None


def flow_specs(settings: Settings) -> list[dict]:
    """(entrypoint, deployment name, schedule) for every deployment, in one place."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    weekly = _cron(settings, "weekly_cron")
    # one weekly cycle at a time: a second fire (a redeploy's duplicate schedule, a manual run
    # during the scheduled one) waits for the first, then finds the week done (its key) and does nothing
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
    return [
        {"entrypoint": "fleetloop/flows/weekly.py:weekly_cycle", "name": "weekly", "schedules": [weekly],
         "concurrency_limit": one_at_a_time},
        {"entrypoint": "fleetloop/flows/mine.py:ingest_logs", "name": "on-demand"},
        {"entrypoint": "fleetloop/flows/mine.py:mine", "name": "on-demand"},
        {"entrypoint": "fleetloop/flows/drift.py:monitor_drift", "name": "daily",
         "schedules": [_cron(settings, "drift_cron")]},
        {"entrypoint": "fleetloop/flows/label.py:label_push", "name": "on-demand"},
        {"entrypoint": "fleetloop/flows/dataset.py:grow_dataset", "name": "on-demand"},
        {"entrypoint": "fleetloop/flows/train.py:retrain_flow", "name": "on-demand"},
        {"entrypoint": "fleetloop/flows/label.py:label_sync", "name": "poll",
         "schedules": [_cron(settings, "label_sync_cron")]},
    ]


def flow_named(name: str, settings: Settings):
    """The flow object of a deployment's flow, by flow name (``mine``, ``weekly-cycle``...)."""
    for spec in flow_specs(settings):
        fl = _load(spec["entrypoint"])
        if fl.name == name:
            return fl
    raise LookupError(f"no flow named {name!r}")


def _load(entrypoint: str):
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(str(SOURCE_ROOT / entrypoint))


def to_deployments(settings: Settings) -> list:
    """RunnerDeployments for ``prefect.serve``."""
    out = []
    for spec in flow_specs(settings):
        fl = _load(spec["entrypoint"])
        out.append(fl.to_deployment(name=spec["name"], schedules=spec.get("schedules"), tags=["fleetloop"],
                                    concurrency_limit=spec.get("concurrency_limit")))
    return out


def serve(settings: Settings, on_replace: Callable[[list[str]], None] | None = None) -> None:
    """Register the deployments and run their flow runs in this process. Deployments of the same
    names that ``fleetloop deploy`` put in a work pool are deleted first (``on_replace`` hears
    their names): served over, they would keep the pool's code-loading steps and every run would
    crash loading its flow."""
    from prefect import serve as prefect_serve

    runner_deployments = to_deployments(settings)
    replaced = _delete_pool_deployments([f"{d.flow_name}/{d.name}" for d in runner_deployments])
    if replaced and on_replace is not None:
        on_replace(replaced)
    prefect_serve(*runner_deployments, print_starting_message=True)


def _delete_pool_deployments(names: list[str]) -> list[str]:
    """Delete the deployments of ``names`` that belong to a work pool; returns their names."""
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async def delete() -> list[str]:
        deleted = []
        async with get_client() as client:
            for name in names:
                try:
                    existing = await client.read_deployment_by_name(name)
                except ObjectNotFound:
                    continue
                if existing.work_pool_name:
                    await client.delete_deployment(existing.id)
                    deleted.append(name)
        return deleted

    return anyio.run(delete)


class WorkPoolTypeError(ValueError):
    """The configured work pool exists and is not a ``process`` pool."""


def _not_a_process_pool(pool: str, kind: str) -> str:
    return (f"work pool {pool!r} is a {kind} pool; fleetloop's deployments go in a process pool (the one "
            "`fleetloop worker` polls): name another one with FLEETLOOP_PREFECT__WORK_POOL")


def check_worker_pool(pool: str) -> None:
    """Refuse (:class:`WorkPoolTypeError`) a work pool that exists and is not a process pool:
    ``fleetloop worker`` is a process worker, and Prefect would start it there anyway, polling a
    pool whose runs it was never meant to run. A pool not there yet is fine (the worker makes it,
    as ``fleetloop deploy`` would)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_work_pool(pool)
        except ObjectNotFound:
            return
    if existing.type != "process":
        raise WorkPoolTypeError(_not_a_process_pool(pool, existing.type))


def deploy_to_pool(settings: Settings) -> dict[str, str]:
    """Register every deployment in the process work pool (created when missing); returns each
    deployment's ``flow/name`` and id. A pool of that name of another type (docker, kubernetes...)
    is refused (:class:`WorkPoolTypeError`) before anything is registered: ``fleetloop worker``
    is a process worker, and the deployments load their code from this source tree."""
    import anyio
    from prefect import flow as prefect_flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    pool = settings.prefect.work_pool

    async def ensure_pool() -> None:
        async with get_client() as client:
            with contextlib.suppress(ObjectAlreadyExists):
                await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            existing = await client.read_work_pool(pool)
            if existing.type != "process":
                raise WorkPoolTypeError(_not_a_process_pool(pool, existing.type))

    anyio.run(ensure_pool)
    ids = {}
    for spec in flow_specs(settings):
        # async_dispatch types it Flow | Coroutine; called from sync code it returns the Flow
        fl = cast("Flow[..., Any]", prefect_flow.from_source(source=str(SOURCE_ROOT), entrypoint=spec["entrypoint"]))
        with contextlib.redirect_stdout(io.StringIO()):  # Prefect's own table, once per deployment
            dep_id = fl.deploy(name=spec["name"], work_pool_name=pool, schedules=spec.get("schedules"),
                               concurrency_limit=spec.get("concurrency_limit"), tags=["fleetloop"],
                               print_next_steps=False, ignore_warnings=True)
        ids[f"{fl.name}/{spec['name']}"] = str(dep_id)
    return ids
