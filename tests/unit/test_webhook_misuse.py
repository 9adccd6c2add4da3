"""``fleetloop label listen``'s receiver fed what a misconfigured proxy, a scanner or another
tool might post: each bad request gets a 4xx answer with a one-line reason, nothing is triggered,
no traceback is printed, and the receiver keeps serving the next real event."""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time

import pytest

from fleetloop.label.webhook import SECRET_HEADER, WebhookReceiver

EVENT = {"action": "ANNOTATION_CREATED", "project": {"id": 1, "title": "camp"}}


@pytest.fixture
def receiver():
    calls: list[str] = []
    rx = WebhookReceiver(calls.append, secret="s", campaigns={"camp"}).start()
    rx.calls = calls  # type: ignore[attr-defined]
    yield rx
    rx.stop()


def _post(rx: WebhookReceiver, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(rx.host, rx.port, timeout=10)
    try:
        conn.putrequest("POST", "/webhook")
        sent = {SECRET_HEADER: "s", "Content-Type": "application/json", "Content-Length": str(len(body)),
                **(headers or {})}
        for k, v in sent.items():
            conn.putheader(k, v)
        conn.endheaders()
        conn.send(body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def _settled(rx: WebhookReceiver) -> None:
    deadline = time.monotonic() + 5
    while not rx.coalescer.idle() and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.parametrize("body, reason", [
    (b"[1, 2]", "body is not a JSON object"),
    (b'"ANNOTATION_CREATED"', "body is not a JSON object"),
    (b"12", "body is not a JSON object"),
    (b"\xff\xfe{}", "body is not JSON"),
    (json.dumps({"action": "ANNOTATION_CREATED", "project": "camp"}).encode(), "ignored project"),
    (json.dumps({"action": "ANNOTATION_CREATED", "project": {"title": ["camp"]}}).encode(), "ignored project"),
    (json.dumps({"action": ["ANNOTATION_CREATED"], "project": {"title": "camp"}}).encode(), "ignored action"),
])
def test_a_body_that_is_not_an_event_is_answered_and_the_receiver_serves_on(receiver, capfd, body, reason):
    status, answer = _post(receiver, body)
    assert status in (200, 400) and answer["status"].startswith(reason), (status, answer)
    assert _post(receiver, json.dumps(EVENT).encode())[0] == 202
    _settled(receiver)
    assert receiver.calls == ["camp"]  # type: ignore[attr-defined]
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("length", ["abc", "-5", "1e3"])
def test_a_content_length_that_is_no_size_is_a_400(receiver, capfd, length):
    status, answer = _post(receiver, b"{}", {"Content-Length": length})
    assert status == 400 and answer["status"] == "bad Content-Length header", answer
    assert "Traceback" not in capfd.readouterr().err
    assert _post(receiver, json.dumps(EVENT).encode())[0] == 202


def test_a_body_over_the_limit_is_refused_unread(receiver, capfd):
    """A webhook is a few kB; a client announcing gigabytes is answered 413 at once (the receiver
    does not read, or hold, what it announces)."""
    conn = http.client.HTTPConnection(receiver.host, receiver.port, timeout=10)
    try:
        conn.putrequest("POST", "/webhook")
        conn.putheader(SECRET_HEADER, "s")
        conn.putheader("Content-Length", str(4 << 30))
        conn.endheaders()
        conn.send(b"{" * 1024)
        resp = conn.getresponse()
        assert resp.status == 413 and json.loads(resp.read())["status"].startswith("body over ")
    finally:
        conn.close()
    assert "Traceback" not in capfd.readouterr().err
    assert _post(receiver, json.dumps(EVENT).encode())[0] == 202


def test_a_failing_sync_is_one_line_per_failure_not_a_traceback(caplog):
    """Label Studio down while the listener runs: each failed sync is one error line naming the
    campaign (the traceback only at debug level), and the receiver keeps serving."""
    failed = threading.Event()

    def action(campaign: str) -> None:
        failed.set()
        raise ConnectionError("Label Studio http://u:secret@ls.example:8080 is not answering")

    rx = WebhookReceiver(action, secret="s", campaigns={"camp"}).start()
    try:
        with caplog.at_level(logging.DEBUG, logger="fleetloop.label.webhook"):
            assert _post(rx, json.dumps(EVENT).encode())[0] == 202
            assert failed.wait(5)
            _settled(rx)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].exc_info is None
        assert errors[0].getMessage() == ("sync of campaign camp failed: ConnectionError: Label Studio "
                                          "http://***@ls.example:8080 is not answering (the next event or the "
                                          "label-sync poll retries it)")
        assert rx.coalescer.errors == [errors[0].getMessage()]
        assert any(r.levelno == logging.DEBUG and r.exc_info for r in caplog.records)
    finally:
        rx.stop()
