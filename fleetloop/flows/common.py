"""What every flow needs, read when a flow *runs* (never at import): the settings (with the local
Label Studio filled in), the store, the loop's params, and the Dask task runner."""

from __future__ import annotations

from typing import Any

from prefect_dask import DaskTaskRunner

from fleetloop.params import LoopParams, load_params
from fleetloop.settings import Settings, get_settings
from fleetloop.store.objects import Store, get_store


def settings() -> Settings:
    from fleetloop.local.connect import resolve_settings

    return resolve_settings(get_settings())


def store() -> Store:
    return get_store(get_settings())


def params() -> LoopParams:
    return load_params()


class SettingsDaskTaskRunner(DaskTaskRunner):
    """Shards fan out on Dask: an existing scheduler when ``FLEETLOOP_PREFECT__DASK_ADDRESS`` is
    set, else a LocalCluster. The settings are read when a flow run enters the runner, so
    importing a flow module reads no settings.

    The local cluster runs its workers as threads in the flow's process: the mining kernels
    release the GIL, so two cores are used without paying for worker processes that each
    import the stack and load the compiled kernels again (measured in
    benchmarks/orchestration_overhead.py)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def duplicate(self) -> SettingsDaskTaskRunner:
        return type(self)()

    def __enter__(self) -> SettingsDaskTaskRunner:
        import logging

        logging.getLogger("distributed").setLevel(logging.WARNING)  # cluster start/stop chatter
        s = get_settings().prefect
        if s.dask_address:
            self.address, self.cluster_kwargs = s.dask_address, {}
        else:
            self.address = None
            self.cluster_kwargs = {"n_workers": 1, "threads_per_worker": s.dask_workers, "processes": False,
                                   "dashboard_address": None}
        super().__enter__()
        return self
