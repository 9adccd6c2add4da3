"""Version cards and the listing index.

**Claiming a version.** The writer reads the highest version the index knows (``h``) and tries
to create ``versions/<h+1>.json`` with ``put_if_absent``; if it exists, ``h+2``, and so on (after a
few misses it lists ``versions/`` after the last miss to jump over a long lagging stretch). The
number is never computed and then written blindly: two writers can both try ``h+1``, one wins,
the other moves on. Since every writer starts just above a version that exists, the versions that
exist are always exactly ``1..N``.

**The index** (``index/<page>.json``, pages of :data:`INDEX_PAGE` cards) caches the immutable
cards so ``list`` reads one object per hundred versions instead of one per version. After
claiming ``V`` the writer merges into the index, by compare-and-swap per page, its own card and
the cards of every version it found taken on the way (``h+1..V-1``), lowest page first. So the
index always holds every version up to its highest one, except for writers that died between
claiming and indexing; ``list`` finds those with one listing of ``versions/`` *after* the index's
highest card, and the next writer, who collides with them, adds them to the index.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

from fleetloop.registry.errors import CorruptRecord, RegistryConflict
from fleetloop.registry.keys import Layout, page_of_version
from fleetloop.registry.models import IndexPage, ModelVersion, parse_record
from fleetloop.store.objects import ObjectNotFound, Store

#: misses in a row before a claim lists ``versions/`` to jump ahead
_PROBES_BEFORE_LISTING = 3
_CAS_ATTEMPTS = 200


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0, min(0.2, 0.005 * (attempt + 1))))


def read_card(store: Store, layout: Layout, version: int) -> ModelVersion:
    key = layout.card(version)
    return parse_record(ModelVersion, store.get_bytes(key), key, "version card")


def _page_keys(store: Store, layout: Layout) -> list[str]:
    return [k for k in store.list(layout.index_prefix) if layout.page_of_key(k) is not None]


def _read_page(store: Store, layout: Layout, key: str) -> IndexPage:
    return parse_record(IndexPage, store.get_bytes(key), key, "index page")


def _page_cards(key: str, data: bytes) -> dict[str, Any]:
    """The ``cards`` of an index page as plain JSON (not parsed as cards); :class:`CorruptRecord`
    naming the page when it is not an index page."""
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptRecord(f"{key} is not a valid index page: not JSON: {exc}") from None
    cards = doc.get("cards") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or not isinstance(cards, dict | None) \
            or not all(isinstance(v, str) and v.isascii() and v.isdigit() for v in cards or {}):
        raise CorruptRecord(f"{key} is not a valid index page: expected {{\"page\": N, \"cards\": {{\"<version>\": card}}}}")
    return cards or {}


def highest_indexed(store: Store, layout: Layout) -> int:
    """The highest version in the index (0 when there is none): one listing of the few page
    keys, one read of the last page (its keys only: the cards are not parsed)."""
    keys = _page_keys(store, layout)
    for key in reversed(keys):
        try:
            cards = _page_cards(key, store.get_bytes(key))
        except ObjectNotFound:
            continue
        if cards:
            return max(int(v) for v in cards)
    return 0


def claim_version(
    store: Store, layout: Layout, build: Callable[[int], ModelVersion], start_after: int
) -> tuple[ModelVersion, list[int]]:
    """Create the card ``build(V)`` at the first free ``V > start_after``, create-only.
    Returns the card and the versions found taken on the way."""
    taken: list[int] = []
    v = start_after + 1
    misses = 0
    while True:
        card: ModelVersion = build(v)
        if store.put_if_absent(layout.card(v), card.model_dump_json().encode()):
            return card, taken
        taken.append(v)
        misses += 1
        if misses % _PROBES_BEFORE_LISTING == 0:
            later = [n for k in store.list(layout.versions_prefix, start_after=layout.card(v))
                     if (n := layout.version_of_card(k)) is not None]
            if later:
                top = max(later)
                taken.extend(range(v + 1, top + 1))
                v = top
        v += 1


def index_cards(store: Store, layout: Layout, cards: Iterable[ModelVersion]) -> None:
    """Merge cards into the index, by compare-and-swap, one page at a time, lowest page first."""
    by_page: dict[int, dict[int, ModelVersion]] = {}
    for card in cards:
        by_page.setdefault(page_of_version(card.version), {})[card.version] = card
    for page in sorted(by_page):
        _merge_page(store, layout, page, by_page[page])


def _merge_page(store: Store, layout: Layout, page: int, cards: dict[int, ModelVersion]) -> None:
    """Add ``cards`` to one page by compare-and-swap. The page is merged as plain JSON: the
    cards already there are immutable copies and are not parsed again."""
    key = layout.index_page(page)
    new = {str(v): json.loads(c.model_dump_json()) for v, c in cards.items()}
    for attempt in range(_CAS_ATTEMPTS):
        try:
            data, etag = store.get_versioned(key)
            current = _page_cards(key, data)
        except ObjectNotFound:
            current, etag = {}, None
        missing = {v: c for v, c in new.items() if v not in current}
        if not missing:
            return
        merged = dict(sorted({**current, **missing}.items(), key=lambda kv: int(kv[0])))
        body = json.dumps({"page": page, "cards": merged}, separators=(",", ":")).encode()
        ok = store.put_if_absent(key, body) if etag is None else store.put_if_match(key, body, etag)
        if ok:
            return
        _backoff(attempt)
    raise RegistryConflict(f"{key}: lost {_CAS_ATTEMPTS} compare-and-swaps in a row; the index lags (list still works)")


def list_cards(store: Store, layout: Layout, *, limit: int | None = None,
               problems: dict[str, str] | None = None) -> list[ModelVersion]:
    """Every version, oldest first (the newest ``limit`` when given), from the index plus the few
    versions it lags behind. With ``limit``, pages are read from the last one back only until
    they hold ``limit`` versions. A corrupt index page or card raises :class:`CorruptRecord`;
    with ``problems`` (a dict) it is recorded there instead (key -> what is wrong), a corrupt
    page's versions are read from their cards and a corrupt card is left out."""

    def note(exc: CorruptRecord, key: str) -> None:
        if problems is None:
            raise exc
        problems[key] = str(exc)

    def card_of(v: int) -> None:
        try:
            cards[v] = read_card(store, layout, v)
        except ObjectNotFound:
            pass
        except CorruptRecord as exc:
            note(exc, layout.card(v))

    if limit is not None and limit <= 0:
        return []
    cards: dict[int, ModelVersion] = {}
    for key in reversed(_page_keys(store, layout)):
        if limit is not None and len(cards) >= limit:
            break
        try:
            cards.update(_read_page(store, layout, key).cards)
        except ObjectNotFound:
            pass
        except CorruptRecord as exc:
            note(exc, key)
    top = max(cards, default=0)
    # versions the index lags behind: one listing after its highest card
    after = layout.card(top) if top else None
    for key in store.list(layout.versions_prefix, start_after=after):
        v = layout.version_of_card(key)
        if v is not None and v not in cards:
            card_of(v)
    # holes (a page read before a writer's merge landed, or a corrupt page): read those cards directly
    top = max([*cards, *(n for k in problems or () if (n := layout.version_of_card(k)) is not None)], default=0)
    low = top - limit + 1 if limit is not None else 1
    for v in range(max(1, low), top + 1):
        if v not in cards and (problems is None or layout.card(v) not in problems):
            card_of(v)
    out = [cards[v] for v in sorted(cards)]
    return out[-limit:] if limit is not None else out
