"""The production example (examples/production): Twilio SMS and voice and WhatsApp
webhooks behind a proxy, signatures checked over the public URL, the library's errors as
HTTP answers, a snapshot endpoint whose OpenAPI document is complete; run with TestClient
and under a real uvicorn server with concurrent signed deliveries."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

pytest.importorskip("fastapi", reason="the example needs fastapi (in the test extra)")
import httpx
from examples.production import Settings, create_app
from fastapi.testclient import TestClient

import convthread as ct
from convthread.channels import sms

TOKEN = "twilio-auth-token"
SECRET = b"whatsapp-app-secret"
VERIFY = "verify-me"
PUBLIC = "https://support.example.com/cs"
CORPUS = Path(__file__).parent / "corpora" / "whatsapp" / "message.json"
ENVELOPES: dict[str, Any] = json.loads(CORPUS.read_text(encoding="utf-8"))


def settings(tmp_path: Path | None = None, **changes: Any) -> Settings:
    base: dict[str, Any] = {
        "store": f"sqlite:///{tmp_path / 'support.db'}" if tmp_path else "memory://",
        "public_url": PUBLIC,
        "twilio_auth_token": TOKEN,
        "whatsapp_app_secret": SECRET,
        "whatsapp_verify_token": VERIFY,
    }
    base.update(changes)
    return Settings(**base)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings(tmp_path))) as c:
        yield c


def twilio(path: str, fields: dict[str, str], *, base: str = PUBLIC) -> dict[str, Any]:
    """A Twilio request as it arrives: the form body and its signature over ``base``."""
    signature = sms.compute_signature(base + path, fields, TOKEN)
    return {
        "content": urlencode(fields).encode(),
        "headers": {
            "content-type": "application/x-www-form-urlencoded",
            "x-twilio-signature": signature,
        },
    }


def sms_fields(sid: str, body: str, sender: str = "+14155550100") -> dict[str, str]:
    return {
        "MessageSid": sid,
        "SmsMessageSid": sid,
        "AccountSid": "AC00000000000000000000000000000000",
        "From": sender,
        "To": "+18005550199",
        "Body": body,
        "NumMedia": "0",
        "NumSegments": "1",
        "FromCountry": "US",
    }


def whatsapp_body(case: str, wamid: str | None = None) -> bytes:
    envelope = json.loads(json.dumps(ENVELOPES[case]))
    if wamid is not None:
        for entry in envelope["entry"]:
            for change in entry["changes"]:
                for message in change["value"].get("messages", []):
                    message["id"] = wamid
    return json.dumps(envelope).encode()


def meta_signed(body: bytes) -> dict[str, str]:
    digest = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    return {"x-hub-signature-256": f"sha256={digest}", "content-type": "application/json"}


# --------------------------------------------------------------------------- TestClient


def test_whatsapp_handshake(client: TestClient) -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1158201444"}
    answer = client.get("/webhooks/whatsapp", params=query)
    assert (answer.status_code, answer.text) == (200, "1158201444")
    wrong = client.get("/webhooks/whatsapp", params={**query, "hub.verify_token": "guess"})
    assert wrong.status_code == 403
    not_a_handshake = client.get("/webhooks/whatsapp", params={"hub.mode": "unsubscribe"})
    assert not_a_handshake.status_code == 400


def test_an_sms_signed_over_the_public_url_is_stored_once(client: TestClient) -> None:
    request = twilio("/webhooks/twilio/sms", sms_fields("SM1", "Where is order AC-4471?"))
    first = client.post("/webhooks/twilio/sms", **request)
    assert first.status_code == 200, first.text
    assert first.headers["content-type"].startswith("application/xml")
    assert "<Response></Response>" in first.text
    assert client.post("/webhooks/twilio/sms", **request).status_code == 200  # a retry
    convs = client.app.state.convs  # type: ignore[attr-defined]
    located = client.portal.call(convs.find_message, "sms", "SM1")  # type: ignore[union-attr]
    assert located is not None
    events = client.portal.call(convs.events, located.thread_id)  # type: ignore[union-attr]
    assert sum(isinstance(e.event, ct.MessageReceived) for e in events) == 1


def test_the_signature_covers_the_public_url_not_the_internal_one(
    client: TestClient,
) -> None:
    # Signed over the URL the application sees (http://testserver/...): behind the
    # proxy that is not what Twilio called, so it does not verify.
    internal = twilio("/webhooks/twilio/sms", sms_fields("SM2", "hi"), base="http://testserver")
    assert client.post("/webhooks/twilio/sms", **internal).status_code == 403
    forged = twilio("/webhooks/twilio/sms", sms_fields("SM2", "hi"))
    forged["headers"]["x-twilio-signature"] = "bm9wZQ=="
    assert client.post("/webhooks/twilio/sms", **forged).status_code == 403
    unsigned = twilio("/webhooks/twilio/sms", sms_fields("SM2", "hi"))
    del unsigned["headers"]["x-twilio-signature"]
    answer = client.post("/webhooks/twilio/sms", **unsigned)
    assert answer.status_code == 403 and "X-Twilio-Signature" in answer.json()["detail"]


def test_forwarded_headers_give_the_public_url_when_trusted(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path, public_url="", trust_forwarded=True))
    request = twilio(
        "/webhooks/twilio/sms", sms_fields("SM3", "hello"), base="https://sms.example.org"
    )
    forwarded = {"x-forwarded-proto": "https", "x-forwarded-host": "sms.example.org"}
    with TestClient(app) as c:
        plain = c.post("/webhooks/twilio/sms", **request)
        assert plain.status_code == 403  # without the proxy's headers
        request["headers"].update(forwarded)
        assert c.post("/webhooks/twilio/sms", **request).status_code == 200
    untrusted = create_app(settings(tmp_path, public_url="", trust_forwarded=False))
    with TestClient(untrusted) as c:  # a client cannot choose the URL it is checked over
        assert c.post("/webhooks/twilio/sms", **request).status_code == 403


def test_a_call_and_its_words_join_the_callers_sms_thread(client: TestClient) -> None:
    caller = "+14155550123"
    text = sms_fields("SM10", "My refund for AC-4471 has not arrived", sender=caller)
    assert client.post("/webhooks/twilio/sms", **twilio("/webhooks/twilio/sms", text))
    ringing = {
        "CallSid": "CA10",
        "AccountSid": "AC00000000000000000000000000000000",
        "From": caller,
        "To": "+18005550199",
        "CallStatus": "ringing",
        "Direction": "inbound",
    }
    answer = client.post("/webhooks/twilio/voice", **twilio("/webhooks/twilio/voice", ringing))
    assert answer.status_code == 200, answer.text
    assert f'<Gather input="speech" action="{PUBLIC}/webhooks/twilio/voice"' in answer.text
    spoken = {**ringing, "CallStatus": "in-progress", "SpeechResult": "About my refund"}
    spoken["Confidence"] = "0.91"
    answer = client.post("/webhooks/twilio/voice", **twilio("/webhooks/twilio/voice", spoken))
    assert answer.status_code == 200 and "An agent will be with you" in answer.text
    convs = client.app.state.convs  # type: ignore[attr-defined]
    call = client.portal.call(convs.find_message, "voice", "CA10")  # type: ignore[union-attr]
    text_at = client.portal.call(convs.find_message, "sms", "SM10")  # type: ignore[union-attr]
    assert call.customer_id == text_at.customer_id  # the caller id is the same number
    snap = client.get(f"/threads/{call.thread_id}/snapshot").json()
    assert "voice" in json.dumps(snap)


def test_whatsapp_deliveries_from_the_corpus(client: TestClient) -> None:
    body = whatsapp_body("text")
    first = client.post("/webhooks/whatsapp", content=body, headers=meta_signed(body))
    assert first.status_code == 200, first.text
    (done,) = first.json()["recorded"]
    assert (done["kind"], done["outcome"]) == ("inbound", "ingested")
    again = client.post("/webhooks/whatsapp", content=body, headers=meta_signed(body))
    assert again.json()["recorded"][0]["outcome"] == "duplicate"
    status = whatsapp_body("reaction")
    answer = client.post("/webhooks/whatsapp", content=status, headers=meta_signed(status))
    assert answer.status_code == 200, answer.text  # a reaction to a message never seen
    assert answer.json()["recorded"] == [
        {"kind": "reaction", "outcome": "not_found", "thread_id": None}
    ]
    forged = client.post(
        "/webhooks/whatsapp", content=body, headers={"x-hub-signature-256": "sha256=00"}
    )
    assert forged.status_code == 403


def test_a_message_id_redelivered_with_another_payload_is_409(client: TestClient) -> None:
    # The corpus's text and image envelopes carry the same message id: a provider that
    # did this would be sending two messages under one id, and the first one stands.
    text, image = whatsapp_body("text"), whatsapp_body("image")
    assert client.post("/webhooks/whatsapp", content=text, headers=meta_signed(text)).is_success
    answer = client.post("/webhooks/whatsapp", content=image, headers=meta_signed(image))
    assert answer.status_code == 409, answer.text
    assert "the first result stands" in answer.json()["detail"]
    first = twilio("/webhooks/twilio/sms", sms_fields("SM20", "one"))
    other = twilio("/webhooks/twilio/sms", sms_fields("SM20", "another"))
    assert client.post("/webhooks/twilio/sms", **first).status_code == 200
    assert client.post("/webhooks/twilio/sms", **other).status_code == 409


def test_bad_input_is_400(client: TestClient) -> None:
    junk = b'{"object": "whatsapp_business_account", "entry": "nope"}'
    answer = client.post("/webhooks/whatsapp", content=junk, headers=meta_signed(junk))
    assert answer.status_code == 400 and "cannot parse whatsapp payload" in answer.text
    no_sid = twilio("/webhooks/twilio/sms", {"From": "+14155550100", "Body": "hi"})
    assert client.post("/webhooks/twilio/sms", **no_sid).status_code == 400
    assert client.get("/threads/th_x/snapshot", params={"audience": "boss"}).status_code == 400
    assert client.get("/threads/th_x/snapshot", params={"max_messages": 0}).status_code == 400
    assert client.get("/threads/th_missing/snapshot").status_code == 404


def test_contention_and_a_spent_time_budget_are_503_with_retry_after(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    convs = client.app.state.convs  # type: ignore[attr-defined]

    async def busy(result: object) -> None:
        raise ct.Contention("stream 'th_1' is at version 20, expected 19", attempts=11,
                            retry_after=1.2)  # fmt: skip

    monkeypatch.setattr(convs, "apply", busy)
    body = whatsapp_body("text")
    answer = client.post("/webhooks/whatsapp", content=body, headers=meta_signed(body))
    assert (answer.status_code, answer.headers["retry-after"]) == (503, "2")

    async def down(result: object) -> None:
        raise ct.errors.StoreUnavailable("connection refused")

    monkeypatch.setattr(convs, "apply", down)
    answer = client.post("/webhooks/whatsapp", content=body, headers=meta_signed(body))
    assert (answer.status_code, answer.headers["retry-after"]) == (503, "5")


def test_a_request_over_its_time_budget_is_503(tmp_path: Path) -> None:
    import asyncio

    app = create_app(settings(tmp_path, request_timeout=0.01))
    with TestClient(app) as c:
        convs = c.app.state.convs  # type: ignore[attr-defined]

        async def slow(result: object) -> None:
            await asyncio.sleep(5)

        convs.apply = slow
        body = whatsapp_body("text")
        answer = c.post("/webhooks/whatsapp", content=body, headers=meta_signed(body))
        assert (answer.status_code, answer.headers["retry-after"]) == (503, "1")


def test_the_agent_snapshot_and_the_redacted_one(client: TestClient) -> None:
    body = whatsapp_body("text")
    done = client.post("/webhooks/whatsapp", content=body, headers=meta_signed(body)).json()
    thread_id = done["recorded"][0]["thread_id"]
    agent = client.get(f"/threads/{thread_id}/snapshot")
    assert agent.status_code == 200 and agent.headers["content-type"] == "application/json"
    snap = ct.Snapshot.from_json(agent.content)
    assert snap.thread_id == thread_id and len(snap.messages) == 1
    assert "972987654321" in agent.text
    vendor = client.get(f"/threads/{thread_id}/snapshot", params={"audience": "bot_vendor"})
    assert vendor.status_code == 200 and "972987654321" not in vendor.text


def test_the_openapi_document_is_complete(tmp_path: Path) -> None:
    doc = create_app(settings(tmp_path)).openapi()
    components = doc["components"]["schemas"]
    route = doc["paths"]["/threads/{thread_id}/snapshot"]["get"]
    ok = route["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/Snapshot"}
    assert "thread_id" in components["Snapshot"]["properties"]
    audience = next(p for p in route["parameters"] if p["name"] == "audience")
    assert components[audience["schema"]["$ref"].rsplit("/", 1)[1]]["enum"] == [
        "agent",
        "bot_vendor",
    ]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            codes = set(operation["responses"])
            assert "422" not in codes, (path, method)  # parameter errors are 400
            if method == "post":
                assert {"200", "400", "403", "409", "503"} <= codes, (path, codes)
                retry = operation["responses"]["503"]["headers"]["Retry-After"]
                assert retry["schema"]["type"] == "integer"
    assert doc["paths"]["/webhooks/twilio/sms"]["post"]["responses"]["200"]["content"] == {
        "application/xml": {}
    }

    def refs(node: Any) -> set[str]:
        if isinstance(node, dict):
            found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
            return found.union(*(refs(v) for v in node.values()))
        if isinstance(node, list):
            return set().union(*(refs(v) for v in node))
        return set()

    for ref in refs(doc):  # every reference resolves inside the document
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in components, ref


def test_settings_from_the_environment() -> None:
    read = Settings.from_environment(
        {
            "CONVTHREAD_STORE": "postgresql://app@db/support",
            "PUBLIC_URL": PUBLIC,
            "TRUST_FORWARDED": "true",
            "TWILIO_AUTH_TOKEN": TOKEN,
            "WHATSAPP_APP_SECRET": SECRET.decode(),
            "WHATSAPP_VERIFY_TOKEN": VERIFY,
            "REQUEST_TIMEOUT": "4.5",
        }
    )
    assert read == Settings(
        store="postgresql://app@db/support",
        public_url=PUBLIC,
        trust_forwarded=True,
        twilio_auth_token=TOKEN,
        whatsapp_app_secret=SECRET,
        whatsapp_verify_token=VERIFY,
        request_timeout=4.5,
    )
    assert Settings.from_environment({}) == Settings()


# --------------------------------------------------------------------------- uvicorn


@pytest.fixture
def served(store_url: str) -> Iterator[str]:
    """The app under a real uvicorn server on 127.0.0.1, on a port the OS chose, over a
    SQLite file or a PostgreSQL schema (``store_url``)."""
    uvicorn = pytest.importorskip("uvicorn")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(settings(store=store_url))
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            time.sleep(0.01)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def deliver(http: httpx.Client, path: str, request: dict[str, Any]) -> httpx.Response:
    """POST as a provider does: on 503, deliver again after Retry-After (shortened)."""
    for _ in range(100):
        answer = http.post(path, **request)
        if answer.status_code != 503:
            return answer
        time.sleep(min(float(answer.headers["retry-after"]), 0.05))
    return answer


def test_concurrent_signed_deliveries_under_uvicorn(served: str, store_url: str) -> None:
    whatsapp_cases = [c for c in ENVELOPES if c not in ("order", "unsupported_with_type")][:12]
    requests: list[tuple[str, dict[str, Any], str]] = []
    for i, case in enumerate(whatsapp_cases):
        body = whatsapp_body(case, f"wamid.case{i}")
        requests.append(("/webhooks/whatsapp", {"content": body, "headers": meta_signed(body)},
                         f"wa{i}"))  # fmt: skip
    for i in range(16):  # four customers, four texts each, all at once
        fields = sms_fields(f"SM{i:03d}", f"message {i} about AC-{i % 4}",
                            sender=f"+1415555{i % 4:04d}")  # fmt: skip
        requests.append(("/webhooks/twilio/sms", twilio("/webhooks/twilio/sms", fields),
                         f"sms{i}"))  # fmt: skip
    every = requests + requests  # each delivered twice, the copies racing the originals
    with httpx.Client(base_url=served, timeout=30) as http, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda r: (r[2], deliver(http, r[0], r[1])), every))
        assert all(a.status_code == 200 for _, a in answers), [
            (name, a.status_code, a.text) for name, a in answers if a.status_code != 200
        ]
        outcomes = Counter(
            (name, rec["outcome"])
            for name, a in answers
            if name.startswith("wa")
            for rec in a.json()["recorded"]
            if rec["kind"] == "inbound"
        )
        for name in {n for n, _ in outcomes}:  # each WhatsApp message stored once
            assert outcomes[(name, "ingested")] == 1, (name, outcomes)
            assert outcomes[(name, "duplicate")] == 1, (name, outcomes)

        thread_ids = {
            rec["thread_id"]
            for name, a in answers
            if name.startswith("wa")
            for rec in a.json()["recorded"]
            if rec["thread_id"]
        }
        texts = 0
        for thread_id in thread_ids:
            snap = http.get(f"/threads/{thread_id}/snapshot", params={"max_messages": 50})
            assert snap.status_code == 200
            texts += len(ct.Snapshot.from_json(snap.content).messages)
        assert texts == len(outcomes) // 2

    # Every text is stored once, in its sender's one thread (read over a connection of
    # its own, as another process would).
    with ct.Conversations(store_url) as convs:
        where = {i: convs.find_message("sms", f"SM{i:03d}") for i in range(16)}
        assert all(loc is not None for loc in where.values())
        for sender in range(4):
            (thread,) = {where[i].thread_id for i in range(sender, 16, 4)}  # type: ignore[union-attr]
            received = [e for e in convs.events(thread) if isinstance(e.event, ct.MessageReceived)]
            assert sorted(e.event.provider_message_id for e in received) == sorted(
                f"SM{i:03d}" for i in range(sender, 16, 4)
            )


def test_the_documented_command_serves_the_app(tmp_path: Path) -> None:
    """``uvicorn --factory examples.production.app:from_environment``, as the guide says,
    with the settings in the environment and a port the OS chooses."""
    import os
    import re
    import subprocess
    import sys

    pytest.importorskip("uvicorn")
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, CONVTHREAD_STORE=f"sqlite:///{tmp_path / 'env.db'}",
               WHATSAPP_VERIFY_TOKEN=VERIFY, PYTHONPATH=str(root))  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "examples.production.app:from_environment",
         "--host", "127.0.0.1", "--port", "0", "--log-level", "info", "--no-access-log"],
        cwd=root, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            found = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
            if found:
                break
        else:
            raise AssertionError("".join(seen))
        query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "42"}
        answer = httpx.get(f"http://127.0.0.1:{found.group(1)}/webhooks/whatsapp", params=query)
        assert (answer.status_code, answer.text) == (200, "42")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert (tmp_path / "env.db").is_file()  # the store from CONVTHREAD_STORE was opened
