"""What every flow needs: the settings, the store, and the task runner."""

from __future__ import annotations

from fleetloop.settings import Settings, get_settings


def settings() -> Settings:
    return get_settings()


def store():
    from fleetloop.store.objects import get_store

    return get_store(get_settings())


def dask_task_runner():
    """Shards fan out on Dask: an existing scheduler when configured, else a LocalCluster.

    The local cluster runs its workers as threads in the flow's process: the mining kernels
    release the GIL, so two cores are used without paying for worker processes that each
    import the stack and load the compiled kernels again (measured in
    benchmarks/orchestration_overhead.py)."""
    import logging

    from prefect_dask import DaskTaskRunner

    logging.getLogger("distributed").setLevel(logging.WARNING)  # cluster start/stop chatter
    s = get_settings().prefect
    if s.dask_address:
        return DaskTaskRunner(address=s.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": 1, "threads_per_worker": s.dask_workers, "processes": False,
                        "dashboard_address": None}
    )
