"""The FastAPI recipe (examples/fastapi_app.py) serves real WhatsApp webhooks: the
handshake, signed deliveries stored once, errors mapped to HTTP answers, and snapshots
whose published JSON Schema is in the OpenAPI document."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the FastAPI recipe needs fastapi (in the test extra)")
from examples.fastapi_app import create_app
from fastapi.testclient import TestClient

import convthread as ct

SECRET = b"app-secret"
TOKEN = "verify-me"
CORPUS = Path(__file__).parent / "corpora" / "whatsapp" / "message.json"


def signed(body: bytes) -> dict[str, str]:
    digest = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    return {"x-hub-signature-256": f"sha256={digest}", "content-type": "application/json"}


@pytest.fixture
def client(tmp_path: Path) -> Any:
    app = create_app(f"sqlite:///{tmp_path / 'support.db'}", app_secret=SECRET, verify_token=TOKEN)
    with TestClient(app) as c:
        yield c


def envelope() -> bytes:
    return json.dumps(json.loads(CORPUS.read_text())["text"]).encode()


def test_the_subscription_handshake_answers_the_challenge(client: Any) -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": TOKEN, "hub.challenge": "1158201444"}
    answer = client.get("/webhooks/whatsapp", params=query)
    assert (answer.status_code, answer.text) == (200, "1158201444")
    wrong = client.get("/webhooks/whatsapp", params={**query, "hub.verify_token": "guess"})
    assert wrong.status_code == 403


def test_a_signed_delivery_is_stored_once_and_its_snapshot_reads_back(client: Any) -> None:
    body = envelope()
    first = client.post("/webhooks/whatsapp", content=body, headers=signed(body))
    assert first.status_code == 200, first.text
    (done,) = first.json()["recorded"]
    assert done["outcome"] == "ingested"
    again = client.post("/webhooks/whatsapp", content=body, headers=signed(body))
    assert again.json()["recorded"][0]["outcome"] == "duplicate"

    answer = client.get(f"/threads/{done['thread_id']}/snapshot")
    assert answer.status_code == 200
    snap = ct.Snapshot.from_json(answer.content)
    assert snap.thread_id == done["thread_id"]
    assert len(snap.messages) == 1  # the redelivery was not stored


def test_errors_map_to_http_answers(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    body = envelope()
    forged = client.post(
        "/webhooks/whatsapp", content=body, headers={"x-hub-signature-256": "sha256=00"}
    )
    assert forged.status_code == 403
    junk = b'{"object": "whatsapp_business_account", "entry": "nope"}'
    assert client.post("/webhooks/whatsapp", content=junk, headers=signed(junk)).status_code == 400
    assert client.get("/threads/th_missing/snapshot").status_code == 404

    async def busy(result: object) -> None:
        raise ct.Contention(
            "stream 'th_1' is at version 20, expected 19", attempts=11, retry_after=1.2
        )

    monkeypatch.setattr(client.app.state.convs, "apply", busy)
    answer = client.post("/webhooks/whatsapp", content=body, headers=signed(body))
    assert (answer.status_code, answer.headers["retry-after"]) == (503, "2")


def test_the_openapi_document_carries_the_snapshot_schema(client: Any) -> None:
    doc = client.get("/openapi.json").json()
    route = doc["paths"]["/threads/{thread_id}/snapshot"]["get"]
    schema = route["responses"]["200"]["content"]["application/json"]["schema"]
    name = schema["$ref"].rsplit("/", 1)[1]
    components = doc["components"]["schemas"]
    assert name == "Snapshot" and "thread_id" in components[name]["properties"]

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
