"""The connection to a Label Studio server, with the two token kinds handled explicitly.

Label Studio has two kinds of API keys that are easy to confuse (label-studio #7519):

* a **legacy token** (40 hex chars) is sent as ``Authorization: Token <key>``; it only works when
  legacy tokens are enabled on the organisation;
* a **personal access token** is a JWT *refresh* token: it is exchanged at
  ``/api/token/refresh/`` for a short-lived access token, sent as ``Authorization: Bearer <access>``.

:class:`LabelStudioClient` decides which from the key itself (:func:`token_kind`), refreshes the
access token when it expires, and turns HTTP failures into :class:`LabelStudioError` messages
saying what was asked of which server (its URL with any embedded credentials masked: :attr:`url`
is for messages, never the token either). It offers the raw JSON calls fleetloop needs (paging by
id); the official SDK client, configured with the same key, is available as :attr:`sdk`.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from fleetloop.settings import LabelStudioSettings, redact

TokenKind = Literal["legacy", "personal"]


class LabelStudioError(RuntimeError):
    """A Label Studio call failed; the message names the server, the call and the answer."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class LabelStudioAuthError(LabelStudioError):
    """The server rejected the token."""


def _jwt_claims(token: str) -> dict[str, Any] | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        pad = "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + pad))
    except (ValueError, json.JSONDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


def token_kind(token: str) -> TokenKind:
    """``personal`` for a JWT refresh token (personal access token), ``legacy`` otherwise."""
    claims = _jwt_claims(token)
    if claims is None:
        return "legacy"
    if claims.get("token_type") not in (None, "refresh"):
        raise LabelStudioAuthError(
            f"the Label Studio key is a JWT of type {claims.get('token_type')!r}; give the personal access"
            " token itself (a refresh token), not a short-lived access token"
        )
    return "personal"


@dataclass(frozen=True)
class Connection:
    url: str
    token: str


def resolve_connection(settings: LabelStudioSettings, url: str | None = None, token: str | None = None) -> Connection:
    """Explicit arguments, else the settings' url + token. The entry points (CLI, flows) fill the
    settings from the local server when it runs (``fleetloop.local.resolve_settings``)."""
    url = url or settings.url
    token = token or (settings.token.get_secret_value() if settings.token else None)
    if not (url and token):
        raise LabelStudioError(
            "no Label Studio configured: set FLEETLOOP_LABEL_STUDIO__URL and FLEETLOOP_LABEL_STUDIO__TOKEN,"
            " or start the local server with `fleetloop services up`"
        )
    return Connection(url.rstrip("/"), token)


class LabelStudioClient:
    """A small, explicit Label Studio API client (sync, httpx)."""

    def __init__(self, url: str, token: str, *, timeout: float = 60.0):
        self._base = url.rstrip("/")  # as configured: may embed credentials (user:pass@)
        self.url = redact(self._base)  # for messages and links: credentials masked
        self._token = token
        self.kind: TokenKind = token_kind(token)
        self._access: str | None = None
        self._access_exp = 0.0
        self._http = httpx.Client(base_url=self._base, timeout=timeout)
        self._sdk: Any = None
        self._users: dict[int, str] = {}

    @classmethod
    def from_settings(cls, settings: LabelStudioSettings) -> LabelStudioClient:
        conn = resolve_connection(settings)
        return cls(conn.url, conn.token)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- auth ---------------------------------------------------------------------------------
    def auth_header(self) -> dict[str, str]:
        if self.kind == "legacy":
            return {"Authorization": f"Token {self._token}"}
        if self._access is None or time.time() > self._access_exp - 30:
            r = self._http.post("/api/token/refresh/", json={"refresh": self._token})
            if r.status_code != 200:
                raise LabelStudioAuthError(
                    f"Label Studio {self.url}: exchanging the personal access token at /api/token/refresh/"
                    f" failed: HTTP {r.status_code} {r.text[:200]}",
                    r.status_code,
                )
            self._access = r.json()["access"]
            self._access_exp = float((_jwt_claims(self._access) or {}).get("exp", time.time() + 60))
        return {"Authorization": f"Bearer {self._access}"}

    @property
    def sdk(self) -> Any:
        """The official SDK client (``label_studio_sdk.LabelStudio``) with the same key."""
        if self._sdk is None:
            from label_studio_sdk import LabelStudio

            self._sdk = LabelStudio(base_url=self._base, api_key=self._token)
        return self._sdk

    # -- raw calls ------------------------------------------------------------------------------
    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201, 204), **kwargs: Any) -> Any:
        try:
            r = self._http.request(method, path, headers=self.auth_header(), **kwargs)
        except httpx.HTTPError as exc:
            raise LabelStudioError(f"Label Studio {self.url}: {method} {path} failed: {redact(str(exc))}") from exc
        if r.status_code in (401, 403):
            hint = ""
            if "legacy" in r.text.lower():
                hint = (
                    " (legacy tokens are disabled on this server's organisation: use a personal access"
                    " token, or enable legacy tokens in the organisation settings)"
                )
            raise LabelStudioAuthError(
                f"Label Studio {self.url}: {method} {path} rejected the {self.kind} token:"
                f" HTTP {r.status_code} {r.text[:200]}{hint}",
                r.status_code,
            )
        if r.status_code not in ok:
            raise LabelStudioError(
                f"Label Studio {self.url}: {method} {path} failed: HTTP {r.status_code} {r.text[:500]}", r.status_code
            )
        if r.status_code == 204 or not r.content:
            return None
        return r.json()

    def whoami(self) -> dict[str, Any]:
        return self.request("GET", "/api/current-user/whoami")

    def iter_tasks(
        self,
        project_id: int,
        *,
        annotated_only: bool = False,
        after_id: int = 0,
        page_size: int = 100,
        fields: str = "all",
    ) -> Iterator[list[dict[str, Any]]]:
        """Pages of a project's tasks in id order, by keyset (``id > last id``), never one big export.

        ``annotated_only`` filters on ``total_annotations > 0`` on the server *and* here: the
        ``only_annotated`` parameter does not filter (STACK.md).
        """
        last = after_id
        while True:
            items = [{"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": last}]
            if annotated_only:
                items.append(
                    {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}
                )
            query = {"filters": {"conjunction": "and", "items": items}, "ordering": ["tasks:id"]}
            body = self.request(
                "GET",
                "/api/tasks",
                params={
                    "project": project_id,
                    "page": 1,
                    "page_size": page_size,
                    "fields": fields,
                    "query": json.dumps(query),
                },
            )
            tasks = body["tasks"] if isinstance(body, dict) else body
            tasks = [t for t in tasks if t["id"] > last]
            if not tasks:
                return
            tasks.sort(key=lambda t: t["id"])
            last = tasks[-1]["id"]
            if annotated_only:
                tasks = [t for t in tasks if (t.get("total_annotations") or 0) > 0]
            yield tasks

    def user_email(self, user_id: int | None) -> str | None:
        """The e-mail of a user id (cached); None for None."""
        if user_id is None:
            return None
        if user_id not in self._users:
            try:
                user = self.request("GET", f"/api/users/{user_id}/")
                self._users[user_id] = user.get("email") or user.get("username") or str(user_id)
            except LabelStudioError:
                self._users[user_id] = str(user_id)
        return self._users[user_id]
