"""Flow parameters are refused before any work, by the flows' own validated signatures: the CLI
checks them before it contacts Prefect (issue 12, defect 6)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fleetloop.cli import app


@pytest.mark.parametrize(
    ("flow", "param", "message"),
    [
        ("mine", "budget=0", "greater than or equal to 1"),  # would have pushed every frame to labeling
        ("mine", "budget=-5", "greater than or equal to 1"),
        ("mine", "budget=lots", "valid integer"),
        ("mine", "nope=1", "mine has no parameter nope"),
        ("weekly-cycle", "budget=0", "greater than or equal to 1"),
        ("weekly-cycle", "week=2026-49", "should match pattern"),
        ("retrain", "dataset_version=x", "valid integer"),
        ("label-sync", "campaing=x", "label-sync has no parameter campaing"),
        # the rules `fleetloop mine --tag/--log/--since/--until` and the store apply (issue: defect 3)
        ("mine", 'tags=["weather"]', "tag 'weather' must look like 'weather=rain'"),
        ("mine", 'tags=["color=red"]', "tag 'color=red' must look like 'weather=rain'"),
        ("mine", 'log_ids=["../x"]', "invalid log_id '../x': contains '..'"),
        ("mine", 'log_ids=["ok", "a/b"]', "invalid log_id 'a/b'"),
        ("mine", 'vehicle=""', "at least 1 character"),
        ("weekly-cycle", "week=2026-W99", "should match pattern"),  # no week 99 in the pattern
        ("weekly-cycle", "week=2026-W00", "should match pattern"),
        ("weekly-cycle", "week=2025-W53", "invalid week '2025-W53'"),  # 2025 has 52 ISO weeks
        ("mine", "tags=weather=rain", """a list is JSON: --param 'tags=["..."]'"""),
        ("retrain", "dataset_version=-1", "greater than or equal to 1"),
        ("retrain", "dataset_version=0", "greater than or equal to 1"),
        # a bare number is no time (pydantic read it as seconds since 1970: since=1970-08-23)
        ("mine", "since=20250304", "since: Value error, 20250304 is a number, not a date"),
        ("mine", "until=1741046400", "until: Value error, 1741046400 is a number, not a date"),
        ("mine", "drive_since=-5", "drive_since: Value error, -5 is a number, not a date"),
        ("mine", "drive_until=1.5", "drive_until: Value error, 1.5 is a number, not a date"),
    ],
)
def test_bad_flow_parameters_are_refused_before_any_work(flow, param, message, monkeypatch) -> None:
    monkeypatch.setenv("FLEETLOOP_PREFECT__API_URL", "http://127.0.0.1:9/api")  # never contacted
    result = CliRunner().invoke(app, ["run", flow, "--param", param])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.replace("│", " ").split())  # the panel's borders out


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (['since="2026-01-01"', 'until="2025-01-01"'], "until must be after since"),
        (['until="2026-01-01"', 'since="2026-01-01"'], "until must be after since"),  # any order on the line
        (['drive_since="2026-01-02T00:00:00Z"', 'drive_until="2026-01-01T00:00:00Z"'],
         "drive_until must be after drive_since"),
    ],
)
def test_empty_windows_are_refused_before_any_work(params, message, monkeypatch) -> None:
    monkeypatch.setenv("FLEETLOOP_PREFECT__API_URL", "http://127.0.0.1:9/api")  # never contacted
    args = ["run", "mine"]
    for p in params:
        args += ["--param", p]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.replace("│", " ").split())  # the panel's borders out


def test_good_parameters_pass_the_check() -> None:
    from fleetloop.cli.orchestration import check_parameters

    check_parameters("mine", {"budget": 5, "tags": ["weather=rain"]})
    check_parameters("mine", {"tags": ["weather=rain", "time_of_day=night"], "log_ids": ["0001", "drive_2026.a-b"],
                              "since": "2026-01-01", "until": "2026-02-01", "vehicle": "7",
                              "drive_since": "2025-12-01T00:00:00Z", "drive_until": "2025-12-02T00:00:00+01:00"})
    check_parameters("mine", {"until": "2025-01-01"})  # one end of a window alone
    check_parameters("weekly-cycle", {"week": "2026-W49", "budget": 30})
    check_parameters("weekly-cycle", {"week": "2026-W53"})  # 2026 has 53 ISO weeks
    check_parameters("retrain", {"dataset_version": 1})
    check_parameters("retrain", {})


@pytest.mark.parametrize(("flow_name", "bad"), [
    ("mine", {"tags": ["weather"]}), ("mine", {"tags": ["colour=red"]}), ("mine", {"log_ids": ["a..b"]}),
    ("mine", {"log_ids": ["../x"]}), ("mine", {"vehicle": ""}), ("mine", {"budget": 0}),
    ("weekly-cycle", {"week": "2026-W00"}), ("weekly-cycle", {"week": "2026-W99"}), ("weekly-cycle", {"week": "2026-49"}),
    ("monitor-drift", {"week": "2026-W60"}), ("monitor-drift", {"current_logs": ["a/b"]}),
    ("retrain", {"dataset_version": 0}), ("ingest-logs", {"source": "/x", "log_ids": ["a..b"]}),
])
def test_the_prefect_server_and_run_form_refuse_what_the_flows_refuse(flow_name, bad) -> None:
    """The server and the UI's run form check only the JSON schema (they cannot run the
    validators): the rules a pattern or a bound can say are in it, checked as the server checks."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import is_valid

    from fleetloop.flows.deployments import flow_named
    from fleetloop.settings import Settings

    schema = parameter_schema(flow_named(flow_name, Settings()).fn).model_dump()
    good = {"mine": {"tags": ["weather=rain"], "log_ids": ["0001", "drive.2026-12-01_a"], "vehicle": "veh-07"},
            "weekly-cycle": {"week": "2026-W49"}, "monitor-drift": {"week": "2026-W53", "current_logs": ["0001"]},
            "retrain": {"dataset_version": 3}, "ingest-logs": {"source": "/x", "log_ids": ["0001"]}}[flow_name]
    assert is_valid(good, schema)
    assert not is_valid(bad, schema)


def test_every_parameter_of_the_deployed_flows_is_described_in_the_run_form() -> None:
    """Prefect takes each parameter's description from the flow docstring's Args section."""
    from prefect.utilities.callables import parameter_schema

    from fleetloop.flows.deployments import _load, flow_specs
    from fleetloop.settings import Settings

    for spec in flow_specs(Settings()):
        fl = _load(spec["entrypoint"])
        props = parameter_schema(fl.fn).model_dump()["properties"]
        missing = [name for name, prop in props.items() if not prop.get("description")]
        assert not missing, f"{fl.name}: no description for {missing}"
        assert ":class:" not in (fl.description or "")  # Sphinx roles show as plain text in the UI
