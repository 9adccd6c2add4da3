"""The registry's API: :class:`Registry` over any :class:`~fleetloop.store.objects.Store`.

```python
reg = Registry(get_store(), model="camera")
v = reg.register(Path("model/"), Path("metrics.json"), dataset_version=7, params={...})
decision = reg.promote(v.version, load_params().promote, who="ci", why="weekly retrain")
decision.promoted, decision.reasons
reg.rollback(who="alice", why="bad night performance")
```

Every state change is one create-only or compare-and-swap write (``keys.py`` has the layout,
``versions.py`` the version claim and index, ``aliases.py`` the alias/history protocol,
``gate.py`` the decision rule).
"""

from __future__ import annotations

import builtins
import contextlib
import getpass
import json
import os
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fleetloop.problems import first_problem
from fleetloop.registry import aliases as _aliases
from fleetloop.registry import versions as _versions
from fleetloop.registry.blobs import download_files, scan_model_dir, upload_files
from fleetloop.registry.errors import (
    CorruptRecord,
    GateParamsError,
    InvalidRegistration,
    MetricsError,
    MissingFiles,
    NoPreviousProduction,
    RegistryConflict,
    VersionNotFound,
)
from fleetloop.registry.gate import decide
from fleetloop.registry.keys import ALIASES, Layout
from fleetloop.registry.models import (
    REGISTERING,
    AliasMove,
    AliasState,
    Decision,
    Metrics,
    ModelVersion,
    Registration,
    parse_record,
    utcnow,
)
from fleetloop.registry.params import PromoteParams
from fleetloop.store.objects import ObjectNotFound, Store
from fleetloop.verdict import Verdict

DEFAULT_MODEL = "camera"
#: how many times promote/rollback re-read and retry after losing the alias compare-and-swap
MOVE_ATTEMPTS = 50

VersionRef = int | str
#: a version written as text: ``N`` or ``vN``, ASCII digits, no sign, space or leading zero
_VERSION_REF = re.compile(r"v?[1-9][0-9]*")


def default_actor() -> str:
    """Who is acting: ``$FLEETLOOP_ACTOR``, else ``user@host``."""
    env = os.environ.get("FLEETLOOP_ACTOR")
    if env:
        return env
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def git_revision(cwd: Path | None = None) -> str | None:
    """``git rev-parse HEAD`` in ``cwd`` (default: the working directory), or ``None``."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip()
    return rev if out.returncode == 0 and rev else None


def _read_metrics(metrics: Path | str | dict[str, Any] | Metrics) -> tuple[str, dict[str, Any]]:
    """(where it came from, its parsed content) of ``metrics.json``; :class:`MetricsError` when
    it cannot be read or is not a JSON object."""
    if isinstance(metrics, Metrics):
        return "metrics", metrics.model_dump()
    if isinstance(metrics, dict):
        return "metrics", metrics
    source = str(metrics)
    try:
        data = json.loads(Path(metrics).read_text(encoding="utf-8"))
    except OSError as exc:
        raise MetricsError(f"cannot read {source}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise MetricsError(f"{source} is not JSON: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise MetricsError(f"{source} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MetricsError(f"{source}: expected a JSON object (the evaluate stage's metrics.json), "
                           f"got {type(data).__name__}")
    return source, data


def load_metrics(metrics: Path | str | dict[str, Any] | Metrics) -> Metrics:
    """Parse ``metrics.json`` (a path or its parsed content), as stored cards hold it (lenient:
    :class:`~fleetloop.registry.models.Registration` checks the metrics of a new version)."""
    if isinstance(metrics, Metrics):
        return metrics
    source, data = _read_metrics(metrics)
    try:
        return Metrics.model_validate(data)
    except ValidationError as exc:
        raise MetricsError(f"{source}: {first_problem(exc)[0]} (expected the evaluate stage's metrics.json)") from exc


def check_registration(metrics: Path | str | dict[str, Any] | Metrics, **lineage: Any) -> Registration:
    """The checked inputs of a new version (metrics, lineage, latency): :class:`MetricsError`
    (bad metrics) or :class:`InvalidRegistration` (bad lineage or latency), one line each."""
    source, data = _read_metrics(metrics)
    try:
        return Registration.model_validate({"metrics": data, **lineage}, context=REGISTERING)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["loc"] and first["loc"][0] == "metrics":
            layout = "" if first["type"] == "value_error" else " (expected the evaluate stage's metrics.json)"
            raise MetricsError(f"{source}: {first_problem(exc, skip=1)[0]}{layout}") from None
        where, what = first_problem(exc)[0]
        raise InvalidRegistration(f"cannot register: {where} {first['input']!r}: {what}") from None


class Registry:
    """One model's registry in a store (``registry/<model>/``)."""

    def __init__(self, store: Store, model: str = DEFAULT_MODEL) -> None:
        self.store = store
        self.layout = Layout(model)
        self.model = self.layout.model

    def __repr__(self) -> str:
        return f"Registry({self.model!r} in {self.store!r})"

    # ------------------------------------------------------------------ versions

    def register(
        self,
        model_dir: Path,
        metrics: Path | str | dict[str, Any] | Metrics,
        *,
        dataset_version: int | None = None,
        params: dict[str, Any] | None = None,
        trainer: str | None = None,
        latency_ms: float | None = None,
        training_seconds: float | None = None,
        code_revision: str | None = None,
        init_version: int | None = None,
        pipeline: str | None = None,
    ) -> ModelVersion:
        """A new immutable version of the model in ``model_dir`` (every file under it) with its
        metrics and lineage. ``code_revision`` defaults to the git HEAD of the working directory;
        ``init_version`` is the version whose weights the training started from (warm start);
        ``pipeline`` the digest of the training pipeline that made it (:func:`fleetloop.retrain.pipeline_digest`)."""
        # everything is checked before anything is written: the card is create-only
        checked = check_registration(
            metrics, dataset_version=dataset_version, params=dict(params or {}), trainer=trainer,
            latency_ms=latency_ms, training_seconds=training_seconds, init_version=init_version, pipeline=pipeline,
            code_revision=code_revision if code_revision is not None else git_revision(),
        )
        files = scan_model_dir(Path(model_dir))
        hashes, size, _written = upload_files(self.store, self.layout, files)
        lineage = checked.lineage()
        created = utcnow()

        def build(version: int) -> ModelVersion:
            return ModelVersion(
                model=self.model, version=version, created_at=created, files=hashes, size_bytes=size,
                lineage=lineage, metrics=checked.metrics, latency_ms=checked.latency_ms,
            )

        start = _versions.highest_indexed(self.store, self.layout)
        card, taken = _versions.claim_version(self.store, self.layout, build, start)
        found = []
        for v in taken:  # versions the index lagged behind: index them too
            with contextlib.suppress(ObjectNotFound):
                found.append(_versions.read_card(self.store, self.layout, v))
        # if the index keeps losing races, the version still exists: list() finds it until the
        # next writer indexes it
        with contextlib.suppress(RegistryConflict):
            _versions.index_cards(self.store, self.layout, [*found, card])
        return card

    def _resolve(self, ref: VersionRef) -> int:
        if isinstance(ref, int) and not isinstance(ref, bool):
            return ref
        text = str(ref)
        if text in ALIASES:
            state, _ = _aliases.read_alias(self.store, self.layout, text)
            if state is None:
                raise VersionNotFound(f"model {self.model!r} has no {text} version yet")
            return state.version
        if isinstance(ref, str) and _VERSION_REF.fullmatch(ref):  # exactly N or vN: no " 1", 01, V1, ١
            return int(ref.removeprefix("v"))
        raise VersionNotFound(f"{ref!r} is not a version number (N or vN), 'production' or 'candidate'")

    def get(self, ref: VersionRef) -> ModelVersion:
        """A version by number, or the version an alias (``production``, ``candidate``) points to."""
        version = self._resolve(ref)
        try:
            return _versions.read_card(self.store, self.layout, version)
        except ObjectNotFound:
            raise VersionNotFound(f"model {self.model!r} has no version {version}") from None

    def list(self, *, limit: int | None = None, problems: dict[str, str] | None = None) -> list[ModelVersion]:
        """Every version, oldest first (the newest ``limit`` when given): read from the index,
        one object per hundred versions, plus the versions it lags behind. With ``problems`` (a
        dict), a corrupt index page or card is recorded there (key -> what is wrong) and the
        others are listed, instead of :class:`CorruptRecord`."""
        return _versions.list_cards(self.store, self.layout, limit=limit, problems=problems)

    def trained_on(self, dataset_version: int) -> int | None:
        """The newest version trained on ``dataset-v<dataset_version>``, if any."""
        found = [v.version for v in self.list() if v.lineage.dataset_version == dataset_version]
        return max(found) if found else None

    def download(self, ref: VersionRef, to_dir: Path) -> Path:
        """Write the version's files under ``to_dir``, each checked against its sha256."""
        card = self.get(ref)
        return download_files(self.store, self.layout, card.files, Path(to_dir))

    # ------------------------------------------------------------------ aliases

    def aliases(self, *, problems: dict[str, str] | None = None) -> dict[str, AliasState]:
        """The aliases that are set. With ``problems`` (a dict), a corrupt alias record is
        recorded there (key -> what is wrong) and left out, instead of :class:`CorruptRecord`."""
        out = {}
        for name in ALIASES:
            try:
                state, _ = _aliases.read_alias(self.store, self.layout, name)
            except CorruptRecord as exc:
                if problems is None:
                    raise
                problems[self.layout.alias(name)] = str(exc)
                continue
            if state is not None:
                out[name] = state
        return out

    def history(self, alias: str | None = None, *, limit: int | None = None,
                problems: dict[str, str] | None = None) -> builtins.list[AliasMove]:
        """Alias moves, oldest first: each move of an alias starts where its previous one ended.
        With ``problems`` (a dict), an alias's moves are listed back to the first damaged alias
        record or history entry, which is recorded there (key -> what is wrong), instead of
        :class:`CorruptRecord`."""
        return _aliases.history(self.store, self.layout, alias, limit=limit, problems=problems)

    def set_candidate(self, ref: VersionRef, *, who: str | None = None, why: str = "") -> AliasMove | None:
        """Point ``candidate`` at a version; ``None`` when it already does."""
        card = self.get(ref)
        who = who or default_actor()
        for _ in range(MOVE_ATTEMPTS):
            state, etag = _aliases.read_alias(self.store, self.layout, "candidate")
            if state is not None and state.version == card.version:
                return None
            move = _aliases.try_move(
                self.store, self.layout, "candidate", state, etag, to=card.version, kind="set", who=who, why=why,
            )
            if move is not None:
                return move
        raise RegistryConflict(f"candidate of {self.model!r} kept changing: {MOVE_ATTEMPTS} attempts lost")

    def promote(
        self,
        ref: VersionRef,
        params: PromoteParams | None = None,
        *,
        who: str | None = None,
        why: str = "",
    ) -> Decision:
        """Run the gate against the current production and, if it passes, move production to the
        version (compare-and-swap; if production moved meanwhile, gate again against the new one).
        Every pass or rejection is recorded on the version; a version that already is production
        is a no-op (not recorded)."""
        params = params or PromoteParams()
        card = self.get(ref)
        who = who or default_actor()
        checked = False
        for _ in range(MOVE_ATTEMPTS):
            state, etag = _aliases.read_alias(self.store, self.layout, "production")
            before = state.version if state is not None else None
            if before != card.version and not checked:
                # usage errors, not gate outcomes: nothing is recorded
                self._check_primary(card, params)
                self.check_files(card)
                checked = True
            if before == card.version:
                verdict = Verdict(
                    name="promotion-gate", passed=True,
                    reasons=[f"version {card.version} is already production: nothing to do"],
                )
                return Decision(
                    model=self.model, version=card.version, action="noop", promoted=False, verdict=verdict,
                    who=who, when=utcnow(), why=why, production_before=before, production_after=before,
                )
            production = _versions.read_card(self.store, self.layout, before) if before is not None else None
            verdict = decide(
                card.metrics, production.metrics if production else None, params, latency_ms=card.latency_ms,
            )
            verdict.details["production_version"] = before
            verdict.details["candidate_version"] = card.version
            if not verdict.passed:
                return self._record(Decision(
                    model=self.model, version=card.version, action="reject", promoted=False, verdict=verdict,
                    who=who, when=utcnow(), why=why, production_before=before, production_after=before,
                ))
            stack = [*state.stack, state.version] if state is not None else []
            move = _aliases.try_move(
                self.store, self.layout, "production", state, etag,
                to=card.version, kind="promote", who=who, why=why or "; ".join(verdict.reasons), stack=stack,
            )
            if move is not None:
                return self._record(Decision(
                    model=self.model, version=card.version, action="promote", promoted=True, verdict=verdict,
                    who=who, when=move.when, why=why, production_before=before, production_after=card.version,
                    history_seq=move.seq,
                ))
        raise RegistryConflict(f"production of {self.model!r} kept changing: {MOVE_ATTEMPTS} attempts lost")

    def check_files(self, card: ModelVersion, *, problems: dict[str, str] | None = None) -> None:
        """Every file of the version's card is in the store (one existence check per distinct
        file), else :class:`MissingFiles` naming the first missing one: a version whose files are
        gone cannot become production (download and warm start would fail). With ``problems`` (a
        dict), every missing file is recorded there instead (blob key -> what is wrong)."""
        seen: set[str] = set()
        for rel, digest in sorted(card.files.items()):
            if digest in seen:
                continue
            seen.add(digest)
            key = self.layout.blob(digest)
            if self.store.exists(key):
                continue
            if problems is not None:
                problems[key] = f"{key} is missing: version {card.version}'s file {rel} (it cannot become production)"
                continue
            raise MissingFiles(
                f"version {card.version} of {self.model!r} cannot become production: its file {rel} "
                f"({key}) is missing from the store"
            )

    @staticmethod
    def _check_primary(card: ModelVersion, params: PromoteParams) -> None:
        """The gate's primary metric is one the version's metrics have, overall and in every slice
        the gate would compare (at least ``min_support`` objects), as a number or null. A null
        value is a real outcome (rejected overall, not gated in a slice); a metric it never had, or
        text, is a params mistake: its slices would be silently ungated, or the version rejected
        for "no" metric it has."""
        metric = params.primary
        blocks = [(f"overall {metric}", card.metrics.overall),
                  *((f"{metric} in slice {n}", b) for n, b in card.metrics.gated_slices().items()
                    if b.support >= params.min_support)]  # smaller slices are never gated
        for what, block in blocks:
            have = block.model_extra or {}
            if metric not in have:
                names = ", ".join(sorted(have)) or "none"
                raise GateParamsError(
                    f"promote.primary is {metric!r}, but version {card.version}'s metrics have no {what} "
                    f"(they have: {names}): fix promote.primary in params.yaml"
                )
            raw = have[metric]
            if raw is not None and (isinstance(raw, bool) or not isinstance(raw, int | float)):
                raise GateParamsError(
                    f"promote.primary is {metric!r}, but version {card.version}'s {what} is {raw!r}, "
                    "not a number: fix promote.primary in params.yaml"
                )

    def rollback(self, *, who: str | None = None, why: str = "") -> Decision:
        """Move production back to the production version before it (the last one promoted over
        and not already rolled back to). :class:`NoPreviousProduction` when there is none."""
        who = who or default_actor()
        for _ in range(MOVE_ATTEMPTS):
            state, etag = _aliases.read_alias(self.store, self.layout, "production")
            if state is None:
                raise NoPreviousProduction(f"model {self.model!r} has no production version: nothing to roll back")
            if not state.stack:
                raise NoPreviousProduction(
                    f"production of {self.model!r} is version {state.version} and there is no earlier "
                    "production version to roll back to"
                )
            target = state.stack[-1]
            try:
                self.check_files(_versions.read_card(self.store, self.layout, target))
            except ObjectNotFound:
                raise VersionNotFound(f"model {self.model!r} has no version {target} to roll back to") from None
            move = _aliases.try_move(
                self.store, self.layout, "production", state, etag,
                to=target, kind="rollback", who=who, why=why or "rollback", stack=state.stack[:-1],
            )
            if move is not None:
                verdict = Verdict(
                    name="rollback", passed=True,
                    reasons=[f"production {state.version} → {target}" + (f": {why}" if why else "")],
                    details={"from": state.version, "to": target, "history_seq": move.seq},
                )
                return self._record(Decision(
                    model=self.model, version=target, action="rollback", promoted=True, verdict=verdict,
                    who=who, when=move.when, why=why, production_before=state.version, production_after=target,
                    history_seq=move.seq,
                ))
        raise RegistryConflict(f"production of {self.model!r} kept changing: {MOVE_ATTEMPTS} attempts lost")

    # ------------------------------------------------------------------ decisions

    def decisions(self, ref: VersionRef, *, problems: dict[str, str] | None = None) -> builtins.list[Decision]:
        """The decisions recorded on a version, oldest first. With ``problems`` (a dict), a
        corrupt decision is recorded there (key -> what is wrong) and left out, instead of
        :class:`CorruptRecord`."""
        version = self._resolve(ref)
        out = []
        for key in self.store.list(self.layout.decisions_prefix(version)):
            if self.layout.decision_number(key) is None:
                continue
            try:
                out.append(parse_record(Decision, self.store.get_bytes(key), key, "decision"))
            except ObjectNotFound:
                continue
            except CorruptRecord as exc:
                if problems is None:
                    raise
                problems[key] = str(exc)
        return out

    def _record(self, decision: Decision) -> Decision:
        """Write the decision as ``versions/<V>/decision-<n>.json`` at the first free ``n``."""
        taken = [n for k in self.store.list(self.layout.decisions_prefix(decision.version))
                 if (n := self.layout.decision_number(k)) is not None]
        n = max(taken, default=0) + 1
        while True:
            recorded = decision.model_copy(update={"number": n})
            if self.store.put_if_absent(self.layout.decision(decision.version, n),
                                        recorded.model_dump_json().encode()):
                return recorded
            n += 1
