"""Adapter results through the service: the DESIGN.md sketch, end to end."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

import convthread as ct
from convthread.channels import email, whatsapp
from convthread.domain.model import Inbound
from convthread.errors import IdempotencyError, NotFound, ParseError
from convthread.stores import MemoryStore
from tests.conftest import cpython_email_corpus

CORPORA = Path(__file__).parent / "corpora"
CPYTHON = cpython_email_corpus()
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def _convs() -> ct.Conversations:
    return ct.Conversations(MemoryStore(), clock=ct.ManualClock(NOW), ids=ct.SequentialIds())


def test_every_whatsapp_case_applies() -> None:
    convs = _convs()
    kinds: dict[str, int] = {}
    for name in (
        "message.json",
        "message_status.json",
        "edited_message.json",
        "deleted_message.json",
    ):
        for envelope in json.loads((CORPORA / "whatsapp" / name).read_text()).values():
            if "object" not in envelope:  # the single-case files are one envelope
                envelope = json.loads((CORPORA / "whatsapp" / name).read_text())
            for result in whatsapp.parse(envelope):
                try:
                    applied = convs.apply(result)
                except IdempotencyError:  # the corpus reuses "wamid.xyzxyz" for every case
                    kinds["reused id"] = kinds.get("reused id", 0) + 1
                    continue
                except NotFound:  # a reaction, edit or deletion of a message never seen
                    kinds["unknown target"] = kinds.get("unknown target", 0) + 1
                    continue
                kinds[applied.kind] = kinds.get(applied.kind, 0) + 1
    # wamid.xyzxyz and wamid.ID are stored; the other cases reusing wamid.xyzxyz are
    # refused as reused idempotency keys; the reaction, edit and deletion targets were
    # never received.
    assert kinds == {
        "inbound": 2,
        "reused id": 14,
        "unknown target": 5,
        "unsupported": 5,
        "status": 7,
    }


@pytest.mark.skipif(
    not CPYTHON.is_dir(), reason="this Python has no test suite (Lib/test/test_email/data)"
)
def test_every_cpython_email_applies() -> None:
    convs = _convs()
    applied = 0
    for path in sorted(CPYTHON.glob("msg_*.txt")):
        try:
            results = email.parse(path.read_bytes(), received_at=NOW)
        except ParseError:  # pragma: no cover - the corpus has none (see test_channels_email)
            continue
        for result in results:
            try:
                convs.apply(result)
            except IdempotencyError:  # msg_01, 03, 20, 29 share one Message-ID
                continue
            applied += 1
    assert applied >= 40


def test_email_reply_continues_the_thread_through_references() -> None:
    convs = _convs()
    first = (
        b"From: Ann <ann@example.com>\r\nTo: help@acme.example\r\nSubject: Order 8812\r\n"
        b"Message-ID: <a1@mail.example.com>\r\nDate: Mon, 02 Mar 2026 08:00:00 +0000\r\n"
        b"\r\nWhere is it?\r\n"
    )
    # A month later: only the References header ties the reply to the thread.
    reply = (
        b"From: Ann <ann@example.com>\r\nTo: help@acme.example\r\n"
        b"Subject: Re: Order 8812\r\nMessage-ID: <a3@work.example>\r\n"
        b"References: <a1@mail.example.com> <a2@acme.example>\r\n"
        b"Date: Thu, 02 Apr 2026 08:30:00 +0000\r\n\r\nAny news?\r\n"
    )
    (m1,) = email.parse(first)
    (m2,) = email.parse(reply)
    assert isinstance(m1, Inbound) and isinstance(m2, Inbound)
    r1 = convs.ingest(m1)
    r2 = convs.ingest(m2)
    assert r2.thread_id == r1.thread_id, r2.decision.reason
    assert "a1@mail.example.com" in r2.decision.reason
