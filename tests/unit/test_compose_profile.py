"""The production profile (tests/production) takes its settings from infra/docker-compose.yaml: a
setting it needs that the compose file loses, or a version the two disagree on, fails here."""

from __future__ import annotations

import copy
from importlib.metadata import version

import pytest

from fleetloop.local.label_studio import LABEL_STUDIO_SPEC
from tests.production import compose
from tests.production.compose import Address, ComposeError

VARIABLES = {
    "PREFECT_DB_PASSWORD": "pdb", "MINIO_ROOT_USER": "s3user", "MINIO_ROOT_PASSWORD": "miniopw",
    "LABEL_STUDIO_DB_PASSWORD": "lsdb", "LABEL_STUDIO_SECRET_KEY": "secret", "LABEL_STUDIO_PASSWORD": "lspw",
    "LABEL_STUDIO_TOKEN": "t" * 40,
}
ADDRESSES = {
    ("prefect-db", 5432): Address("127.0.0.1", 15432), ("label-studio-db", 5432): Address("127.0.0.1", 15432),
    ("prefect-server", 4200): Address("127.0.0.1", 14200), ("label-studio", 8080): Address("127.0.0.1", 18080),
    ("minio", 9000): Address("127.0.0.1", 19000),
}
SERVICE_NAMES = ("prefect-db", "prefect-server", "label-studio-db", "label-studio", "minio")


@pytest.mark.parametrize("service", sorted(compose.REQUIRED))
def test_every_setting_the_profile_needs_is_in_the_compose_file(service: str) -> None:
    env = compose.service_env(service, VARIABLES, ADDRESSES)
    assert set(compose.REQUIRED[service]) <= set(env)
    assert not [v for v in env.values() if "${" in v], env
    assert not [v for v in env.values() if any(f"{name}:" in v or v == name for name in SERVICE_NAMES)], env


def test_the_profile_sees_the_compose_values_on_loopback() -> None:
    prefect = compose.service_env("prefect-server", VARIABLES, ADDRESSES)
    assert prefect["PREFECT_API_DATABASE_CONNECTION_URL"] == "postgresql+asyncpg://prefect:pdb@127.0.0.1:15432/prefect"
    ls = compose.service_env("label-studio", VARIABLES, ADDRESSES)
    assert (ls["DJANGO_DB"], ls["POSTGRE_HOST"], ls["POSTGRE_PORT"], ls["POSTGRE_PASSWORD"]) == (
        "default", "127.0.0.1", "15432", "lsdb")
    assert ls["LABEL_STUDIO_USER_TOKEN"] == "t" * 40 and ls["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    worker = compose.service_env("worker", VARIABLES, ADDRESSES)
    assert worker["PREFECT_API_URL"] == "http://127.0.0.1:14200/api"
    assert worker["FLEETLOOP_LABEL_STUDIO__URL"] == "http://127.0.0.1:18080"
    assert worker["FLEETLOOP_STORAGE__S3__ENDPOINT_URL"] == "http://127.0.0.1:19000"  # the default, http://minio:9000
    assert worker["FLEETLOOP_STORAGE__BACKEND"] == "s3" and worker["FLEETLOOP_STORAGE__S3__BUCKET"] == "fleetloop"
    assert compose.prefect_server_argv("127.0.0.1", 14200) == [
        "server", "start", "--host", "127.0.0.1", "--port", "14200", "--analytics-off"]


def test_a_setting_removed_from_the_compose_file_fails_the_profile() -> None:
    spec = copy.deepcopy(compose.load())
    del spec["services"]["label-studio"]["environment"]["POSTGRE_HOST"]
    with pytest.raises(ComposeError, match="'label-studio' service no longer sets POSTGRE_HOST"):
        compose.service_env("label-studio", VARIABLES, ADDRESSES, spec)


def test_a_missing_secret_fails_like_compose_does() -> None:
    with pytest.raises(ComposeError, match="LABEL_STUDIO_TOKEN"):
        compose.service_env("worker", {k: v for k, v in VARIABLES.items() if k != "LABEL_STUDIO_TOKEN"}, ADDRESSES)


def test_interpolation_follows_compose() -> None:
    v = {"SET": "x", "EMPTY": ""}
    assert compose.interpolate("${SET:-d}/${UNSET:-d}/${EMPTY:-d}/${EMPTY-d}/${UNSET-d}", v) == "x/d/d//d"
    assert compose.interpolate("$$HOME ${SET} ${UNSET}", v) == "$HOME x "
    with pytest.raises(ComposeError, match="say why"):
        compose.interpolate("${EMPTY:?say why}", v)
    assert compose.interpolate("${EMPTY?fine when set}", v) == ""


def test_the_compose_images_match_the_versions_fleetloop_is_tested_with() -> None:
    assert compose.image_tag("prefect-server").startswith(version("prefect") + "-")
    ls = compose.image_tag("label-studio")  # LABEL_STUDIO_SPEC is ">=1.23,<1.24"
    assert ls.startswith("1.23.") and ">=1.23,<1.24" in LABEL_STUDIO_SPEC


def test_without_postgresql_the_profile_says_how_to_get_it(monkeypatch) -> None:
    from tests.production import postgres

    monkeypatch.delenv("FLEETLOOP_TEST_PG_BIN", raising=False)
    monkeypatch.setattr(postgres.shutil, "which", lambda _name: None)
    monkeypatch.setattr(postgres.glob, "glob", lambda _pattern: [])
    with pytest.raises(postgres.PostgresUnavailable, match="apt-get install postgresql"):
        postgres.find_bindir()
