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
    ],
)
def test_bad_flow_parameters_are_refused_before_any_work(flow, param, message, monkeypatch) -> None:
    monkeypatch.setenv("FLEETLOOP_PREFECT__API_URL", "http://127.0.0.1:9/api")  # never contacted
    result = CliRunner().invoke(app, ["run", flow, "--param", param])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_good_parameters_pass_the_check() -> None:
    from fleetloop.cli.orchestration import check_parameters

    check_parameters("mine", {"budget": 5, "tags": ["weather=rain"]})
    check_parameters("weekly-cycle", {"week": "2026-W49", "budget": 30})
