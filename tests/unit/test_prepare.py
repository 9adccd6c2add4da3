"""The prepare stage says why a dataset cannot train when its train frames have no images
(logs imported from KITTI labels carry none), instead of the trainer's "has no frames"."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fleetloop.train import prepare as prep
from fleetloop.train.stages import main as stage_main

PNG = b"\x89PNG fake"


def _tables(images: dict[str, list[bytes | None]]) -> tuple[pa.Table, pa.Table]:
    rows = [(split, img) for split, imgs in images.items() for img in imgs]
    n = len(rows)
    frames = pa.table({
        "log_id": ["log-1"] * n, "frame": pa.array(range(n), pa.int32()), "split": [s for s, _ in rows],
        "image_png": pa.array([i for _, i in rows], pa.binary()), "width": pa.array([64] * n, pa.int32()),
        "height": pa.array([48] * n, pa.int32()), "weather": ["clear"] * n, "time_of_day": ["day"] * n,
    })
    labels = pa.table({"log_id": ["log-1"], "frame": pa.array([0], pa.int32()), "cls": ["car"],
                       "x1": [1.0], "y1": [1.0], "x2": [9.0], "y2": [9.0]})
    return frames, labels


@pytest.fixture
def dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def use(images: dict[str, list[bytes | None]]) -> Path:
        tables = _tables(images)
        monkeypatch.setattr(prep, "materialize", lambda root, images=True: tables)
        (tmp_path / "dataset").mkdir(exist_ok=True)
        return tmp_path / "dataset"

    return use


def test_a_train_split_without_images_is_refused_with_its_counts(dataset, tmp_path: Path) -> None:
    root = dataset({"train": [None] * 60, "val": [None] * 5, "test": [PNG] * 3})
    with pytest.raises(prep.PrepareError) as err:
        prep.prepare(root, tmp_path / "prepared")
    msg = str(err.value)
    assert "no frame of the train split has an image (60 frames without an image, 65 in all splits)" in msg
    assert "camera images" in msg and "\n" not in msg
    assert not (tmp_path / "prepared").exists()  # nothing half-written


def test_the_stage_prints_it_as_one_line(dataset, tmp_path: Path, capsys, monkeypatch) -> None:
    root = dataset({"train": [None] * 60})
    monkeypatch.chdir(tmp_path)  # no params.yaml: the defaults
    assert stage_main(["prepare", "--dataset", str(root), "--out", str(tmp_path / "prepared")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: prepare: no frame of the train split has an image (60 frames without an image")


def test_frames_without_images_elsewhere_are_counted_and_left_out(dataset, tmp_path: Path) -> None:
    root = dataset({"train": [PNG, PNG, None], "val": [None], "test": [PNG]})
    report = prep.prepare(root, tmp_path / "prepared")
    assert report.frames == {"train": 2, "val": 0, "test": 1}
    assert report.without_image == 2 and report.without_image_by_split == {"train": 1, "val": 1}
    assert pq.read_table(tmp_path / "prepared" / "train.parquet").num_rows == 2
