"""Every command's error path: one line on stderr, and with ``--json`` a JSON document on stdout
(``{"ok": false, "error": ...}``), so a script reading stdout always gets JSON."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from fleetloop.cli import app
from fleetloop.cli.output import fail
from fleetloop.settings import get_settings

runner = CliRunner()


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "local")
    for k in ("FLEETLOOP_LABEL_STUDIO__URL", "FLEETLOOP_LABEL_STUDIO__TOKEN", "FLEETLOOP_PREFECT__API_URL", "PREFECT_API_URL"):
        monkeypatch.delenv(k, raising=False)
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


def test_fail_prints_the_message_literally_and_as_json(capsys):
    exit_ = fail(ValueError("bad [/bold] markup [red]x"), 3, as_json=True, prefix="mine failed")
    assert isinstance(exit_, typer.Exit) and exit_.exit_code == 3
    out, err = capsys.readouterr()
    assert json.loads(out) == {"ok": False, "error": "mine failed: bad [/bold] markup [red]x"}
    assert "mine failed: bad [/bold] markup [red]x" in err  # not read as rich markup (no MarkupError)
    fail("plain", 2)
    out, err = capsys.readouterr()
    assert out == "" and "error: plain" in err


@pytest.mark.parametrize("argv, code, needle", [
    (["dataset", "checkout", "9", "--to", "{tmp}/v9", "--json"], 2, "no dataset repository"),
    (["registry", "show", "production", "--json"], 2, "no production version"),
    (["retrain", "--json"], 2, "no version yet"),
    (["label", "status", "--campaign", "nope", "--json"], 2, "no Label Studio configured"),
    (["mine", "--from-store", "--out", "{tmp}/sel.csv", "--json"], 1, "no stored logs match"),
])
def test_errors_of_json_commands_are_json_on_stdout(empty_home, tmp_path, argv, code, needle):
    res = runner.invoke(app, [a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert res.exit_code == code, res.output
    doc = json.loads(res.stdout)
    assert doc["ok"] is False and needle in doc["error"]
    assert needle in res.stderr
