"""``fleetloop retrain`` trains with exactly the params file it validated, and "already trained"
includes the model a warm start began from.

- ``FLEETLOOP_PARAMS=/x/other/custom.yaml`` (no params.yaml or dvc.yaml beside it): the workspace
  gets custom.yaml as its params.yaml and the repository's dvc.yaml; dvc.lock, the registry's
  lineage and the reuse check all see custom.yaml's train params.
- With ``train.warm_start`` and a newer production model, a retrain on a dataset version already
  trained with the same params trains again from that production model (before: it reused the old
  version, moved candidate back to it and recorded a new rejection); a version reused against a
  production that already rejected it is not gated again.
"""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import yaml

from fleetloop.params import load_params
from fleetloop.registry import Registry
from fleetloop.retrain import retrain_latest
from tests.production.world import build, pipeline_params, settings_from


def test_custom_params_file_is_what_trains_and_a_newer_production_retrains_the_candidate(tmp_path: Path) -> None:
    base = yaml.safe_load(pipeline_params(tmp_path / "pipeline").read_text())
    base["train"].update(epochs=2, finetune_epochs=1, seed=7, warm_start=True)
    custom = tmp_path / "x" / "other" / "custom.yaml"
    custom.parent.mkdir(parents=True)
    custom.write_text("# a team's own params file\n" + yaml.safe_dump(base, sort_keys=False))
    assert not (custom.parent / "params.yaml").exists() and not (custom.parent / "dvc.yaml").exists()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("FLEETLOOP_")},
           "FLEETLOOP_HOME": str(tmp_path / "home"), "FLEETLOOP_STORAGE__BACKEND": "local",
           "FLEETLOOP_PARAMS": str(custom)}
    world = build(env, tmp_path / "world")
    settings = settings_from(env)
    with mock.patch.dict(os.environ, {"FLEETLOOP_PARAMS": str(custom)}):
        loop = load_params()
        assert loop.train.epochs == 2 and loop.train.seed == 7
        first = retrain_latest(settings, loop, who="test")

        workspace = Path(settings.home) / "train"
        assert (workspace / "params.yaml").read_bytes() == custom.read_bytes()
        assert (workspace / "dvc.yaml").read_bytes() == (Path(__file__).resolve().parents[2] / "dvc.yaml").read_bytes()
        locked = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]["train"]["params"]["params.yaml"]
        reg = Registry(world.store)
        v1 = reg.get(first.model_version)
        assert locked["train.epochs"] == v1.lineage.params["epochs"] == 2
        assert locked["train.seed"] == v1.lineage.params["seed"] == 7
        assert v1.lineage.init_version is None and first.promoted and not first.reused

        # a newer production model (v1's files, better metrics), promoted over v1
        files = reg.download(v1.version, tmp_path / "v1")
        better = v1.metrics.model_dump()
        better["overall"][better["primary"]] = 0.99
        v2 = reg.register(files, better, dataset_version=1, params={"trained": "elsewhere"})
        assert reg.promote(v2.version, loop.promote, who="test").promoted

        again = retrain_latest(settings, loop, who="test")  # same dataset, same params, new production
        assert not again.reused and again.model_version == 3, again
        v3 = reg.get(3)
        assert v3.lineage.init_version == v2.version and v3.lineage.params == v1.lineage.params
        assert again.action == "reject" and reg.get("production").version == v2.version
        decisions, moves = len(reg.decisions(3)), len(reg.history())

        once_more = retrain_latest(settings, loop, who="test")  # nothing changed: reuse, no second gate
        assert once_more.reused and once_more.model_version == 3 and once_more.action == "reject"
        assert len(reg.decisions(3)) == decisions and len(reg.history()) == moves
        assert len(reg.decisions(1)) == 1  # v1 was never gated again
