"""Settings as people get them wrong (outside review): a misspelt FLEETLOOP_* name, a .env line
python-dotenv cannot read, numbers and paths that make no sense, a section's JSON that does not
parse. Each is said on the command line: a warning naming the nearest setting, or one line and
exit 2 (with --json also one JSON document on stdout), never a default used in silence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from fleetloop.settings import Settings, get_settings


def _cli(tmp_path: Path, *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None,
         home: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m fleetloop argv`` in ``cwd`` (default: an empty directory) with no FLEETLOOP_*
    setting but ``FLEETLOOP_HOME`` (``home``; default a folder of ``tmp_path``) and ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLEETLOOP_") or k.startswith("FLEETLOOP_TEST_")}
    clean["FLEETLOOP_HOME"] = str(tmp_path / "home") if home is None else home
    work = cwd or tmp_path / "work"
    work.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "fleetloop", *argv], env={**clean, **(env or {})}, cwd=work,
                          capture_output=True, text=True, timeout=120)


def _refused(res: subprocess.CompletedProcess[str]) -> str:
    """The error of a --json command refused for its settings: exit 2, one JSON document, one line."""
    assert res.returncode == 2, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["ok"] is False and doc["error"].startswith("invalid settings"), doc
    assert "\n" not in doc["error"] and "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1, res.stderr  # one line, nothing from python-dotenv
    return str(doc["error"])


@pytest.fixture
def clean_env(monkeypatch):
    for name in [k for k in os.environ if k.startswith("FLEETLOOP_") and not k.startswith("FLEETLOOP_TEST_")]:
        monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


# -- a FLEETLOOP_* name that no setting reads -------------------------------------------------


def test_a_misspelt_setting_is_named_on_stderr_with_the_nearest_one(tmp_path):
    env = {"FLEETLOOP_STORAGE__BAKEND": "s3", "FLEETLOOP_STORAGE_BACKEND": "s3",
           # read elsewhere, not settings: no warning
           "FLEETLOOP_PARAMS": str(tmp_path / "params.yaml"), "FLEETLOOP_ACTOR": "me", "FLEETLOOP_TEST_WHATEVER": "1"}
    res = _cli(tmp_path, "logs", "list", "--json", env=env)
    assert res.returncode == 0 and json.loads(res.stdout) == [], res.stdout + res.stderr  # stdout stays JSON
    lines = res.stderr.splitlines()
    assert len(lines) == 2, res.stderr
    assert any("FLEETLOOP_STORAGE__BAKEND is not a setting" in ln for ln in lines)
    assert any("FLEETLOOP_STORAGE_BACKEND is not a setting" in ln for ln in lines)
    assert all("did you mean FLEETLOOP_STORAGE__BACKEND?" in ln for ln in lines)


def test_a_misspelt_setting_in_dotenv_is_named_too_and_a_real_one_is_not(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / ".env").write_text("OTHER_TOOL=1\nFLEETLOOP_STORAGE__S3__SECRET_KEY=abc\nFLEETLOOP_PREFECT__PORT=4300\n")
    res = _cli(tmp_path, "logs", "list", "--json", cwd=work)
    assert res.returncode == 0 and json.loads(res.stdout) == []
    assert res.stderr.strip() == ("fleetloop: warning: FLEETLOOP_STORAGE__S3__SECRET_KEY is not a setting, ignored "
                                  "(did you mean FLEETLOOP_STORAGE__S3__SECRET_ACCESS_KEY?)")
    assert "abc" not in res.stderr


def test_a_misspelt_key_of_a_section_given_as_json_is_named_and_a_real_one_in_any_case_is_not(tmp_path):
    """Before, a key no setting reads inside a section's JSON (``FLEETLOOP_STORAGE='{"s3":
    {"buckt": ..}}'``) was dropped without a word and the setting kept its default, where the same
    typo as a variable name was named. Keys are not case-sensitive (``"S3"``, ``"Region"`` are
    read): those are not named."""
    work = tmp_path / "work"
    work.mkdir()
    (work / ".env").write_text('FLEETLOOP_PREFECT={"api_urll": "http://127.0.0.1:4200/api"}\n')
    env = {"FLEETLOOP_STORAGE": '{"backend": "local", "S3": {"buckt": "b", "Region": "eu-west-1", '
                                '"secret_key": "abc"}}',
           "FLEETLOOP_LABEL_STUDIO": '{"URL": "http://127.0.0.1:8080", "tokne": "t0k3n"}'}
    res = _cli(tmp_path, "logs", "list", "--json", env=env, cwd=work)
    assert res.returncode == 0 and json.loads(res.stdout) == [], res.stdout + res.stderr
    assert sorted(res.stderr.splitlines()) == [
        "fleetloop: warning: FLEETLOOP_LABEL_STUDIO: key 'tokne' is not a setting, ignored (did you mean 'token'?)",
        "fleetloop: warning: FLEETLOOP_PREFECT: key 'api_urll' is not a setting, ignored (did you mean 'api_url'?)",
        "fleetloop: warning: FLEETLOOP_STORAGE.S3: key 'buckt' is not a setting, ignored (did you mean 'bucket'?)",
        "fleetloop: warning: FLEETLOOP_STORAGE.S3: key 'secret_key' is not a setting, ignored "
        "(did you mean 'secret_access_key'?)",
    ], res.stderr
    assert "abc" not in res.stderr and "t0k3n" not in res.stderr


# -- a .env line python-dotenv cannot read ----------------------------------------------------


@pytest.mark.parametrize("line", ["FLEETLOOP_STORAGE__BACKEND s3", 'FLEETLOOP_STORAGE__BACKEND="s3',
                                  "export FLEETLOOP_STORAGE__BACKEND 's3'"])
def test_a_fleetloop_line_of_dotenv_that_is_not_read_is_an_error(tmp_path, line):
    work = tmp_path / "work"
    work.mkdir()
    (work / ".env").write_text(f"some other tool's line\n{line}\n")  # another tool's line: python-dotenv's business
    error = _refused(_cli(tmp_path, "logs", "list", "--json", cwd=work))
    assert f"{work / '.env'} line 2: FLEETLOOP_STORAGE__BACKEND is not read" in error


def test_a_dotenv_that_is_not_utf8_is_one_line_exit_2(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / ".env").write_bytes(b"FLEETLOOP_STORAGE__S3__BUCKET=caf\xe9\n")
    error = _refused(_cli(tmp_path, "registry", "list", "--json", cwd=work))
    assert error.endswith(f"{work / '.env'} is not UTF-8 text")


# -- values that make no sense ----------------------------------------------------------------


@pytest.mark.parametrize(("name", "value", "where"), [
    ("FLEETLOOP_PREFECT__PORT", "0", "prefect.port"),
    ("FLEETLOOP_LABEL_STUDIO__PORT", "70000", "label_studio.port"),
    ("FLEETLOOP_STORAGE__S3__CONNECT_TIMEOUT_S", "-1", "storage.s3.connect_timeout_s"),
    ("FLEETLOOP_STORAGE__S3__READ_TIMEOUT_S", "0", "storage.s3.read_timeout_s"),
    ("FLEETLOOP_STORAGE__S3__MAX_ATTEMPTS", "0", "storage.s3.max_attempts"),
    ("FLEETLOOP_PREFECT__DASK_WORKERS", "0", "prefect.dask_workers"),
    ("FLEETLOOP_PREFECT__TIMEZONE", "Europe/Pari", "prefect.timezone"),
    ("FLEETLOOP_HOME", "", "home"),
    ("FLEETLOOP_STORAGE__LOCAL_ROOT", " ", "storage.local_root"),
    ("FLEETLOOP_DATASET__REPO_DIR", "", "dataset.repo_dir"),
])
def test_a_value_that_makes_no_sense_is_refused(clean_env, name, value, where):
    clean_env.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)
    assert [".".join(map(str, e["loc"])) for e in info.value.errors()] == [where]


def test_a_port_out_of_range_and_an_empty_home_are_refused_on_the_command_line(tmp_path):
    error = _refused(_cli(tmp_path, "services", "status", "--json", env={"FLEETLOOP_PREFECT__PORT": "70000"}))
    assert "prefect.port: Input should be less than or equal to 65535" in error
    error = _refused(_cli(tmp_path, "logs", "list", "--json", home=""))  # FLEETLOOP_HOME=$UNSET: not the cwd
    assert "home: is empty" in error
    assert not (tmp_path / "work" / "store").exists()


def test_home_with_a_tilde_is_the_users_home_for_the_store_and_the_dataset_alike(clean_env, tmp_path):
    from fleetloop.dataset.config import dataset_config

    clean_env.setenv("HOME", str(tmp_path / "user"))
    clean_env.chdir(tmp_path)
    (tmp_path / ".env").write_text("FLEETLOOP_HOME=~/fleet\n")  # .env: no shell expands the ~
    s = get_settings()
    assert s.home == tmp_path / "user" / "fleet"
    assert s.store_root == tmp_path / "user" / "fleet" / "store"
    assert dataset_config(s).repo_dir == tmp_path / "user" / "fleet" / "dataset"


def test_a_relative_home_is_made_absolute_when_read(clean_env, tmp_path):
    clean_env.chdir(tmp_path)
    clean_env.setenv("FLEETLOOP_HOME", "state")
    s = Settings(_env_file=None)
    assert s.home == tmp_path / "state" and s.home.is_absolute()
    assert Settings(_env_file=None, home=Path(".fleetloop")).home == tmp_path / ".fleetloop"


# -- what the error says ----------------------------------------------------------------------


def test_a_section_given_as_broken_json_says_so_and_not_its_secrets(tmp_path):
    env = {"FLEETLOOP_STORAGE__S3": '{"secret_access_key": "s3-secret-value-123", "bucket": '}
    error = _refused(_cli(tmp_path, "logs", "list", "--json", env=env))
    assert 'field "storage"' in error and "not valid JSON (Expecting value at character" in error
    assert "s3-secret-value-123" not in error


def test_an_endpoint_that_is_no_http_url_says_what_is_expected_not_the_value(tmp_path):
    env = {"FLEETLOOP_STORAGE__BACKEND": "s3", "FLEETLOOP_STORAGE__S3__ENDPOINT_URL": "minio:9000"}
    res = _cli(tmp_path, "logs", "list", "--json", env=env)
    error = _refused(res)
    assert error.endswith("storage.s3.endpoint_url: must be an http:// or https:// URL, e.g. http://minio:9000")
    assert "minio:9000'" not in res.stdout + res.stderr and "pattern" not in error
