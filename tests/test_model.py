"""The domain vocabulary: validation on construction, typed errors, UTC timestamps."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import convthread as ct
from convthread import errors
from convthread.domain.model import MAX_METADATA_BYTES, MAX_PROVIDER_ID, to_json_values

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
PHONE = ct.phone("+447911123456")


def inbound(**overrides: object) -> ct.Inbound:
    fields: dict[str, object] = {
        "channel": "sms",
        "provider_message_id": "SM1",
        "sender": (ct.SenderIdentifier(PHONE, ct.Trust.ASSERTED),),
        "content": ct.Content(text="hello"),
        "sent_at": T0,
    }
    fields.update(overrides)
    return ct.Inbound(**fields)  # type: ignore[arg-type]


def test_trust_is_ordered() -> None:
    assert ct.Trust.CLAIMED < ct.Trust.ASSERTED < ct.Trust.VERIFIED
    assert max([ct.Trust.VERIFIED, ct.Trust.CLAIMED], key=lambda t: t.rank) is ct.Trust.VERIFIED
    assert ct.Trust.ASSERTED >= ct.Trust.ASSERTED


def test_naive_datetime_is_rejected() -> None:
    with pytest.raises(errors.ValidationError, match="naive"):
        inbound(sent_at=datetime(2026, 3, 2, 9, 0))


def test_aware_datetime_is_kept_in_utc() -> None:
    paris = timezone(timedelta(hours=1))
    msg = inbound(sent_at=datetime(2026, 3, 2, 10, 0, tzinfo=paris))
    assert msg.sent_at == T0
    assert msg.sent_at.utcoffset() == timedelta(0)


def test_no_sender_is_rejected() -> None:
    with pytest.raises(errors.ValidationError, match="at least one sender"):
        inbound(sender=())


def test_empty_provider_id_is_rejected() -> None:
    with pytest.raises(errors.ValidationError, match="provider_message_id"):
        inbound(provider_message_id="")


def test_oversized_text_is_rejected_with_the_limit() -> None:
    with pytest.raises(errors.ContentTooLarge) as info:
        ct.Content(text="x" * (ct.MAX_TEXT + 1))
    assert info.value.limit == ct.MAX_TEXT
    assert info.value.size == ct.MAX_TEXT + 1
    ct.Content(text="x" * ct.MAX_TEXT)  # exactly at the limit is fine


def test_oversized_metadata_and_ids_are_rejected() -> None:
    with pytest.raises(errors.ContentTooLarge):
        ct.Content(metadata={"blob": "x" * MAX_METADATA_BYTES})
    with pytest.raises(errors.ContentTooLarge):
        inbound(provider_message_id="x" * (MAX_PROVIDER_ID + 1))


def test_unencodable_metadata_is_rejected() -> None:
    with pytest.raises(errors.ValidationError, match="not encodable"):
        ct.Content(metadata={"x": object()})


def test_channel_names_are_validated() -> None:
    assert ct.Channel.validate("whatsapp") == "whatsapp"
    for bad in ("", "WhatsApp", "sms channel", "9sms", "x" * 40):
        with pytest.raises(errors.ValidationError):
            inbound(channel=bad)


def test_party_parse_round_trips_and_rejects_unknown_kinds() -> None:
    party = ct.Party.parse("queue:billing")
    assert party == ct.Party(ct.PartyKind.QUEUE, "billing")
    assert str(party) == "queue:billing"
    with pytest.raises(errors.ValidationError, match="unknown party kind"):
        ct.Party.parse("robot:r2")
    with pytest.raises(errors.ValidationError, match="kind:id"):
        ct.Party.parse("alice")


def test_default_idempotency_key_is_channel_and_provider_id() -> None:
    assert inbound().key == "sms|SM1"
    assert inbound(idempotency_key="k-1").key == "k-1"


def test_decoding_validates_too() -> None:
    data = msgspec.json.encode(inbound())
    assert msgspec.json.decode(data, type=ct.Inbound) == inbound()
    broken = data.replace(b'"sms"', b'"Not A Channel"')
    with pytest.raises((msgspec.ValidationError, errors.ValidationError)):
        msgspec.json.decode(broken, type=ct.Inbound)


def test_events_round_trip_through_the_tagged_union() -> None:
    from convthread import codec

    event = ct.LifecycleChanged(at=T0, status=ct.ThreadStatus.RESOLVED, reason="done")
    assert codec.decode_event(codec.encode(event)) == event
    started = ct.ThreadStarted(at=T0, customer_id="cu_1", channel="sms")
    assert codec.decode_event(codec.encode(started)) == started


def test_old_event_data_without_new_fields_still_decodes() -> None:
    """Schema evolution: a field added later with a default is absent from old data."""
    from convthread import codec

    old = msgspec.msgpack.encode(
        {"type": "thread_started", "at": T0, "customer_id": "cu_1", "channel": "sms"}
    )
    event = codec.decode_event(old)
    assert isinstance(event, ct.ThreadStarted)
    assert event.topic is None and event.predecessor is None


_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
_texts = st.text(max_size=8) | st.sampled_from(["\ud800", "é", "plain"])
_values = st.recursive(
    _json_scalars | _texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_texts, inner, max_size=3),
    max_leaves=6,
)


@given(st.dictionaries(_texts | st.integers(), _values, min_size=1, max_size=4))
def test_metadata_check_takes_the_same_decision_on_every_path(metadata: dict) -> None:
    """Content keeps the metadata that the full check keeps, and refuses what it refuses
    (the cheap path for plain ASCII metadata must agree with it)."""
    try:
        want = to_json_values(metadata, "metadata")
    except errors.ValidationError as exc:
        refused = str(exc)
    else:
        assert ct.Content(text="x", metadata=metadata).metadata == want
        return
    with pytest.raises(errors.ValidationError) as got:
        ct.Content(text="x", metadata=metadata)
    assert str(got.value) == refused
