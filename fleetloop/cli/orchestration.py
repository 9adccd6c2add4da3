"""``fleetloop deploy``, ``fleetloop worker`` and ``fleetloop run``: the Prefect side."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, cast
from uuid import UUID

import typer
from rich.console import Console
from rich.markup import escape

from fleetloop.cli.output import REPORTED, JsonOpt, err, fail, print_json
from fleetloop.settings import redact

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import FlowRun, State

console = Console()

#: flow name -> its deployment name (see fleetloop.flows.deployments)
DEPLOYMENTS = {
    "weekly-cycle": "weekly",
    "ingest-logs": "on-demand",
    "mine": "on-demand",
    "monitor-drift": "daily",
    "label-push": "on-demand",
    "label-sync": "poll",
    "grow-dataset": "on-demand",
    "retrain": "on-demand",
}


def _prefect_env(as_json: bool = False, *, check: bool = True):
    """The settings and the Prefect API URL in effect; exit 2 when there is none or (``check``)
    when nothing answers there as a Prefect API."""
    from fleetloop.local.services import ensure_prefect_env
    from fleetloop.settings import get_settings

    settings = get_settings()
    url = ensure_prefect_env(settings)
    if not url:
        raise fail("start the local one with `fleetloop services up`, or set FLEETLOOP_PREFECT__API_URL / "
                   "PREFECT_API_URL.", 2, as_json=as_json, prefix="No Prefect API")
    if check and (problem := api_problem(url)):
        raise fail(problem, 2, as_json=as_json, prefix=f"No Prefect API at {redact(url)}")
    return settings, url


def api_problem(url: str) -> str | None:
    """None when the Prefect API at ``url`` answers; else why not, in one line. A server that is
    down, a wrong host or scheme, or a URL without its ``/api`` (which answers 404 to every call,
    so a run would read as "no deployment") are told apart here, before any work."""
    import httpx
    from prefect.client.base import ServerType
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            if client.server_type != ServerType.CLOUD:  # as Prefect's own version check, which Cloud skips
                client.api_version()  # JSON from a Prefect API; a 404, or a web page, from anything else
    except httpx.HTTPStatusError as exc:
        hint = "" if url.rstrip("/").endswith("/api") else " (a Prefect API URL ends in /api)"
        return f"HTTP {exc.response.status_code} from {exc.request.url}{hint}"
    except httpx.HTTPError as exc:  # connection refused, unknown host, TLS to a plain server, no scheme
        return _one_line(exc)
    except ValueError:  # not JSON: some other web server
        return "it answers, but not as a Prefect API (check the URL; it ends in /api)"
    return None


def parse_params(pairs: list[str]) -> tuple[dict, dict[str, str]]:
    """``key=value`` pairs: the values (JSON when they parse as JSON, else strings) and each
    key's text as given. A key given twice is refused (one of the two values would be dropped
    without a word)."""
    out: dict = {}
    texts: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {pair!r}", param_hint="--param")
        if key in out:
            raise typer.BadParameter(f"{key} is given twice", param_hint="--param")
        texts[key] = value
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out, texts


def check_parameters(flow_name: str, parameters: dict, texts: dict[str, str] | None = None) -> dict:
    """Refuse, before any work, parameters the flow would refuse: unknown names, wrong types,
    values out of range (the flow's own signature and pydantic constraints; deployments may skip
    this validation, so the flows check again when they run). Returns the parameters to send:
    ``texts`` (each key's text on the command line) is used instead of a number the JSON reading
    made of it where the flow takes a string (``--param vehicle=42``)."""
    import inspect
    import logging

    from fleetloop.flows import deployments
    from fleetloop.settings import get_settings

    fl = deployments.flow_named(flow_name, get_settings())
    known = set(inspect.signature(fl.fn).parameters)
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise typer.BadParameter(f"{flow_name} has no parameter {', '.join(unknown)}; it takes: "
                                 f"{', '.join(sorted(known))}", param_hint="--param")
    quiet = logging.getLogger("prefect.flows")
    level, quiet.level = quiet.level, logging.CRITICAL  # the error is ours to print, once
    try:
        fl.validate_parameters(parameters)
        return parameters
    except Exception as exc:  # prefect's ParameterTypeError: say which value and why, in one line
        from prefect.exceptions import ParameterTypeError

        def one_line(e: Exception) -> str:
            return " ".join(str(e).split()).removeprefix("Flow run received invalid parameters: ")

        message = one_line(exc)
        scalars = {k: texts[k] for k, v in parameters.items() if texts and k in texts and isinstance(v, int | float)
                   and not isinstance(v, bool) and f"{k}: Input should be a valid string" in message}
        if scalars:  # --param vehicle=42: JSON read a number where the flow takes text
            try:
                fl.validate_parameters(as_text := parameters | scalars)
                return as_text
            except ParameterTypeError as as_text_too:  # --param week=2026: say what the text lacks
                message = one_line(as_text_too)
        lists = [k for k, v in parameters.items() if isinstance(v, str) and f"{k}: Input should be a valid list" in message]
        if lists:  # --param tags=weather=rain: a string where the flow takes a list
            message += f" (a list is JSON: --param '{lists[0]}=[\"...\"]')"
        raise typer.BadParameter(message[:500], param_hint="--param") from None
    finally:
        quiet.level = level


def register(app: typer.Typer) -> None:
    @app.command()
    def deploy(
        serve: Annotated[bool, typer.Option("--serve", help="Register and run the deployments in this process.")] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Register every flow's deployment (weekly cycle on its cron schedule, each step on demand).

        Running it again updates them in place. Exit 2 when no Prefect API answers, when a cron
        setting is no schedule, or when the work pool (FLEETLOOP_PREFECT__WORK_POOL) exists and is
        not a process pool. With --json,
        the pool, the API and each deployment's id (not with --serve, which runs until stopped)."""
        from fleetloop.flows import deployments

        if serve and as_json:
            raise typer.BadParameter("--serve runs until stopped and prints no JSON; register with "
                                     "`fleetloop deploy --json`", param_hint="--json")
        settings, url = _prefect_env(as_json)
        try:
            deployments.flow_specs(settings)  # the schedules: a cron setting Prefect cannot take
        except deployments.ScheduleError as exc:
            raise fail(exc, 2, as_json=as_json, prefix="Not deployed") from None
        if serve:
            from fleetloop.local.process import reaping_descendants

            console.print(f"Serving fleetloop deployments against {redact(url)} (Ctrl-C to stop)")
            def replacing(names: list[str]) -> None:
                console.print(f"Replacing {len(names)} deployments registered in a work pool by `fleetloop deploy` "
                              f"with served ones ({', '.join(names)})", highlight=False)

            with reaping_descendants():  # flow runs still going when serving stops are stopped too
                deployments.serve(settings, on_replace=replacing)
            return
        try:
            ids = deployments.deploy_to_pool(settings)
        except deployments.WorkPoolTypeError as exc:
            raise fail(exc, 2, as_json=as_json, prefix="Not deployed") from None
        if as_json:
            print_json({"work_pool": settings.prefect.work_pool, "api_url": redact(url),
                        "deployments": {name: str(i) for name, i in ids.items()}}, ok=True)
            return
        console.print(f"Registered {len(ids)} deployments in work pool [bold]{settings.prefect.work_pool}[/] at {redact(url)}: "
                      f"{', '.join(ids)}.", highlight=False, soft_wrap=True)
        console.print("Run them with: [bold]fleetloop worker[/]")

    @app.command()
    def worker() -> None:
        """Start a Prefect process worker for fleetloop's work pool (no Docker needed).

        SIGTERM, SIGINT (Ctrl-C) or SIGHUP stops the worker and the flow runs it started within
        10 s, and nothing it started outlives this command (nor its unexpected death). Exit 2 when
        the work pool (FLEETLOOP_PREFECT__WORK_POOL) exists and is not a process pool."""
        from fleetloop.local.process import supervise

        settings, url = _prefect_env(check=False)
        pool = settings.prefect.work_pool
        if problem := api_problem(url):  # a server still starting comes up later: keep going, but say so
            err.print(f"[yellow]The Prefect API at {redact(url)} does not answer ({escape(problem)}):[/] the worker "
                      "keeps trying; check PREFECT_API_URL / FLEETLOOP_PREFECT__API_URL, or start it with "
                      "`fleetloop services up`.", highlight=False)
        else:
            from fleetloop.flows.deployments import WorkPoolTypeError, check_worker_pool

            try:
                check_worker_pool(pool)
            except WorkPoolTypeError as exc:
                raise fail(exc, 2, prefix="No worker started") from None
        cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
        err.print(f"Prefect worker for work pool [bold]{pool}[/] at {redact(url)} (Ctrl-C to stop)", highlight=False)

        def stopping(sig: signal.Signals) -> None:
            err.print(f"{sig.name}: stopping the Prefect worker and its flow runs", highlight=False)
            REPORTED.append(128 + sig)  # said here: the console script adds no line of its own

        raise typer.Exit(supervise(cmd, env=os.environ.copy(), on_stop=stopping))

    @app.command()
    def run(
        flow: Annotated[str, typer.Argument(help=f"One of: {', '.join(DEPLOYMENTS)}")],
        param: Annotated[list[str] | None, typer.Option("--param", "-p", help="key=value, once per key (JSON values allowed; a number where the flow takes text stays text)")] = None,
        wait: Annotated[bool, typer.Option("--wait", help="Wait for the run; exit non-zero if it fails.")] = False,
        timeout: Annotated[float, typer.Option(
            help="With --wait: give up waiting after this many seconds (exit 3; the run goes on).")] = 3600,
        no_worker_after: Annotated[float, typer.Option(
            "--no-worker-after",
            help="With --wait: after this many seconds still Scheduled/Pending, check that a worker "
                 "polls for the run and say how to start one if none does.",
        )] = 20,
        as_json: JsonOpt = False,
    ) -> None:
        """Trigger a deployed flow on demand and print its URL in the Prefect UI (with --wait,
        its final state: exit 1 when it did not complete, 3 on timeout or when the Prefect API stops
        answering for a minute, 130 when Ctrl-C stops the waiting; the run itself goes on in all
        three). Exit 2, before any run is made, for a bad command line or parameter, no Prefect API
        answering, or no such deployment."""
        if flow not in DEPLOYMENTS:
            raise typer.BadParameter(f"unknown flow {flow!r}; expected one of {list(DEPLOYMENTS)}", param_hint="FLOW")
        for value, option in ((timeout, "--timeout"), (no_worker_after, "--no-worker-after")):
            if not value > 0:  # NaN too; 0 or less would make a run and give up on it at once
                raise typer.BadParameter(f"must be a number of seconds > 0, got {value}", param_hint=option)
        parameters, texts = parse_params(param or [])
        from fleetloop.local.services import ensure_prefect_env
        from fleetloop.settings import get_settings

        ensure_prefect_env(get_settings())  # before check_parameters imports prefect, which reads its API URL then
        from fleetloop.flows.deployments import ScheduleError

        try:
            parameters = check_parameters(flow, parameters, texts)
        except ScheduleError as exc:  # the flows are found through the deployments' specs
            raise fail(exc, 2, as_json=as_json, prefix="Invalid settings") from None
        _, api_url = _prefect_env(as_json)
        from prefect.deployments import run_deployment
        from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
        from prefect.settings import PREFECT_UI_URL

        name = f"{flow}/{DEPLOYMENTS[flow]}"
        try:
            fr = cast("FlowRun", run_deployment(name=name, parameters=parameters, timeout=0, as_subflow=False))
        except ObjectNotFound:
            raise fail("register them with `fleetloop deploy`.", 2, as_json=as_json,
                       prefix=f"No deployment {name}") from None
        except PrefectHTTPStatusError as exc:
            raise fail(exc.response.text[:500], 2, as_json=as_json,
                       prefix=f"The Prefect API refused the run of {name}") from None
        except Exception as exc:  # parameter validation happens client-side too
            if type(exc).__name__ in ("ParameterTypeError", "SignatureMismatchError", "ValidationError"):
                raise fail(exc, 2, as_json=as_json, prefix=f"Invalid parameters for {name}") from None
            raise
        ui = (PREFECT_UI_URL.value() or api_url.removesuffix("/api")).rstrip("/")
        run_doc = {"flow_run": fr.name, "id": str(fr.id), "url": redact(f"{ui}/runs/flow-run/{fr.id}")}
        if not as_json:
            console.print(f"flow run {fr.name}: {run_doc['url']}", soft_wrap=True)
        if not wait:
            if as_json:
                print_json({"ok": True, **run_doc, "state": fr.state.name if fr.state else "Scheduled"})
            return
        state = _wait_for_run(fr, timeout, no_worker_after, as_json, run_doc)
        if as_json:
            print_json({"ok": state.is_completed(), **run_doc, "state": state.name, "message": state.message or ""})
            raise typer.Exit(0 if state.is_completed() else 1)
        if state.is_completed():
            console.print(f"[green]{state.name}[/]")
            return
        raise fail(state.message or "", 1, prefix=state.name or "not completed")


def _wait_for_run(flow_run: FlowRun, timeout: float, hint_after: float, as_json: bool = False,
                  run_doc: dict | None = None) -> State:
    """Poll the run until it is final. While it sits in Scheduled/Pending, check every
    ``hint_after`` seconds that something polls for it and say once, on stderr, when nothing
    does. Exit 3 after ``timeout`` seconds or when the API has not answered for
    ``API_DOWN_GRACE_S`` (said on stderr when it stops and when it answers again), 130 on Ctrl-C
    (the run goes on in all three), 1 when the run is deleted meanwhile; with ``as_json`` the JSON also carries ``run_doc`` (the run's
    id and URL, so a script can follow the run it gave up on)."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    started = time.monotonic()
    next_check, hinted, queued = hint_after, False, False
    state: State | None = None
    down_since: float | None = None  # when the API stopped answering (None: it answers)
    try:  # the client's own retries (about a minute of silence per call) are ours here, said as they go
        with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}), get_client(sync_client=True) as client:
            while True:
                try:
                    state = client.read_flow_run(flow_run.id).state
                except ObjectNotFound:  # deleting a deployment deletes its scheduled runs
                    raise _gave_up(flow_run, run_doc, "deleted before it finished (was its deployment deleted?)",
                                   1, as_json, state) from None
                except httpx.HTTPError as exc:  # the server went down (or restarts): try again, then give up
                    if not _server_trouble(exc):
                        raise
                    now = time.monotonic()
                    if down_since is None:
                        down_since = now
                        err.print(f"[yellow]The Prefect API stopped answering[/] ({escape(_one_line(exc))}): still "
                                  f"trying for {API_DOWN_GRACE_S:.0f} s.", highlight=False, soft_wrap=True)
                    if now - down_since >= API_DOWN_GRACE_S or now - started > timeout:
                        raise _gave_up(flow_run, run_doc, f"the Prefect API has not answered for {now - down_since:.0f} s "
                                       f"({_one_line(exc)}); stopped waiting, the run may go on", 3, as_json,
                                       state) from None
                    time.sleep(API_RETRY_S)
                    continue
                if down_since is not None:
                    down_since = None
                    err.print("The Prefect API answers again; still waiting.", highlight=False)
                if state is not None and state.is_final():
                    return state
                elapsed = time.monotonic() - started
                if state is not None and state.name == "AwaitingConcurrencySlot" and not queued:
                    queued = True  # the weekly cycle runs one at a time (fleetloop.flows.deployments)
                    err.print(f"[yellow]Another run of this deployment is going:[/] run {flow_run.name} starts when "
                              "it has finished (one at a time).", highlight=False, soft_wrap=True)
                waiting = state is None or state.is_scheduled() or state.is_pending()
                if waiting and not hinted and elapsed >= next_check and flow_run.deployment_id is not None:
                    next_check += hint_after
                    try:
                        hint = no_poller_hint(client, flow_run.deployment_id)
                    except httpx.HTTPError as exc:  # down between two calls: the next poll says so
                        if not _server_trouble(exc):
                            raise
                        hint = None
                    if hint:
                        hinted = True
                        err.print(f"[yellow]{hint}[/] Still waiting for run {flow_run.name} "
                                  f"({state.name if state else 'Scheduled'}, {elapsed:.0f} s).",
                                  highlight=False, soft_wrap=True)
                if elapsed > timeout:
                    raise _gave_up(flow_run, run_doc, f"Still {state.name if state else 'Scheduled'} after "
                                   f"{timeout:.0f} s; it goes on", 3, as_json, state)
                time.sleep(1.0)
    except KeyboardInterrupt:  # Ctrl-C stops the waiting, not the run
        raise _gave_up(flow_run, run_doc, "stopped waiting (Ctrl-C); the run goes on", 130, as_json, state) from None


#: How long ``run --wait`` keeps polling a Prefect API that stopped answering (a restart takes
#: seconds) before it gives up (exit 3, as on a timeout: the run may go on), and how often.
API_DOWN_GRACE_S = 60.0
API_RETRY_S = 2.0


def _server_trouble(exc: Exception) -> bool:
    """The API cannot be reached or fails on its side (connection refused or cut, a 5xx): worth
    another try. A 4xx is an answer, and stays an error."""
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def _gave_up(flow_run: FlowRun, run_doc: dict | None, problem: str, code: int, as_json: bool,
             state: State | None) -> typer.Exit:
    """Report a wait that ended without a final state: one line on stderr; with ``as_json`` also
    the JSON, naming the run (id, URL) that may still be going."""
    where = f": {run_doc['url']}" if run_doc else ""
    if as_json:
        print_json({"error": f"flow run {flow_run.name}: {problem}{where}", **(run_doc or {}),
                    "state": state.name if state else None}, ok=False)
    return fail(f"{problem}{where}", code, prefix=f"flow run {flow_run.name}")


#: A worker counts as polling until it misses this many heartbeats (Prefect's foreman: 3 x 30 s).
HEARTBEATS_MISSED = 3
#: A served deployment counts as polled for this long after its last poll (Prefect's default).
SERVED_POLL_TIMEOUT_S = 60.0


def no_poller_hint(client: SyncPrefectClient, deployment_id: UUID, now: datetime | None = None) -> str | None:
    """None when a worker (or a serving process) polls for this deployment's runs; else one
    line saying so and how to start one. A deployment in a work pool is polled by the pool's
    workers (their ``last_heartbeat_time``); one without (``fleetloop deploy --serve``) by the
    process serving it (the deployment's ``last_polled``)."""
    now = now or datetime.now(UTC)
    deployment = client.read_deployment(deployment_id)
    pool_name = deployment.work_pool_name
    if pool_name:
        pool = client.read_work_pool(pool_name)
        if pool.is_paused:
            return f"Work pool '{pool_name}' is paused: resume it with `prefect work-pool resume {pool_name}`."
        workers = client.read_workers_for_work_pool(pool_name)
        for w in workers:
            allowed = HEARTBEATS_MISSED * (w.heartbeat_interval_seconds or 30)
            if w.last_heartbeat_time and (now - w.last_heartbeat_time).total_seconds() <= allowed:
                return None
        beats = [w.last_heartbeat_time for w in workers if w.last_heartbeat_time]
        seen = f"last heartbeat {_ago(max(beats), now)}" if beats else "no worker has polled it yet"
        return (f"No worker is polling work pool '{pool_name}' ({seen}): start one with `fleetloop worker`, "
                "or serve the deployments in one process with `fleetloop deploy --serve`.")
    last = deployment.last_polled
    if last and (now - last).total_seconds() <= SERVED_POLL_TIMEOUT_S:
        return None
    seen = f"last polled {_ago(last, now)}" if last else "never polled"
    return (f"Nothing is serving deployment '{deployment.name}' ({seen}): start `fleetloop deploy --serve`, "
            "or `fleetloop deploy` then `fleetloop worker`.")


def _ago(when: datetime, now: datetime) -> str:
    seconds = max(0, int((now - when).total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"
