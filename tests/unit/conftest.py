"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> Path:
    """Two simulated logs of 60 frames in fleetloop's parquet layout (``fleetloop sample``), one
    copy per test module."""
    from fleetloop.cli import app

    out = tmp_path_factory.mktemp("sample")
    res = CliRunner().invoke(app, ["sample", str(out), "--logs", "2", "--frames", "60"])
    assert res.exit_code == 0, res.output
    return out
