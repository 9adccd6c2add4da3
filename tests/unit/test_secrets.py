"""Secrets hygiene: a Label Studio token, S3 keys and credentials embedded in URLs
(``https://user:pass@host``) never reach a person (error messages, ``--json`` output, service
status) or a file that is not meant to hold them (the committed ``.dvc/config``, presigned URLs
handed to Label Studio). Unreachable services are closed loopback ports."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fleetloop.cli import app
from fleetloop.settings import get_settings

runner = CliRunner()

TOKEN = "SECRET-TOKEN-123"
SECRETS = ("hunter2", "fakesecret", TOKEN, "pw123")
CLOSED = "127.0.0.1:9"  # nothing listens on the discard port


def _clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked: {text}"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "local")
    for k in ("FLEETLOOP_LABEL_STUDIO__URL", "FLEETLOOP_LABEL_STUDIO__TOKEN", "FLEETLOOP_PREFECT__API_URL",
              "PREFECT_API_URL", "FLEETLOOP_DATASET__GIT_REMOTE", "FLEETLOOP_DATASET__DVC_REMOTE_URL"):
        monkeypatch.delenv(k, raising=False)
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


def test_redact_masks_url_credentials_only():
    from fleetloop.settings import redact

    assert redact("at https://bob:hunter2@example.invalid/repo.git: x") == "at https://***@example.invalid/repo.git: x"
    assert redact('"http://AKIAFAKE:fakesecret@127.0.0.1:9/b?k=a@b"') == '"http://***@127.0.0.1:9/b?k=a@b"'
    assert redact("https://bob:p@ss@host/r") == "https://***@host/r"
    # a password holding / ? # (a generated one; unencoded): masked whole (before: 'https://u:ab/cd@host' as it was)
    assert redact("git https://u:ab/cd+e=@host/r.git x") == "git https://***@host/r.git x"
    assert redact("https://u:a?b#c/d@host") == "https://***@host"
    for plain in ("s3://fleetloop/dvc", "mail bob@example.com", "https://host/a@b", "/tmp/x@y",
                  "https://host:8080/a@b", "http://127.0.0.1:9/api/x@y"):
        assert redact(plain) == plain


def test_label_errors_mask_the_url_credentials_and_never_show_the_token(home, monkeypatch):
    monkeypatch.setenv("FLEETLOOP_LABEL_STUDIO__URL", f"http://bob:hunter2@{CLOSED}")
    monkeypatch.setenv("FLEETLOOP_LABEL_STUDIO__TOKEN", TOKEN)
    get_settings.cache_clear()
    for args in (["label", "status", "--campaign", "fleetloop-2026-w49", "--json"],
                 ["label", "sync", "--campaign", "fleetloop-2026-w49", "--json"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        doc = json.loads(result.stdout)
        assert doc["ok"] is False and f"http://***@{CLOSED}" in doc["error"]
        _clean(result.output)


def test_label_studio_client_keeps_the_credentials_for_requests_only():
    from fleetloop.label.client import LabelStudioClient

    with LabelStudioClient(f"http://bob:hunter2@{CLOSED}/", TOKEN) as client:
        assert client.url == f"http://***@{CLOSED}"
        assert client._http.base_url.password == "hunter2"  # still used to connect
        _clean(repr(vars(client).get("url")))


def test_services_status_masks_configured_server_urls(home, monkeypatch):
    monkeypatch.setenv("FLEETLOOP_LABEL_STUDIO__URL", f"http://bob:hunter2@{CLOSED}")
    monkeypatch.setenv("FLEETLOOP_LABEL_STUDIO__TOKEN", TOKEN)
    monkeypatch.setenv("FLEETLOOP_PREFECT__API_URL", f"http://carol:pw123@{CLOSED}/api")
    monkeypatch.setenv("COLUMNS", "200")
    get_settings.cache_clear()
    result = runner.invoke(app, ["services", "status", "--json"])
    doc = json.loads(result.stdout)
    assert doc["label-studio"]["url"] == f"http://***@{CLOSED}"
    assert doc["prefect"]["url"] == f"http://***@{CLOSED}"
    _clean(result.output)
    _clean(runner.invoke(app, ["services", "status"]).output)


def test_dataset_commands_mask_a_git_remote_with_credentials(home, monkeypatch, tmp_path):
    remote = f"https://bob:hunter2@{CLOSED}/repo.git"
    monkeypatch.setenv("FLEETLOOP_DATASET__GIT_REMOTE", remote)
    get_settings.cache_clear()
    status = runner.invoke(app, ["dataset", "status", "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["git_remote"] == f"https://***@{CLOSED}/repo.git"
    _clean(status.output)
    for args in (["dataset", "grow", "--json"], ["dataset", "checkout", "1", "--to", str(tmp_path / "co"), "--json"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "git ls-remote" in json.loads(result.stdout)["error"]
        _clean(result.output)


@pytest.fixture
def s3_home(home, monkeypatch):
    monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "s3")
    monkeypatch.setenv("FLEETLOOP_STORAGE__S3__ENDPOINT_URL", f"http://AKIAFAKE:fakesecret@{CLOSED}")
    monkeypatch.setenv("FLEETLOOP_STORAGE__S3__ACCESS_KEY_ID", "AKIAFAKE")
    monkeypatch.setenv("FLEETLOOP_STORAGE__S3__SECRET_ACCESS_KEY", "fakesecret")
    monkeypatch.setenv("FLEETLOOP_STORAGE__S3__MAX_ATTEMPTS", "1")
    monkeypatch.setenv("FLEETLOOP_STORAGE__S3__CONNECT_TIMEOUT_S", "1")
    get_settings.cache_clear()
    return home


def test_storage_errors_mask_an_endpoint_with_credentials(s3_home):
    for args in (["logs", "list", "--json"], ["registry", "list", "--json"]):
        result = runner.invoke(app, args)
        assert result.exit_code != 0, result.output
        assert f"http://***@{CLOSED}" in json.loads(result.stdout)["error"]
        _clean(result.output)


def test_presigned_urls_and_store_location_carry_no_credentials(s3_home):
    from fleetloop.store.objects import get_store

    store = get_store(get_settings())
    _clean(store.location)
    url = store.url_for("frames/a.png")
    assert url.startswith(f"http://{CLOSED}/fleetloop/frames/a.png?") and "X-Amz-Signature=" in url
    _clean(url)


def test_the_committed_dvc_config_holds_no_endpoint_credentials(s3_home):
    from fleetloop.dataset.config import dataset_config
    from fleetloop.dataset.dvc import _remote_section

    section = _remote_section(dataset_config(get_settings()))
    assert section["endpointurl"] == f"http://{CLOSED}"
    _clean(json.dumps(section))


def test_the_errors_themselves_hold_no_url_credentials(s3_home, tmp_path):
    """Not only the CLI's output: the exceptions flows log and Prefect records are masked too."""
    from fleetloop.dataset.config import DatasetError, dataset_config
    from fleetloop.dataset.dvc import Repo
    from fleetloop.label.client import LabelStudioClient, LabelStudioError
    from fleetloop.store.objects import StorageError, get_store

    with pytest.raises(DatasetError) as git_error:
        Repo(tmp_path, dataset_config(get_settings())).git("ls-remote", f"https://bob:hunter2@{CLOSED}/r.git")
    assert f"https://***@{CLOSED}/r.git" in str(git_error.value)
    with pytest.raises(StorageError) as s3_error:
        get_store(get_settings()).list("logs/")
    with LabelStudioClient(f"http://bob:hunter2@{CLOSED}", TOKEN) as client, pytest.raises(LabelStudioError) as ls_error:
        client.whoami()
    for exc in (git_error.value, s3_error.value, ls_error.value):
        _clean(str(exc))


def test_dataset_status_text_masks_the_remotes_credentials(home, monkeypatch):
    monkeypatch.setenv("FLEETLOOP_DATASET__GIT_REMOTE", f"https://bob:hunter2@{CLOSED}/repo.git")
    monkeypatch.setenv("FLEETLOOP_DATASET__DVC_REMOTE_URL", f"https://bob:hunter2@{CLOSED}/dvc")
    get_settings.cache_clear()
    res = runner.invoke(app, ["dataset", "status"], env={"COLUMNS": "200"})
    assert "https://***@127.0.0.1:9/dvc" in res.output, res.output
    _clean(res.output)


def test_the_webhook_secret_is_never_readable_by_others(home, monkeypatch):
    """It was written with the default mode and narrowed after: readable by others for a moment."""
    import os
    import stat

    from fleetloop.store import atomic

    modes: list[int] = []
    real = atomic.write_atomic

    def spy(path, content, *, mode=0o644, tmp_mark="."):
        modes.append(mode)
        return real(path, content, mode=mode, tmp_mark=tmp_mark)

    monkeypatch.setattr(atomic, "write_atomic", spy)
    monkeypatch.setenv("FLEETLOOP_LABEL_STUDIO__URL", f"http://{CLOSED}")
    monkeypatch.setenv("FLEETLOOP_LABEL_STUDIO__TOKEN", TOKEN)
    get_settings.cache_clear()
    res = runner.invoke(app, ["label", "listen", "-c", "fleetloop-2026-w49", "--port", "0"])  # fails at the server, after the secret
    _clean(res.output)
    secret = home.resolve() / "labeling" / "webhook-secret"
    assert secret.is_file() and modes == [0o600]
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
