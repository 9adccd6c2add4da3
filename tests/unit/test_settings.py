"""One settings object from the environment; secrets never show in its text forms."""

from __future__ import annotations

import pytest

from fleetloop.settings import Settings, get_settings


@pytest.fixture
def secret_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FLEETLOOP_HOME", str(tmp_path))
    monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "s3")
    monkeypatch.setenv("FLEETLOOP_STORAGE__S3__BUCKET", "fleet-logs")
    monkeypatch.setenv("FLEETLOOP_STORAGE__S3__ACCESS_KEY_ID", "AKIA-not-a-real-key")
    monkeypatch.setenv("FLEETLOOP_STORAGE__S3__SECRET_ACCESS_KEY", "s3-secret-value-123")
    monkeypatch.setenv("FLEETLOOP_LABEL_STUDIO__TOKEN", "ls-token-value-456")
    monkeypatch.setenv("FLEETLOOP_PREFECT__WEEKLY_CRON", "30 2 * * 0")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_nested_settings_come_from_the_environment(secret_env):
    s = get_settings()
    assert s.storage.backend == "s3" and s.storage.s3.bucket == "fleet-logs"
    assert s.prefect.weekly_cron == "30 2 * * 0" and s.prefect.timezone == "UTC"
    assert s.storage.s3.secret_access_key.get_secret_value() == "s3-secret-value-123"


def test_secrets_are_not_in_repr_str_or_json(secret_env):
    s = get_settings()
    for text in (repr(s), str(s), s.model_dump_json(), repr(s.storage), str(s.label_studio)):
        assert "s3-secret-value-123" not in text and "ls-token-value-456" not in text
        assert "AKIA-not-a-real-key" not in text


def test_a_bad_value_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("FLEETLOOP_STORAGE__BACKEND", "ftp")
    with pytest.raises(ValueError, match="backend"):
        Settings()


def test_the_cli_reports_bad_settings_without_a_traceback(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "FLEETLOOP_HOME": str(tmp_path), "FLEETLOOP_STORAGE__BACKEND": "ftp"}
    env.pop("FLEETLOOP_DEBUG", None)
    res = subprocess.run([sys.executable, "-m", "fleetloop", "logs", "list"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2
    assert "invalid settings" in res.stderr and "storage.backend" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("bad", [{"FLEETLOOP_STORAGE__BACKEND": "ftp"}, {"FLEETLOOP_STORAGE": "{bad"},
                                 {"FLEETLOOP_STORAGE__BACKEND": "s3", "FLEETLOOP_STORAGE__S3__ENDPOINT_URL": "notaurl"}])
def test_bad_settings_with_json_answer_in_json_in_one_line(tmp_path, bad):
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "FLEETLOOP_HOME": str(tmp_path), **bad}
    env.pop("FLEETLOOP_DEBUG", None)
    for argv in (["logs", "list", "--json"], ["registry", "list", "--json"]):
        res = subprocess.run([sys.executable, "-m", "fleetloop", *argv], env=env, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 2, res.stdout + res.stderr
        doc = json.loads(res.stdout)
        assert doc["ok"] is False and doc["error"].startswith("invalid settings"), doc
        assert "\n" not in doc["error"] and "errors.pydantic.dev" not in res.stdout + res.stderr
