"""Shared fixtures. Tests that need the real KITTI slice skip with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.process_guard import (  # noqa: F401  (hooks: the suite fails when a test leaves a process running)
    pytest_sessionfinish,
    pytest_sessionstart,
    pytest_terminal_summary,
)

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

# Prefect configures logging once, at import, binding its console handler to the sys.stderr of that
# moment. Import it here, against the session's stream: imported first inside a CliRunner call, the
# handler would keep the runner's temporary stream, closed when the call returns, and every later
# log line in the session (servers, flows) would fail with "I/O operation on closed file".
import prefect.main  # noqa: F401  (prefect.main is where the setup runs; `import prefect` is lazy)

KITTI_ROOT = Path(
    os.environ.get("FLEETLOOP_KITTI_ROOT", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kitti-tracking")
)


@pytest.fixture(scope="session")
def kitti_root() -> Path:
    if not (KITTI_ROOT / "calib").is_dir():
        pytest.skip(f"KITTI slice not found at {KITTI_ROOT} (../shared is absent on a fresh clone)")
    return KITTI_ROOT


@pytest.fixture(scope="module")
def prefect_api():
    """A real Prefect API for the module: Prefect's test harness (a server process on loopback)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield PREFECT_API_URL.value()
