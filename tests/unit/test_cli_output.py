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


def test_the_demo_table_fits_80_columns_without_cutting_a_number(monkeypatch):
    import io

    from rich.console import Console

    import fleetloop.cli.demo as cli_demo
    from fleetloop.demo import DemoResult, WeekRow

    rows = [WeekRow(week=0, iso_week="2025-W41", labels_spent=960, dataset_version=1, model_version=1, promoted=True,
                    why="map50 0.234 reaches the floor 0.100 (first production model)", production=1,
                    map_overall=0.234, map_rain=0.009, map_night=0.012, map_green=0.001),
            WeekRow(week=1, iso_week="2025-W42", labels_spent=1080, dataset_version=2, model_version=2, promoted=False,
                    why="slice weather=rain regressed by 0.031", production=1, map_overall=0.297, map_rain=0.160,
                    map_night=0.016, map_green=0.0)]

    def render(width: int) -> str:
        out = io.StringIO()
        monkeypatch.setattr(cli_demo, "console", Console(file=out, width=width, color_system=None))
        cli_demo.print_table(DemoResult(rows=rows, prefect_ui="", label_studio="", label_studio_login="", plot=None, state=""))
        return out.getvalue()

    text = render(80)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for cell in ("0 W41", "1,080", "0.234", "0.160", "0.016", "v1 promoted", "v2 not promoted"):
        assert cell in text, text
    for width in (71, 50):  # narrower than the numbers need: a paragraph per week, nothing cut
        printed = render(width)
        text = " ".join(printed.split())
        assert "…" not in text and max(len(line) for line in printed.splitlines()) <= width
        for cell in ("week 1 (2025-W42)", "1,080 labels", "dataset v2", "mAP 0.297", "rain 0.160", "night 0.016",
                     "green cones 0.000", "v2 not promoted: slice weather=rain regressed by 0.031"):
            assert cell in text, text


def test_every_command_list_entry_is_one_paragraph_without_ragged_line_breaks():
    """typer's rich formatter keeps a docstring's single line breaks in the command lists of
    ``--help``; each command's summary is its first paragraph on one line."""
    def walk(cmd, path: str):
        if hasattr(cmd, "commands"):  # a group (typer may vendor click: no isinstance)
            for name, sub in cmd.commands.items():
                yield from walk(sub, f"{path} {name}")
        else:
            yield path, cmd

    commands = list(walk(typer.main.get_command(app), "fleetloop"))
    assert len(commands) > 20
    for path, cmd in commands:
        summary = cmd.short_help or ""
        assert summary and "\n" not in summary, path
        assert "  " not in summary, path
    result = runner.invoke(app, ["label", "--help"], terminal_width=80)
    assert result.exit_code == 0
    line = next(x for x in result.output.splitlines() if "watermark)," in x)
    assert not line.rstrip(" │").endswith("watermark),"), line  # the sentence goes on on the same line


def test_sync_of_every_open_campaign_passes_page_and_shard_sizes_and_goes_on_after_a_failure(empty_home, monkeypatch) -> None:
    """``fleetloop label sync --page-size P --shard-size S`` without --campaign: each open
    campaign is synced with those sizes (they were dropped), and one failing campaign is reported
    while the next is still synced. Label Studio itself is outside this test: the per-campaign
    sync is recorded, not run (tests/integration covers it against a real server)."""
    from fleetloop.label import api, index
    from fleetloop.label.sync import SyncReport
    from fleetloop.store.objects import LocalStore

    store = LocalStore(get_settings().store_root)
    for name in ("fleetloop-2026-w48", "fleetloop-2026-w49"):
        index.register(store, name)
    calls: list[tuple[str, int, int]] = []

    def fake_sync(campaign, settings, *, validate=None, page_size=100, shard_size=5000):
        calls.append((campaign, page_size, shard_size))
        if campaign.endswith("w48"):
            raise RuntimeError("project 7 was deleted")
        return SyncReport(campaign=campaign, project_id=8)

    monkeypatch.setattr(api, "sync_campaign", fake_sync)
    res = runner.invoke(app, ["label", "sync", "--page-size", "250", "--shard-size", "40", "--json"])
    assert calls == [("fleetloop-2026-w48", 250, 40), ("fleetloop-2026-w49", 250, 40)]
    doc = json.loads(res.stdout)
    assert res.exit_code == 3 and doc["campaigns"] == ["fleetloop-2026-w49"]
    assert "project 7 was deleted" in doc["failed"]["fleetloop-2026-w48"]


@pytest.mark.parametrize("argv, code, json_needle, err_needle", [
    (["registry", "list", "--bogus", "--json"], 2, "No such option: --bogus", "No such option"),
    (["mine", "x", "--out", "y.csv", "--budget", "0", "--json"], 2, "greater than or equal to 1", "--budget"),
    (["registry", "list", "--json"], 0, None, None),
    (["retrain", "--json"], 2, "no version yet", "no version yet"),
    (["registry", "list", "--bogus"], 2, None, "No such option"),
])
def test_the_console_script_keeps_exit_codes_and_answers_usage_errors_in_json(empty_home, monkeypatch, capsys, argv,
                                                                             code, json_needle, err_needle):
    """``main()`` (the ``fleetloop`` script): a usage error is shown as typer shows it, exit 2, and
    with ``--json`` stdout is still one JSON document; a command's own exit code comes through."""
    import sys

    from fleetloop.cli import main

    monkeypatch.setattr(sys, "argv", ["fleetloop", *argv])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == code
    out, err = capsys.readouterr()
    if json_needle is not None:
        doc = json.loads(out)
        assert doc["ok"] is False and json_needle in doc["error"]
    elif "--json" in argv:
        assert json.loads(out) == []
    else:
        assert out == ""
    if err_needle is not None:
        assert err_needle in err


@pytest.mark.parametrize("as_json", [False, True])
def test_ctrl_c_in_any_command_is_one_line_exit_130(empty_home, monkeypatch, capsys, as_json):
    """Ctrl-C in a command that does not catch it itself (here while ``logs list`` reads the
    store): exit 130 as a shell counts an interruption, one line (click printed "Aborted!" and
    exited 1, as if the command had failed), and with ``--json`` one JSON document."""
    import sys

    from fleetloop.cli import main
    from fleetloop.store import objects

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(objects, "get_store", interrupted)
    monkeypatch.setattr(sys, "argv", ["fleetloop", "logs", "list", *(["--json"] if as_json else [])])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 130
    out, err = capsys.readouterr()
    line = "interrupted by SIGINT (Ctrl-C); what finished is kept: run it again"
    assert err.strip() == f"fleetloop: {line}" and "Aborted!" not in err
    assert (json.loads(out) == {"ok": False, "error": line}) if as_json else out == ""


def test_a_second_demo_on_the_same_home_stops_at_once_naming_the_first(empty_home, tmp_path):
    """While a demo runs on a home (it holds ``<home>/.demo.lock``), ``fleetloop demo`` there fails
    before it starts anything, naming the running one's pid; once that ends the lock is free."""
    import subprocess
    import sys

    from fleetloop.demo import DemoBusy, _one_demo
    from fleetloop.settings import get_settings

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom fleetloop.store.locks import file_lock\n"
         f"with file_lock(Path({str(empty_home / '.demo.lock')!r})):\n    print('held', flush=True)\n    sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        res = runner.invoke(app, ["demo", "--json"])
        assert res.exit_code == 1, res.output
        error = json.loads(res.stdout)["error"]
        assert f"another `fleetloop demo` (pid {holder.pid}) is running on {empty_home.resolve()}" in error
        assert not (empty_home / "services").exists() and not (empty_home / "demo").exists()  # nothing started
    finally:
        holder.communicate("", timeout=30)
    # free again; and while this process holds it, a second one is refused
    with _one_demo(get_settings()), pytest.raises(DemoBusy), _one_demo(get_settings()):
        pass


def test_help_lists_every_command_in_the_loops_order_and_panels():
    from fleetloop.cli import PANELS

    res = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    listed = [line.split()[1] for line in res.stdout.splitlines()
              if line.startswith("│ ") and line[2] not in " -"]  # a command's first line, not an option
    assert listed == [name for names in PANELS.values() for name in names], "every command sits in one panel, in order"
    assert all(title in res.stdout for title in PANELS) and "Other" not in res.stdout


def test_keep_whole_never_cuts_the_columns_it_names():
    import io

    from rich.console import Console
    from rich.table import Table

    from fleetloop.cli.output import keep_whole

    def table() -> Table:
        t = Table("version", "created", "why")
        t.add_row("12", "2026-12-06T17:48:08", "a long reason that can wrap over as many lines as it needs " * 2)
        return t

    def shown(t: Table) -> str:
        console = Console(width=50, record=True, file=io.StringIO())
        console.print(t)
        return console.export_text()

    assert "2026-12-06T17:48:08" not in shown(table())  # what it prevents: the date wrapped or cut
    assert "2026-12-06T17:48:08" in shown(keep_whole(table(), "created"))
