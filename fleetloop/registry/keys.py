"""The registry's store layout: every key it reads or writes is spelled here, nowhere else.

Under ``registry/<model>/``::

    versions/<V:08d>.json                    immutable version card (claimed create-only)
    versions/<V:08d>/decision-<n:04d>.json   gate / rollback decisions on that version (create-only)
    blobs/sha256/<hex>                       model files, content-addressed (create-only)
    aliases/<name>.json                      production, candidate (compare-and-swap)
    history/<seq:08d>.json                   one entry per alias move attempt (create-only)
    index/<page:06d>.json                    cards of versions (page*100, (page+1)*100] (compare-and-swap)

Numbers are zero-padded so that the store's lexicographic listing is numeric order and
``start_after`` can skip everything up to a known version or history entry.
"""

from __future__ import annotations

import re

from fleetloop.store import keys

ROOT = keys.REGISTRY.rstrip("/")
#: versions per index page (page p holds versions p*INDEX_PAGE+1 .. (p+1)*INDEX_PAGE)
INDEX_PAGE = 100
ALIASES = ("production", "candidate")

_MODEL_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # fullmatch: "$" would let a trailing newline in
_CARD_RE = re.compile(r"versions/(\d{8})\.json$")
_DECISION_RE = re.compile(r"decision-(\d{4,})\.json$")
_HISTORY_RE = re.compile(r"history/(\d{8,})\.json$")
_PAGE_RE = re.compile(r"index/(\d{6,})\.json$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def check_model_name(model: str) -> str:
    if not isinstance(model, str) or not _MODEL_RE.fullmatch(model):
        raise ValueError(f"invalid model name {model!r}: lowercase letters, digits, '.', '_', '-' (max 64)")
    return model


def check_alias(alias: str) -> str:
    if alias not in ALIASES:
        raise ValueError(f"unknown alias {alias!r}: one of {', '.join(ALIASES)}")
    return alias


class Layout:
    """Keys of one model's registry."""

    def __init__(self, model: str) -> None:
        self.model = check_model_name(model)
        self.base = f"{ROOT}/{self.model}/"

    # versions
    @property
    def versions_prefix(self) -> str:
        return self.base + "versions/"

    def card(self, version: int) -> str:
        return f"{self.base}versions/{version:08d}.json"

    def decisions_prefix(self, version: int) -> str:
        return f"{self.base}versions/{version:08d}/decision-"

    def decision(self, version: int, n: int) -> str:
        return f"{self.base}versions/{version:08d}/decision-{n:04d}.json"

    # blobs
    def blob(self, sha256: str) -> str:
        if not _SHA256_RE.fullmatch(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return f"{self.base}blobs/sha256/{sha256}"

    @property
    def blobs_prefix(self) -> str:
        return self.base + "blobs/sha256/"

    # aliases and history
    def alias(self, name: str) -> str:
        return f"{self.base}aliases/{check_alias(name)}.json"

    @property
    def history_prefix(self) -> str:
        return self.base + "history/"

    def history(self, seq: int) -> str:
        return f"{self.base}history/{seq:08d}.json"

    # index
    @property
    def index_prefix(self) -> str:
        return self.base + "index/"

    def index_page(self, page: int) -> str:
        return f"{self.base}index/{page:06d}.json"

    # parsing keys back
    def version_of_card(self, key: str) -> int | None:
        """The version a card key names; ``None`` for any other key (decisions, ...)."""
        if not key.startswith(self.versions_prefix):
            return None
        m = _CARD_RE.search(key)
        return int(m.group(1)) if m and key == self.card(int(m.group(1))) else None

    @staticmethod
    def decision_number(key: str) -> int | None:
        m = _DECISION_RE.search(key)
        return int(m.group(1)) if m else None

    def history_seq_of(self, key: str) -> int | None:
        m = _HISTORY_RE.search(key)
        return int(m.group(1)) if m and key.startswith(self.history_prefix) else None

    def page_of_key(self, key: str) -> int | None:
        m = _PAGE_RE.search(key)
        return int(m.group(1)) if m and key.startswith(self.index_prefix) else None


def page_of_version(version: int) -> int:
    return (version - 1) // INDEX_PAGE
