"""The ``train:`` section is checked when params.yaml is loaded, not inside ``dvc repro`` after
the prepare stage ran: commands must be non-empty and use only the placeholders their stage
fills; the integer params are strict (``true`` is not 1)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fleetloop.params import ParamsError, load_params
from fleetloop.train.params import PLACEHOLDERS, TrainParams


def load(tmp_path: Path, text: str):
    f = tmp_path / "params.yaml"
    f.write_text(text)
    return load_params(f)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ('train: {command: "python -m x {data} {bogus}"}', "{bogus}, which are not filled in"),
        ('train: {command: ""}', "is empty"),
        ('train: {command: "   "}', "is empty"),
        ('train: {command: "python -m x {}"}', "{}, which are not filled in"),
        ('train: {command: "python -m x {data.x}"}', "{data.x}"),
        ('train: {command: "python -m x {out}"}', "{out}"),  # only predict gets {out}
        ('train: {command: "python -m x {data"}', "not a valid template"),
        ("train: {command: \"python -m x '{data}\"}", "cannot be split into arguments"),
        ('train: {predict: "python -m y {init}"}', "train.predict"),
        ("train: {epochs: true}", "train.epochs: Input should be a valid integer"),
        ("train: {finetune_epochs: false}", "train.finetune_epochs"),
        ("train: {seed: true}", "train.seed"),
        ("train: {seed: -1}", "train.seed: Input should be greater than or equal to 0"),
        ("train: {timeout_s: true}", "train.timeout_s"),
        ('train: {epochs: "3"}', "train.epochs"),
        ("promote: {min_support: true}", "promote.min_support"),
        ('promote: {primary: ""}', "promote.primary"),
        ("promote: {floor: yes}", "promote.floor: should be a number, not true/false"),
        ("promote: {min_improvement: .inf}", "promote.min_improvement: Input should be a finite number"),
        ("promote: {slice_tolerance: .nan}", "promote.slice_tolerance: should be a finite number, not nan"),
        ("promote: {max_latency_ms: true}", "promote.max_latency_ms"),
    ],
)
def test_bad_train_params_are_refused_at_load(tmp_path: Path, section: str, message: str) -> None:
    with pytest.raises(ParamsError) as err:
        load(tmp_path, section + "\n")
    assert message in str(err.value), err.value


def test_the_defaults_and_every_placeholder_are_accepted(tmp_path: Path) -> None:
    TrainParams()
    cmd = "python -m t " + " ".join(f"--{n} {{{n}}}" for n in PLACEHOLDERS["command"]) + " --literal {{x}}"
    p = load(tmp_path, f"train: {{command: '{cmd}', epochs: 3, seed: 0}}\n").train
    assert p.command == cmd and p.epochs == 3
    repo_params = Path(__file__).resolve().parents[2] / "params.yaml"
    load_params(repo_params)


def test_the_placeholders_are_the_ones_the_stages_fill(tmp_path: Path) -> None:
    """Every allowed placeholder of ``command`` is filled by the train stage (no KeyError)."""
    from fleetloop.train.stages import run_command

    (tmp_path / "init").mkdir()
    out = tmp_path / "filled.txt"
    cmd = ("python -c \"import sys; open(sys.argv[1], 'w').write(' '.join(sys.argv[2:]))\" " + str(out) + " "
           + " ".join(f"{{{n}}}" for n in PLACEHOLDERS["command"]))
    run_command(cmd, TrainParams(command=cmd, epochs=5, seed=3), data=tmp_path / "d", model=tmp_path / "m",
                init=tmp_path / "init")
    assert out.read_text().split()[-2:] == ["5", "3"]


def test_a_failing_trainer_is_named_with_its_last_words_and_a_slow_one_is_stopped(tmp_path: Path, capfd) -> None:
    """`fleetloop retrain` used to say only "... exited with 1 (+116 more lines)": the trainer's own
    error was in the lines left out. Its output still streams through."""
    from fleetloop.train.stages import StageError, run_command

    crash = "python -c \"import sys; print('epoch 1', file=sys.stderr); raise SystemExit('no GPU here, or a bad path')\""
    with pytest.raises(StageError, match=r"exited with 1: no GPU here, or a bad path$"):
        run_command(crash, TrainParams(command=crash))
    assert "epoch 1" in capfd.readouterr().err
    slow = "python -c \"import time; time.sleep(30)\""
    t0 = time.perf_counter()
    with pytest.raises(StageError, match=r"did not finish within train.timeout_s=1 s"):
        run_command(slow, TrainParams(command=slow, timeout_s=1))
    assert time.perf_counter() - t0 < 15


def test_an_unreadable_evaluation_file_is_named_by_the_evaluate_stage(tmp_path: Path) -> None:
    """A damaged test split stopped the stage with pyarrow's message, which does not say which file."""
    from fleetloop.train.stages import StageError, evaluate_model

    data = tmp_path / "data"
    data.mkdir()
    (data / "test.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(StageError, match=r"^cannot read .*test\.parquet: ") as err:
        evaluate_model(tmp_path / "model", data, tmp_path / "metrics.json", TrainParams())
    assert "\n" not in str(err.value)
