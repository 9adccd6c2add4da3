"""Aliases (``production``, ``candidate``) and their history, consistent under races.

An alias is one small object, :class:`AliasState`, moved only by compare-and-swap. Every move
is also an entry ``history/<seq>.json``. The protocol of a move of alias ``A`` to version ``t``:

1. Read ``A`` with its version tag: state ``S`` (``S.version`` = *from*, ``S.history_seq`` = ``p``),
   or nothing (create).
2. **Claim the history entry first**, create-only, at the first free ``seq`` above every alias's
   ``history_seq``: ``{seq, alias: A, from: S.version, to: t, prev_seq: p, who, when, why}``.
3. **Compare-and-swap ``A``** from ``S`` to ``{version: t, history_seq: seq, ...}`` (``IfMatch`` on
   ``S``'s tag; ``IfNoneMatch`` when creating). If it fails, someone moved ``A`` in between: the
   claimed entry stays behind as an orphan, and the caller re-reads and decides again.

The history of ``A`` is the chain read from ``A.history_seq`` back through ``prev_seq``. An entry
is on the chain only if its compare-and-swap succeeded, and that swap succeeded only if ``A`` was
still in the state the entry was planned from, whose version is the previous entry's ``to``. So
on the chain every move starts where the previous one ended, the newest entry's ``to`` is the
alias's version, and ``seq`` increases along it. Orphans (lost swaps, or a writer that died
between steps 2 and 3) are never on a chain; a writer that dies after step 3 has already written
both objects. No state is ever written before its history entry exists, so there is nothing to
repair.

Production also carries ``stack``: the production versions before it, newest last. A promotion
pushes the version it replaces, a rollback pops one; both in the same swap as the move.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator

from fleetloop.registry.errors import CorruptRecord
from fleetloop.registry.keys import ALIASES, Layout, check_alias
from fleetloop.registry.models import AliasMove, AliasState, MoveKind, parse_record, utcnow
from fleetloop.store.objects import ObjectNotFound, Store


def read_alias(store: Store, layout: Layout, name: str) -> tuple[AliasState | None, str | None]:
    """The alias's state and version tag, or ``(None, None)`` when it was never set."""
    key = layout.alias(name)
    try:
        data, etag = store.get_versioned(key)
    except ObjectNotFound:
        return None, None
    return parse_record(AliasState, data, key, "alias record"), etag


def _claim_seq(store: Store, layout: Layout, lower: int, make: Callable[[int], AliasMove]) -> AliasMove:
    """Create ``make(seq)`` at the first free seq above ``lower``, create-only."""
    after = layout.history(lower) if lower else None
    taken = [s for k in store.list(layout.history_prefix, start_after=after) if (s := layout.history_seq_of(k))]
    seq = max(taken, default=lower) + 1
    while True:
        entry: AliasMove = make(seq)
        if store.put_if_absent(layout.history(seq), entry.model_dump_json(by_alias=True).encode()):
            return entry
        seq += 1


def try_move(
    store: Store,
    layout: Layout,
    name: str,
    current: AliasState | None,
    etag: str | None,
    *,
    to: int,
    kind: MoveKind,
    who: str,
    why: str,
    stack: list[int] | None = None,
) -> AliasMove | None:
    """Move alias ``name`` from ``current`` (read with ``etag``) to version ``to``. Returns the
    history entry, or ``None`` if the alias changed since it was read (nothing moved)."""
    check_alias(name)
    heads = [current.history_seq] if current is not None else []
    for other in ALIASES:
        if other != name:
            state, _ = read_alias(store, layout, other)
            if state is not None:
                heads.append(state.history_seq)
    now = utcnow()

    def make(seq: int) -> AliasMove:
        return AliasMove(
            seq=seq, alias=name, from_version=current.version if current else None, to_version=to,
            who=who, when=now, why=why, kind=kind, prev_seq=current.history_seq if current else None,
        )

    entry = _claim_seq(store, layout, max(heads, default=0), make)
    state = AliasState(
        alias=name, version=to, moved_at=now, by=who, reason=why, history_seq=entry.seq, stack=stack or [],
    )
    body = state.model_dump_json().encode()
    key = layout.alias(name)
    ok = store.put_if_absent(key, body) if etag is None else store.put_if_match(key, body, etag)
    return entry if ok else None


def read_move(store: Store, layout: Layout, seq: int) -> AliasMove:
    key = layout.history(seq)
    return parse_record(AliasMove, store.get_bytes(key), key, "history entry")


def _chain(store: Store, layout: Layout, name: str, problems: dict[str, str] | None = None) -> Iterator[AliasMove]:
    """The alias's moves, newest first (one read per move, only as many as are consumed). With
    ``problems`` (a dict), a corrupt alias or a corrupt or missing entry ends the chain there and
    is recorded (key -> what is wrong) instead of raised."""
    try:
        state, _ = read_alias(store, layout, name)
    except CorruptRecord as exc:
        if problems is None:
            raise
        problems[layout.alias(name)] = str(exc)
        return
    seq = state.history_seq if state is not None else None
    while seq:
        try:
            entry = read_move(store, layout, seq)
        except (CorruptRecord, ObjectNotFound) as exc:
            if problems is None:
                raise
            problems[layout.history(seq)] = (
                str(exc) if isinstance(exc, CorruptRecord)
                else f"{layout.history(seq)} is missing: the {name} history before it cannot be read"
            )
            return
        yield entry
        seq = entry.prev_seq


def history(store: Store, layout: Layout, alias: str | None = None, *, limit: int | None = None,
            problems: dict[str, str] | None = None) -> list[AliasMove]:
    """The moves of ``alias`` (default: every alias), oldest first; the newest ``limit`` when given.
    With ``problems`` (a dict), an alias whose chain cannot be read past a damaged object lists
    the moves up to it, and the object is recorded there (see :func:`_chain`)."""
    names = [check_alias(alias)] if alias else list(ALIASES)
    newest_first = heapq.merge(*(_chain(store, layout, n, problems) for n in names), key=lambda m: -m.seq)
    out: list[AliasMove] = []
    for move in newest_first:
        if limit is not None and len(out) >= limit:
            break
        out.append(move)
    return out[::-1]
