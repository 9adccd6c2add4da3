"""The stages ``dvc.yaml`` runs: ``python -m fleetloop.train.stages prepare|train|evaluate``.

Each reads the ``train:`` section of ``params.yaml`` in the working directory (the training
workspace) and runs as its own process. ``train`` and the prediction half of ``evaluate`` run the
team's commands (``train.command``, ``train.predict``) as subprocesses with ``train.timeout_s``;
``evaluate`` then scores the predictions with pycocotools, overall and per slice, and writes
``metrics.json`` (docs/training.md has the contract).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fleetloop.procs import die_with_parent, tie_to_parent
from fleetloop.train.params import TrainParams

#: a file the train and evaluate stages append their command's output lines to (set by the
#: training workspace's retrain, which shows them while ``dvc repro`` runs with its output captured)
PROGRESS_ENV = "FLEETLOOP_TRAIN_PROGRESS"


class StageError(RuntimeError):
    """A stage could not run (bad params, a command that failed or timed out)."""


def read_train_params(path: Path = Path("params.yaml")) -> TrainParams:
    import yaml

    if not path.is_file():
        return TrainParams()
    data = yaml.safe_load(path.read_text()) or {}
    return TrainParams.model_validate(data.get("train") or {})


def run_command(template: str, params: TrainParams, **paths: Path) -> float:
    """Fill ``{data}``, ``{model}``, ``{init}``, ``{out}``, ``{epochs}``, ``{seed}`` into the command
    (``train.finetune_epochs`` when ``{init}`` holds a model), run it with the timeout, stream its
    output; returns the seconds it took."""
    values = {k: shlex.quote(str(v)) for k, v in paths.items()}
    warm = "init" in paths and any(p.name != ".keep" for p in Path(paths["init"]).iterdir())
    values.update(epochs=str(params.finetune_epochs if warm else params.epochs), seed=str(params.seed))
    try:
        argv = shlex.split(template.format(**values))
    except (KeyError, IndexError, ValueError) as exc:
        raise StageError(f"bad command template {template!r}: {exc}") from exc
    if argv and argv[0] == "python":
        argv[0] = sys.executable  # the interpreter running the stage (the project's venv)
    t0 = time.perf_counter()
    try:
        # its stdout (the reference trainer's progress lines) with its stderr, as they come
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                preexec_fn=die_with_parent())  # no trainer left running on its own
    except FileNotFoundError as exc:
        raise StageError(f"command not found: {argv[0]}") from exc
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(params.timeout_s, stop)
    timer.start()
    last: collections.deque[str] = collections.deque(maxlen=1)  # its last words: usually the error
    progress = os.environ.get(PROGRESS_ENV)  # where `fleetloop retrain` (dvc captures this stderr) reads them
    sink = open(progress, "a", buffering=1, errors="replace") if progress else None  # noqa: SIM115
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # streamed through, as it comes
            sys.stderr.write(line)
            sys.stderr.flush()
            if sink is not None:
                sink.write(line)
            if line.strip():
                last.append(line.strip())
        returncode = proc.wait()
    finally:
        timer.cancel()
        if sink is not None:
            sink.close()
    if timed_out.is_set():
        raise StageError(f"{argv[0]} did not finish within train.timeout_s={params.timeout_s} s")
    if returncode != 0:
        said = f": {last[0][:300]}" if last else ""
        raise StageError(f"{' '.join(argv[:4])} ... exited with {returncode}{said}")
    return time.perf_counter() - t0


def evaluate_model(model: Path, data: Path, out: Path, params: TrainParams) -> dict:
    """Predict on the test split (and the scenario sets), score, write ``metrics.json``."""
    from fleetloop.train.metrics import PREPARED_SCHEMA, evaluate, write_metrics

    parts = []
    for name in ("test.parquet", "scenarios.parquet"):
        if (data / name).is_file():
            try:
                parts.append(pq.read_table(data / name).cast(PREPARED_SCHEMA))
            except (OSError, pa.ArrowException, ValueError) as exc:
                raise StageError(f"cannot read {data / name}: {' '.join(str(exc).split())}") from exc
    if not parts or sum(p.num_rows for p in parts) == 0:
        raise StageError(f"nothing to evaluate on: {data} has no test or scenario frames")
    frames = pa.concat_tables(parts)
    with tempfile.TemporaryDirectory() as tmp:
        eval_file, pred_file = Path(tmp) / "eval.parquet", Path(tmp) / "predictions.parquet"
        pq.write_table(frames, eval_file)
        run_command(params.predict, params, model=model, data=eval_file, out=pred_file)
        predictions = pq.read_table(pred_file)
    metrics = evaluate(frames, predictions)
    write_metrics(metrics, out)
    return metrics.model_dump()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetloop.train.stages", description=__doc__)
    sub = parser.add_subparsers(dest="stage", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--scenarios", type=Path, default=None)
    p.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", type=Path, required=True)
    t.add_argument("--init", type=Path, required=True, help="the production model's files, or an empty folder")
    t.add_argument("--model", type=Path, required=True)
    e = sub.add_parser("evaluate")
    e.add_argument("--model", type=Path, required=True)
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if argv is None:  # run as dvc's stage process: it ends with the dvc repro that started it, and its command with it
        tie_to_parent()
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    try:
        params = read_train_params()
        if args.stage == "prepare":
            from fleetloop.train.prepare import prepare

            report = prepare(args.dataset, args.out, args.scenarios)
            print(json.dumps(report.model_dump()))
        elif args.stage == "train":
            args.init.mkdir(exist_ok=True)
            seconds = run_command(params.command, params, data=args.data, model=args.model, init=args.init)
            (args.model / "training.json").write_text(json.dumps({"seconds": round(seconds, 2)}))
        else:
            m = evaluate_model(args.model, args.data, args.out, params)
            print(json.dumps({"overall": m["overall"]}))
    except Exception as exc:  # a stage fails with one clear line, not a traceback
        print(f"error: {args.stage}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
