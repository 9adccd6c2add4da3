"""``fleetloop registry``: register trained models, promote through the gate, roll back, inspect.

The registry lives in the configured store (``FLEETLOOP_STORAGE__*``: a local directory or S3);
the gate's parameters are the ``promote:`` section of params.yaml. Every command takes ``--json``.
Exit codes: 0 done; 1 ``promote`` rejected by the gate (the reasons name each failing slice),
or ``list``/``show``/``history`` printed what they could read around a damaged registry object
(named on stderr; for ``show`` also a file of the version missing from the store); 2 nothing done
(bad input, unknown version, no earlier production, unreachable store).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fleetloop.cli.output import JsonOpt, err, fail, keep_whole, print_json

if TYPE_CHECKING:
    from fleetloop.registry import Decision, Registry

app = typer.Typer(
    help="Model registry: register, promote (gated per slice), rollback, list, show, history.",
    no_args_is_help=True,
)
console = Console()

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model name in the registry.")]
WhoOpt = Annotated[str | None, typer.Option("--who", help="Who acts (default: $FLEETLOOP_ACTOR or user@host).")]
WhyOpt = Annotated[str, typer.Option("--why", help="Why: recorded in the decision and the history.")]


def _boundary_errors() -> tuple[type[BaseException], ...]:
    from fleetloop.params import ParamsError
    from fleetloop.registry.errors import RegistryError
    from fleetloop.store.objects import StorageError

    return RegistryError, StorageError, ParamsError, FileNotFoundError, ValueError


def _registry(model: str) -> Registry:
    from fleetloop.registry import Registry
    from fleetloop.settings import get_settings
    from fleetloop.store.objects import get_store

    return Registry(get_store(get_settings()), model=model)


def _load_train_params(path: Path) -> dict[str, Any]:
    import yaml

    from fleetloop.params import yaml_problem

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML
    except OSError as exc:
        raise FileNotFoundError(f"cannot read params file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"params file {path}: not valid YAML (or JSON): not UTF-8 text "
                         f"(byte {exc.start}: {exc.reason})") from None
    except yaml.YAMLError as exc:  # the parser's own message spans lines: one line, naming the file
        raise ValueError(f"params file {yaml_problem(path, exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"params file {path}: expected a mapping, got {type(data).__name__}")
    return data


def _decision_json(d: Decision) -> dict[str, Any]:
    return {
        "promoted": d.promoted,
        "action": d.action,
        "model": d.model,
        "version": d.version,
        "production_before": d.production_before,
        "production": d.production_after,
        "reasons": d.verdict.reasons,
        "decision": d.number,
        "history_seq": d.history_seq,
        "who": d.who,
        "when": d.when.isoformat(),
        "verdict": d.verdict.model_dump(mode="json"),
    }


def _slice_table(details: dict[str, Any]) -> Table | None:
    slices: dict[str, dict[str, Any]] = details.get("slices") or {}
    if not slices:
        return None

    def num(x: Any) -> str:
        return "—" if x is None else f"{x:.3f}"

    table = Table("slice", "production", "candidate", "delta", "objects", "gate")
    for name, row in slices.items():
        if row["gated"]:
            mark = "[green]ok[/]" if row["ok"] else "[red]REGRESSED[/]"
        else:
            mark = f"[dim]not gated: {escape(row.get('note') or 'no')}[/]"
        table.add_row(
            escape(name), num(row["production"]), num(row["candidate"]),
            "—" if row["delta"] is None else f"{row['delta']:+.3f}",
            "—" if row["support"] is None else str(row["support"]), mark,
        )
    return table


@app.command()
def register(
    model_dir: Annotated[Path, typer.Argument(help="Directory of the trained model (every file under it is stored).")],
    metrics: Annotated[Path, typer.Option("--metrics", help="metrics.json from the evaluate stage.")],
    dataset: Annotated[int | None, typer.Option("--dataset", help="Dataset version it was trained on.")] = None,
    params: Annotated[Path | None, typer.Option("--params", help="Training params (YAML or JSON) for the lineage.")] = None,
    trainer: Annotated[str | None, typer.Option(help="The trainer (command or name).")] = None,
    latency_ms: Annotated[float | None, typer.Option(help="Measured CPU latency per image, ms.")] = None,
    training_seconds: Annotated[float | None, typer.Option(help="Training wall time, s.")] = None,
    candidate: Annotated[bool, typer.Option("--candidate", help="Also point the candidate alias at it.")] = False,
    model: ModelOpt = "camera",
    who: WhoOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a trained model (trained here or elsewhere) as a new immutable version."""
    try:
        reg = _registry(model)
        train_params = _load_train_params(params) if params is not None else None
        card = reg.register(
            model_dir, metrics, dataset_version=dataset, params=train_params, trainer=trainer,
            latency_ms=latency_ms, training_seconds=training_seconds,
        )
        if candidate:
            reg.set_candidate(card.version, who=who, why="registered")
    except _boundary_errors() as exc:
        raise fail(exc, as_json=as_json) from None
    primary = card.metrics.primary or "map50"
    if as_json:
        print_json({
            "version": card.version,
            "model": card.model,
            "created_at": card.created_at.isoformat(),
            "files": len(card.files),
            "size_bytes": card.size_bytes,
            "primary": primary,
            "value": card.primary_value(primary),
            "lineage": card.lineage.model_dump(mode="json"),
            "candidate": candidate,
        }, ok=True)
        return
    value = card.primary_value(primary)
    console.print(
        f"registered [bold]{card.model} v{card.version}[/]: {len(card.files)} files, {card.size_bytes:,} bytes, "
        f"{escape(primary)} {'—' if value is None else f'{value:.3f}'}" + (" (candidate)" if candidate else "")
    )


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="Version number (or 'candidate').")],
    params_file: Annotated[
        Path | None, typer.Option("--params-file", help="params.yaml with the promote: section (default: found).")
    ] = None,
    model: ModelOpt = "camera",
    who: WhoOpt = None,
    why: WhyOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Gate the version against production; promote it if it passes. Exit 0 when it is
    production afterwards, 1 when the gate rejected it."""
    from fleetloop.params import load_params

    try:
        gate_params = load_params(params_file).promote
        decision = _registry(model).promote(version, gate_params, who=who, why=why)
    except _boundary_errors() as exc:
        raise fail(exc, as_json=as_json) from None
    ok = decision.promoted or decision.action == "noop"
    if as_json:
        print_json({**_decision_json(decision), "already_production": decision.action == "noop"}, ok=ok)
    else:
        table = _slice_table(decision.verdict.details)
        if table is not None:
            console.print(table)
        if decision.action == "noop":
            console.print(f"[yellow]v{decision.version} is already production[/]: nothing to do")
        elif decision.promoted:
            console.print(f"[green]promoted[/] {decision.model} v{decision.version} to production "
                          f"(was {decision.production_before or 'none'})")
        else:
            console.print(f"[red]rejected[/] {decision.model} v{decision.version} "
                          f"(production stays {decision.production_before or 'none'}):")
        for reason in decision.verdict.reasons:
            console.print(f"  - {reason}", markup=False)
    raise typer.Exit(0 if ok else 1)


@app.command()
def rollback(model: ModelOpt = "camera", who: WhoOpt = None, why: WhyOpt = "", as_json: JsonOpt = False) -> None:
    """Move production back to the production version before it."""
    try:
        decision = _registry(model).rollback(who=who, why=why)
    except _boundary_errors() as exc:
        raise fail(exc, as_json=as_json) from None
    if as_json:
        print_json({
            "rolled_back": True,
            "model": decision.model,
            "from": decision.production_before,
            "to": decision.production_after,
            "production": decision.production_after,
            "history_seq": decision.history_seq,
            "reasons": decision.verdict.reasons,
            "who": decision.who,
            "when": decision.when.isoformat(),
        }, ok=True)
    else:
        console.print(f"[green]rolled back[/] {decision.model}: production "
                      f"v{decision.production_before} → v{decision.production_after}")


@app.command()
def candidate(
    version: Annotated[str, typer.Argument(help="Version number.")],
    model: ModelOpt = "camera",
    who: WhoOpt = None,
    why: WhyOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Point the candidate alias at a version."""
    try:
        reg = _registry(model)
        move = reg.set_candidate(version, who=who, why=why)
        target = move.to_version if move is not None else reg.get("candidate").version
    except _boundary_errors() as exc:
        raise fail(exc, as_json=as_json) from None
    if as_json:
        print_json({"candidate": target, "moved": move is not None, "history_seq": move.seq if move else None}, ok=True)
    else:
        console.print(f"candidate → v{target}" + ("" if move is not None else " (already)"))


@app.command("list")
def list_cmd(
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, help="Only the newest N versions.")] = None,
    model: ModelOpt = "camera",
    as_json: JsonOpt = False,
) -> None:
    """The model's versions, oldest first, with the aliases pointing at them."""
    problems: dict[str, str] = {}  # damaged registry objects: named, the rest is listed (exit 1)
    try:
        reg = _registry(model)
        cards = reg.list(limit=limit, problems=problems)
        aliases = reg.aliases(problems=problems)
    except _boundary_errors() as exc:
        raise fail(exc, as_json=as_json) from None
    by_version: dict[int, list[str]] = {}
    for name, state in aliases.items():
        by_version.setdefault(state.version, []).append(name)
    rows: list[dict[str, Any]] = []
    for c in cards:
        primary = c.metrics.primary or "map50"
        rows.append({
            "version": c.version,
            "created_at": c.created_at.isoformat(),
            "aliases": by_version.get(c.version, []),
            "dataset_version": c.lineage.dataset_version,
            "code_revision": c.lineage.code_revision,
            "trainer": c.lineage.trainer,
            "primary": primary,
            "value": c.primary_value(primary),
            "latency_ms": c.latency_ms,
            "files": len(c.files),
            "size_bytes": c.size_bytes,
        })
    if as_json:
        print_json(rows)
        raise _damaged(problems)
    table = Table("version", "aliases", "created", "dataset", "primary", "latency ms", "files")
    for r in rows:
        table.add_row(
            str(r["version"]), ", ".join(r["aliases"]), r["created_at"][:19],
            "—" if r["dataset_version"] is None else str(r["dataset_version"]),
            escape(f"{r['primary']} ") + ("—" if r["value"] is None else f"{r['value']:.3f}"),
            "—" if r["latency_ms"] is None else f"{r['latency_ms']:.2f}", str(r["files"]),
        )
    console.print(keep_whole(table, "created", "primary"))
    console.print(f"{len(rows)} versions")
    raise _damaged(problems)


def _damaged(problems: dict[str, str]) -> typer.Exit:
    """Name each damaged registry object on stderr, one line each (the message starts with its
    key); the exit to raise: 1 when there were any (the rest was printed), else 0."""
    for why in problems.values():
        err.print(f"[red]damaged:[/] {escape(why)}", highlight=False)
    return typer.Exit(1 if problems else 0)


def _known(value: object) -> str:
    return "unknown" if value is None else str(value)


@app.command()
def show(
    version: Annotated[str, typer.Argument(help="Version number, 'production' or 'candidate'.")],
    model: ModelOpt = "camera",
    as_json: JsonOpt = False,
) -> None:
    """One version: metrics, lineage, files, aliases and its latest decision. Exit 1 when a file of
    the version is missing from the store or a decision or alias is damaged (each named on stderr)."""
    problems: dict[str, str] = {}  # missing files, damaged decisions or aliases: named, the rest is shown (exit 1)
    try:
        reg = _registry(model)
        card = reg.get(version)
        reg.check_files(card, problems=problems)
        decisions = reg.decisions(card.version, problems=problems)
        aliases = [name for name, state in reg.aliases(problems=problems).items() if state.version == card.version]
    except _boundary_errors() as exc:
        raise fail(exc, as_json=as_json) from None
    out = card.model_dump(mode="json")
    out["aliases"] = aliases
    out["decision"] = decisions[-1].model_dump(mode="json") if decisions else None
    out["decisions"] = [d.model_dump(mode="json") for d in decisions]
    if as_json:
        if problems:
            out = {"error": "; ".join(problems.values()), "problems": problems, **out}
        print_json(out, ok=not problems)
        raise _damaged(problems)
    primary = card.metrics.primary or "map50"
    value = card.primary_value(primary)
    console.print(f"[bold]{card.model} v{card.version}[/]" + (f" ({', '.join(aliases)})" if aliases else ""))
    console.print(f"  created {card.created_at.isoformat()}  {escape(primary)} {'—' if value is None else f'{value:.3f}'}"
                  f"  latency {'—' if card.latency_ms is None else f'{card.latency_ms:.2f} ms'}")
    lin = card.lineage
    console.print(
        f"  dataset {_known(lin.dataset_version)}  code {_known(lin.code_revision)}  trainer {_known(lin.trainer)}  "
        f"training {'unknown' if lin.training_seconds is None else f'{lin.training_seconds:g} s'}",
        highlight=False, markup=False,
    )
    table = Table("slice", escape(primary), "objects")
    for name, block in card.metrics.slices.items():
        v = block.value(primary)
        table.add_row(escape(name), "—" if v is None else f"{v:.3f}", str(block.support))
    console.print(table)
    for rel, digest in card.files.items():
        gone = reg.layout.blob(digest) in problems
        console.print(f"  {escape(rel)}  sha256:{digest[:12]}" + ("  [red]missing from the store[/]" if gone else ""))
    if decisions:
        d = decisions[-1]
        console.print(f"  decision {d.number}: {d.action} by {d.who} at {d.when.isoformat()}", markup=False)
        for reason in d.verdict.reasons:
            console.print(f"    - {reason}", markup=False)
    raise _damaged(problems)


@app.command()
def history(
    alias: Annotated[str | None, typer.Option("--alias", help="Only this alias (production, candidate).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, help="Only the newest N moves.")] = None,
    model: ModelOpt = "camera",
    as_json: JsonOpt = False,
) -> None:
    """Every alias move, oldest first: who moved which alias from where to where, when and why."""
    problems: dict[str, str] = {}  # a damaged alias or entry ends its alias's history there (exit 1)
    try:
        moves = _registry(model).history(alias, limit=limit, problems=problems)
    except _boundary_errors() as exc:
        raise fail(exc, as_json=as_json) from None
    if as_json:
        print_json([m.dump() for m in moves])
        raise _damaged(problems)
    table = Table("seq", "alias", "from", "to", "kind", "who", "when", "why")
    for m in moves:
        table.add_row(
            str(m.seq), m.alias, "—" if m.from_version is None else str(m.from_version), str(m.to_version),
            m.kind, escape(m.who), m.when.isoformat()[:19], escape(m.why),
        )
    console.print(keep_whole(table, "when"))
    if not moves:
        console.print("no alias moves yet" if not problems else "no readable alias moves")
    raise _damaged(problems)
