"""Label Studio webhooks -> a sync, through a small receiver of our own.

Incoming webhooks are a Prefect Cloud feature, and Label Studio has no "batch completed" event
(label-studio #4831), so fleetloop runs its own receiver (``fleetloop label listen``): on
``ANNOTATION_CREATED`` / ``ANNOTATIONS_CREATED`` / ``ANNOTATION_UPDATED`` for a campaign it calls
an action with the campaign's name: by default the sync itself, in production the trigger of
the ``label-sync`` deployment. Label Studio waits at most WEBHOOK_TIMEOUT (1 s) for an answer, so
the receiver answers at once and runs the action on a worker thread per campaign; events that
arrive while an action runs coalesce into one more run after it. Webhooks carry a shared secret
header that the receiver checks.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fleetloop.label import campaigns as camp
from fleetloop.label.client import LabelStudioClient
from fleetloop.settings import redact

log = logging.getLogger(__name__)

SYNC_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED")
SECRET_HEADER = "X-Fleetloop-Webhook-Secret"
MAX_BODY = 16 << 20  # a webhook's payload is a few kB (one task's annotations): more is refused unread (413)


def register_webhook(client: LabelStudioClient, campaign: str, url: str, secret: str) -> int:
    """A project webhook of the campaign pointing at ``url`` (idempotent). Returns its id."""
    c = camp.find_campaign(client, campaign)
    if c is None:
        raise camp.CampaignError(f"no campaign {campaign!r} in Label Studio {client.url}")
    for hook in client.request("GET", "/api/webhooks/", params={"project": c.project_id}) or []:
        if hook.get("url") == url and hook.get("project") == c.project_id:
            if (hook.get("headers") or {}).get(SECRET_HEADER) != secret or not hook.get("is_active", True):
                client.request(
                    "PATCH",
                    f"/api/webhooks/{hook['id']}/",
                    json={"headers": {SECRET_HEADER: secret}, "is_active": True},
                )
            return int(hook["id"])
    body = client.request(
        "POST",
        "/api/webhooks/",
        json={
            "project": c.project_id,
            "url": url,
            "send_payload": True,
            "send_for_all_actions": False,
            "actions": list(SYNC_ACTIONS),
            "headers": {SECRET_HEADER: secret},
            "is_active": True,
        },
    )
    return int(body["id"])


class _Coalescer:
    """Runs ``action(campaign)`` on one worker thread per campaign; triggers during a run
    coalesce into a single rerun."""

    def __init__(self, action: Callable[[str], Any]):
        self.action = action
        self._lock = threading.Lock()
        self._running: dict[str, bool] = {}
        self._again: dict[str, bool] = {}
        self.runs: dict[str, int] = {}
        self.errors: list[str] = []

    def trigger(self, campaign: str) -> None:
        with self._lock:
            if self._running.get(campaign):
                self._again[campaign] = True
                return
            self._running[campaign] = True
        threading.Thread(target=self._loop, args=(campaign,), daemon=True, name=f"label-sync-{campaign}").start()

    def _loop(self, campaign: str) -> None:
        while True:
            try:
                self.action(campaign)
            except Exception as exc:  # keep serving; the next event or the poll retries
                # one line per failure (a listener runs for days: a Label Studio outage must not
                # print a traceback per event), credentials in URLs masked; the traceback at debug
                message = (f"sync of campaign {campaign} failed: {type(exc).__name__}: "
                           f"{redact(str(exc)).strip().splitlines()[0] if str(exc).strip() else '(no message)'} "
                           "(the next event or the label-sync poll retries it)")
                log.error(message)
                log.debug("sync of campaign %s failed", campaign, exc_info=True)
                self.errors.append(message)
            with self._lock:
                self.runs[campaign] = self.runs.get(campaign, 0) + 1
                if not self._again.pop(campaign, False):
                    self._running[campaign] = False
                    return

    def idle(self) -> bool:
        with self._lock:
            return not any(self._running.values())


class WebhookReceiver:
    """A loopback HTTP server for Label Studio webhooks (``serve_forever`` or ``start`` a thread)."""

    def __init__(
        self,
        action: Callable[[str], Any],
        *,
        secret: str,
        host: str = "127.0.0.1",
        port: int = 0,
        campaigns: set[str] | None = None,
    ):
        self.secret = secret
        self.campaigns = campaigns
        self.coalescer = _Coalescer(action)
        self.events: list[dict[str, Any]] = []  # (action, campaign) of accepted events, for status/tests
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("webhook: " + fmt, *args)

            def do_POST(self) -> None:
                raw = self.headers.get("Content-Length") or "0"
                size = int(raw) if raw.isascii() and raw.isdigit() else -1
                if size < 0:
                    status, message = 400, "bad Content-Length header"
                    self.close_connection = True  # the body's end is unknown: nothing more on this connection
                elif size > MAX_BODY:
                    status, message = 413, f"body over {MAX_BODY} bytes"
                    self.close_connection = True  # not read
                else:
                    status, message = receiver.handle(self.headers.get(SECRET_HEADER) or "", self.rfile.read(size))
                body = json.dumps({"status": message}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((host, port), Handler)
        bound, self.port = self.server.server_address[:2]
        # typeshed allows a bytes host; an AF_INET server's bound address (getsockname) is a str
        self.host: str = bound if isinstance(bound, str) else bytes(bound).decode()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/webhook"

    def handle(self, secret: str, raw: bytes) -> tuple[int, str]:
        if not hmac.compare_digest(secret.encode(), self.secret.encode()):
            return 403, "bad or missing secret"
        try:
            payload = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return 400, "body is not JSON"
        if not isinstance(payload, dict):
            return 400, f"body is not a JSON object: {type(payload).__name__}"
        action = payload.get("action")
        project = payload.get("project")
        campaign = project.get("title") if isinstance(project, dict) else None
        if not isinstance(action, str) or action not in SYNC_ACTIONS:
            return 200, f"ignored action {action!r}"
        if not isinstance(campaign, str) or not campaign or (self.campaigns is not None and campaign not in self.campaigns):
            return 200, f"ignored project {campaign!r}"
        self.events.append({"action": action, "campaign": campaign})
        self.coalescer.trigger(campaign)
        return 202, f"sync of {campaign} triggered"

    def start(self) -> WebhookReceiver:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="label-webhooks")
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
