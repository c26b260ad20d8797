"""Erasing a customer (the right to erasure) as a store-call generator.

What goes, in one atomic batch, then ``store.scrub()`` so the bytes leave storage:

* **message content**: every message event of the customer's threads
  (``MessageReceived``, ``MessageSent``, ``MessageEdited``) and every attribute or intent
  (``AttributeSet``, ``IntentDetected``) is rewritten in place as ``MessageErased``,
  keeping its sequence number; free text on the remaining events (reasons, delivery
  error texts, topics, decisions and their evidence, provider message ids) is blanked.
  The cached thread state is refolded from the rewritten events, so it holds no
  attributes or topic either. The thread skeleton (ids, channels, statuses, handoffs
  between parties, times) remains.
* **identity**: every identifier the customer ever had is unlinked (its ``ident`` entry
  deleted, if it still points to this customer); the identity events that carry
  identifiers or evidence are rewritten content-free (``CustomerErased``, the type it
  replaces in ``original_type``; merge and unmerge records keep only ids); a
  ``CustomerErased`` event closes the stream, naming the threads erased with it (the
  change feed's consumers read it as ``customer.erased``).
* **index entries that carry personal data**: ``msg`` and ``idem`` (their keys hold
  provider message ids; an e-mail Message-ID often embeds an address, and idempotency
  keys are the caller's free text), ``early`` (statuses waiting for those messages),
  ``mark`` (edit fingerprints, reactions), ``open`` and ``latest`` (their keys hold the
  topic, e.g. an order number), handoff snapshots (``hsnap``, keys
  ``{thread}|{handoff}``, and the snapshot checkpoint ``{thread}|``), verifications,
  continuation tokens, token failure windows and merge suggestions that name the
  customer or one of their identifiers, and ``unsupported`` entries kept for review that belong to
  one of the customer's messages or whose raw payload contains one of their identifier
  values (best effort: that payload is free-form).

Merged customers: a merge recorded that two customer records are one person, so erasing
either side erases the whole merged customer (the survivor and every customer it
absorbed and still holds). Unmerge first to erase only one of them. A customer that was
unmerged away (restored) is another person and is not touched.

Erasure is idempotent: running it again rewrites nothing new and only scrubs.
A redelivery of an erased message that arrives afterwards is no longer recognised as a
duplicate (its ``msg`` key is gone) and is stored as a new message of a new customer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgspec

from convthread import codec
from convthread._heads import head_of
from convthread.domain.events import (
    AttributeSet,
    CustomerCreated,
    CustomerErased,
    CustomerEvent,
    CustomerMerged,
    CustomerUnmerged,
    IdentifierLinked,
    IdentifierUnlinked,
    IdentifierVerified,
    IntentDetected,
    MergeSuggested,
    MessageEdited,
    MessageErased,
    MessageReceived,
    MessageSent,
    ProviderIdRecorded,
    ThreadEvent,
    ThreadStarted,
)
from convthread.domain.model import Identifier
from convthread.domain.thread import CustomerState, evolve_customer, fold
from convthread.domain.updates import Unsupported
from convthread.errors import ConvthreadError, NotFound
from convthread.ports import ANY, Append, Batch, Delete, HeadWrite, Put, Rewrite
from convthread.service import _core as core
from convthread.service import _handoff, _identity, _threads, _tokens
from convthread.service._core import (
    NS_CUSTOMER,
    NS_EARLY,
    NS_HANDOFF,
    NS_HSNAP,
    NS_IDEM,
    NS_IDENT,
    NS_LATEST,
    NS_MARK,
    NS_MSG,
    NS_OPEN,
    NS_SUGGEST,
    NS_SUGGEST_PAIR,
    NS_TOKEN,
    NS_TOKFAIL,
    NS_UNSUPPORTED,
    NS_VERIFY,
    Config,
    Op,
)
from convthread.service._identity import _records

__all__ = ["ErasureReport", "erase_customer"]


#: Thread events whose whole payload is personal: replaced by ``MessageErased``.
_CONTENT_EVENTS: Final = (MessageReceived, MessageSent, MessageEdited, AttributeSet, IntentDetected)
#: Free-text fields blanked on every other thread event that has them.
_TEXT_FIELDS: Final = frozenset({"reason", "error", "detail", "subject"})
#: Fields set to None on every other thread event that has them.
_NONE_FIELDS: Final = frozenset({"decision", "topic"})


class ErasureReport(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`~convthread.Conversations.erase_customer` did.

    ``customer_ids``: the customers erased (the one asked for and those merged with it);
    ``thread_ids``: their threads; ``events_rewritten`` and ``entries_deleted`` count the
    changes of this run (0 and 0 when it ran before: erasure is idempotent).
    """

    customer_ids: tuple[str, ...]
    thread_ids: tuple[str, ...]
    events_rewritten: int
    entries_deleted: int


def _tag(event: msgspec.Struct) -> str:
    tag = type(event).__struct_config__.tag
    return str(tag) if tag is not None else type(event).__name__


def erased_thread_event(event: ThreadEvent) -> ThreadEvent:
    """The content-free form of a thread event (the event itself when it has nothing)."""
    if isinstance(event, MessageErased):
        return event
    if isinstance(event, _CONTENT_EVENTS):
        return MessageErased(at=event.at, original_type=_tag(event))
    if isinstance(event, ProviderIdRecorded):
        return msgspec.structs.replace(event, provider_message_id="")
    changes: dict[str, Any] = {}
    for name in event.__struct_fields__:
        value = getattr(event, name)
        if name in _TEXT_FIELDS and isinstance(value, str) and value:
            changes[name] = ""
        elif name in _NONE_FIELDS and value is not None:
            changes[name] = None
    return msgspec.structs.replace(event, **changes) if changes else event


def erased_customer_event(event: CustomerEvent) -> CustomerEvent:
    """The content-free form of an identity event."""
    if isinstance(event, CustomerCreated):
        return CustomerCreated(at=event.at) if event.decision is not None else event
    if isinstance(event, IdentifierLinked | IdentifierUnlinked | IdentifierVerified):
        return CustomerErased(at=event.at, by="erasure", original_type=_tag(event))
    if isinstance(event, MergeSuggested):
        return CustomerErased(at=event.at, by="erasure", original_type=_tag(event))
    if isinstance(event, CustomerMerged):
        return msgspec.structs.replace(event, identifiers=(), decision=None, pointers=(), by="")
    if isinstance(event, CustomerUnmerged):
        return msgspec.structs.replace(event, identifiers=(), pointers=(), reason="", by="")
    return event


def _identifiers_of(events: list[tuple[int, CustomerEvent]]) -> set[Identifier]:
    found: set[Identifier] = set()
    for _seq, ev in events:
        if isinstance(
            ev, IdentifierLinked | IdentifierUnlinked | IdentifierVerified | MergeSuggested
        ):
            found.add(ev.identifier)
        elif isinstance(ev, CustomerMerged | CustomerUnmerged):
            found.update(ident for ident, _trust in ev.identifiers)
    return found


def _group(customer_id: str) -> Op[list[tuple[str, CustomerState, int]]]:
    """The merged customer ``customer_id`` belongs to: its root survivor and every
    customer the root absorbed (transitively) and did not give back."""
    state, version = yield from core.load_customer(customer_id)
    seen = {customer_id}
    while state.merged_into is not None and state.merged_into not in seen:
        seen.add(state.merged_into)
        state, version = yield from core.load_customer(state.merged_into)
    root = state.id
    group: list[tuple[str, CustomerState, int]] = [(root, state, version)]
    members = {root}
    todo = [root]
    while todo:
        current = todo.pop()
        events = yield from core.read_customer_events(current)
        absorbed: dict[str, bool] = {}
        for _seq, ev in events:
            if isinstance(ev, CustomerMerged) and ev.survivor == current:
                absorbed[ev.absorbed] = True
            elif isinstance(ev, CustomerUnmerged) and ev.survivor == current:
                absorbed[ev.restored] = False
        for other, held in absorbed.items():
            if not held or other in members:
                continue
            try:
                other_state, other_version = yield from core.load_customer(other)
            except NotFound:
                continue
            if other_state.merged_into != current:
                continue
            members.add(other)
            group.append((other, other_state, other_version))
            todo.append(other)
    return group


def erase_customer(config: Config, customer_id: str, by: str = "") -> Op[ErasureReport]:
    group = yield from _group(customer_id)
    member_ids = [cid for cid, _s, _v in group]
    now = config.clock.now()
    appends: list[Append] = []
    puts: list[Put] = []
    deletes: list[Delete] = []
    rewrites: list[Rewrite] = []
    heads: list[HeadWrite] = []
    identifiers: set[Identifier] = set()
    thread_ids: dict[str, None] = {}
    # The members whose stream an erasure event closes (appended once the erased
    # threads are known: the event names them, for the change feed's consumers).
    closing: list[tuple[str, CustomerState, int]] = []
    erased_threads: list[str] = []

    # 1. Identity streams and states.
    for cid, state, item_version in group:
        events = yield from core.read_customer_events(cid)
        identifiers |= _identifiers_of(events)
        identifiers.update(ident for ident, _trust in state.identifiers.values())
        for seq, ev in events:
            new = erased_customer_event(ev)
            if new is not ev and codec.encode(new) != codec.encode(ev):
                rewrites.append(Rewrite(cid, seq, codec.encode(new)))
            if isinstance(ev, CustomerMerged) and ev.survivor == cid:
                thread_ids.update(dict.fromkeys(ev.threads))
        if not state.erased or state.identifiers:
            closing.append((cid, state, item_version))
        thread_ids.update(dict.fromkeys((yield from core.customer_thread_ids(cid))))
        for ns in (NS_OPEN, NS_LATEST):
            entries = yield from _scan_all(ns, f"{cid}|")
            deletes.extend(Delete(ns, key, ANY) for key in entries)

    # 2. Identifiers that still point to a member.
    keys = sorted(ident.key for ident in identifiers)
    owned = yield from core.get_many(NS_IDENT, keys)
    for key, item in owned.items():
        if core.decode_identref(item.value).customer_id in member_ids:
            deletes.append(Delete(NS_IDENT, key, item.version))

    # 3. Threads: content, cached state, message keys, marks, snapshots, handoff records.
    handoff_ids: set[str] = set()
    existing = yield from core.get_threads(list(thread_ids))
    for tid in thread_ids:
        found = existing.get(tid)
        if found is None:
            continue
        old_thread, head_version = found
        if old_thread.customer_id not in member_ids:
            continue  # given back by an unmerge: another person's thread
        erased_threads.append(tid)
        records = yield from core.read(tid)
        pairs: list[tuple[int, ThreadEvent]] = []
        channel_of: dict[int, str] = {}
        for rec in records:
            tev = codec.decode_event(rec.data)
            if isinstance(tev, MessageReceived | MessageSent):
                channel_of[rec.seq] = tev.channel
            handoff_id = getattr(tev, "handoff_id", "")
            if handoff_id:
                handoff_ids.add(handoff_id)
            deletes.extend(_message_keys(tev, channel_of))
            erased_tev = erased_thread_event(tev)
            data = codec.encode(erased_tev)
            if data != rec.data:
                rewrites.append(Rewrite(tid, rec.seq, data))
            pairs.append((rec.seq, erased_tev))
        # Guard: a message appended meanwhile would escape erasure; the empty append
        # makes the batch conflict (and the driver re-run erasure) instead.
        appends.append(Append(tid, len(records), ()))
        if pairs and isinstance(pairs[0][1], ThreadStarted):
            new_thread = fold(tid, pairs)
            if new_thread != old_thread:
                heads.append(HeadWrite(head_of(new_thread, core.TENANT), head_version))
        for ns in (NS_MARK, NS_HSNAP):
            entries = yield from _scan_all(ns, f"{tid}|")
            deletes.extend(Delete(ns, key, ANY) for key in entries)

    for cid, state, item_version in closing:
        erased = CustomerErased(at=now, by=by, threads=tuple(erased_threads))
        appends.append(Append(cid, state.version, (codec.encode(erased),)))
        new_state = evolve_customer(state, cid, state.version + 1, erased)
        puts.append(Put(NS_CUSTOMER, cid, codec.encode(new_state), item_version))

    # Handoff records keep the free-text reason a handoff was requested for (it may
    # quote the customer): blanked, like the reasons in the rewritten events.
    handoff_items = yield from core.get_many(NS_HANDOFF, sorted(handoff_ids))
    for hid, hitem in handoff_items.items():
        hrecord = _handoff.decode_record(hitem.value)
        if hrecord.reason:
            blank = msgspec.structs.replace(hrecord, reason="")
            puts.append(Put(NS_HANDOFF, hid, codec.encode(blank), hitem.version))

    # 4. Records that name a member or one of the identifiers: verifications (they hold
    # the identifier), continuation tokens, token failure windows (keyed by identifier),
    # merge suggestions (their decision names the shared identifier).
    ident_keys = {ident.key for ident in identifiers}
    deletes.extend(Delete(NS_TOKFAIL, key, ANY) for key in sorted(ident_keys))
    members = set(member_ids)
    for ns in (NS_VERIFY, NS_TOKEN, NS_SUGGEST):
        named_entries = yield from _scan_entries(ns)
        for key, value in named_entries:
            if _names(_RECORDS[ns](value), members, ident_keys):
                deletes.append(Delete(ns, key, ANY))
    pair_entries = yield from _scan_entries(NS_SUGGEST_PAIR)
    for key, value in pair_entries:
        if members & set(key.split("|")):
            deletes.append(Delete(NS_SUGGEST_PAIR, key, ANY))
            deletes.append(Delete(NS_SUGGEST, value.decode(errors="replace"), ANY))

    # The identity ledger: merge records (they hold identifiers so unmerge can restore
    # them), and suggestions and verifications found by the identity module's own rules.
    ledger = yield from _identity.erasure_deletes(members, ident_keys)
    deletes.extend(ledger)

    # 5. Unsupported content kept for review: entries of these messages, or whose raw
    # payload names one of the identifiers (best effort: the payload is free-form).
    message_keys = {d.key for d in deletes if d.ns == NS_MSG}
    needles = [ident.value.encode() for ident in identifiers if len(ident.value) >= 5]
    after = ""
    while True:
        page = yield from core.scan(NS_UNSUPPORTED, "", after, 1000)
        for key, item in page:
            if (
                any(n in item.value for n in needles)
                or _unsupported_key(item.value) in message_keys
            ):
                deletes.append(Delete(NS_UNSUPPORTED, key, ANY))
        if len(page) < 1000:
            break
        after = page[-1][0]

    # Only delete what exists (and, for message keys, what points into these threads),
    # so a second run reports nothing deleted.
    deletes = yield from _existing(deletes, set(thread_ids))
    batch = Batch(
        appends=tuple(appends),
        puts=tuple(puts),
        deletes=tuple(deletes),
        rewrites=tuple(rewrites),
        heads=tuple(heads),
    )
    if (
        batch.puts
        or batch.deletes
        or batch.rewrites
        or batch.heads
        or any(a.events for a in batch.appends)
    ):
        yield from core.commit(batch)
    yield ("scrub", ())
    # This process's prefetch hints name the erased identifiers: forget them too.
    config.hints.forget(member_ids)
    return ErasureReport(
        customer_ids=tuple(member_ids),
        thread_ids=tuple(t for t in thread_ids if t in existing),
        events_rewritten=len(rewrites),
        entries_deleted=len(deletes),
    )


def _message_keys(event: ThreadEvent, channel_of: dict[int, str]) -> list[Delete]:
    """Index entries keyed by a message's provider id or idempotency key."""
    out: list[Delete] = []
    if isinstance(event, MessageReceived):
        key = f"{event.channel}|{event.provider_message_id}"
        out.append(Delete(NS_MSG, key, ANY))
        out.append(Delete(NS_EARLY, key, ANY))
        out.append(Delete(NS_IDEM, event.idempotency_key, ANY))
    elif isinstance(event, MessageSent):
        if event.provider_message_id:
            key = f"{event.channel}|{event.provider_message_id}"
            out.append(Delete(NS_MSG, key, ANY))
            out.append(Delete(NS_EARLY, key, ANY))
        if event.idempotency_key:
            out.append(Delete(NS_IDEM, event.idempotency_key, ANY))
    elif isinstance(event, ProviderIdRecorded) and event.provider_message_id:
        channel = channel_of.get(event.message_seq)
        if channel is not None:
            out.append(Delete(NS_MSG, f"{channel}|{event.provider_message_id}", ANY))
    return out


#: How to read the records of the namespaces erasure looks into, as plain values (the
#: field names of the record, whichever layout it was stored in).
_RECORDS: Final[dict[str, Callable[[bytes], Any]]] = {
    NS_VERIFY: lambda value: _plain(_records._verification, value),
    NS_TOKEN: lambda value: _plain(_tokens._record, value),
    NS_SUGGEST: lambda value: _plain(_records._suggestion, value),
}


def _plain(decode: Callable[[bytes], Any], value: bytes) -> Any:
    try:
        return codec.to_builtins(decode(value))
    except (msgspec.DecodeError, ConvthreadError):
        return None


_bare_unsupported: Final = codec.decoder(Unsupported)


def _unsupported_key(value: bytes) -> str:
    """``{channel}|{provider message id}`` of an encoded Unsupported entry (the entry the
    service keeps, or a bare report; "" if none)."""
    entry = _plain(_threads._unsupported_decoder, value)
    obj = entry.get("report") if isinstance(entry, dict) else _plain(_bare_unsupported, value)
    if isinstance(obj, dict) and obj.get("provider_message_id"):
        return f"{obj.get('channel', '')}|{obj['provider_message_id']}"
    return ""


def _names(obj: Any, members: set[str], ident_keys: set[str]) -> bool:
    """Whether a record (as plain values) names one of ``members`` (as ``customer_id``,
    ``other``) or carries one of the identifiers (``identifier``)."""
    if not isinstance(obj, dict):
        return False
    if obj.get("customer_id") in members or obj.get("other") in members:
        return True
    ident = obj.get("identifier")
    if isinstance(ident, dict):
        key = f"{ident.get('kind', '')}:{ident.get('scope', '')}:{ident.get('value', '')}"
        return key in ident_keys
    return False


def _scan_entries(ns: str) -> Op[list[tuple[str, bytes]]]:
    out: list[tuple[str, bytes]] = []
    after = ""
    while True:
        page = yield from core.scan(ns, "", after, 1000)
        out.extend((key, item.value) for key, item in page)
        if len(page) < 1000:
            return out
        after = page[-1][0]


def _scan_all(ns: str, prefix: str) -> Op[list[str]]:
    keys: list[str] = []
    after = ""
    while True:
        page = yield from core.scan(ns, prefix, after, 1000)
        keys.extend(key for key, _item in page)
        if len(page) < 1000:
            return keys
        after = page[-1][0]


def _existing(deletes: list[Delete], threads: set[str]) -> Op[list[Delete]]:
    """The deletes whose key exists (duplicates dropped); a message key only if it
    points into one of ``threads``."""
    by_ns: dict[str, dict[str, Delete]] = {}
    for d in deletes:
        by_ns.setdefault(d.ns, {}).setdefault(d.key, d)
    out: list[Delete] = []
    for ns, wanted in by_ns.items():
        found = yield from core.get_many(ns, list(wanted))
        for key, d in wanted.items():
            item = found.get(key)
            if item is None:
                continue
            if ns in (NS_MSG, NS_IDEM) and core.decode_msgref(item.value).thread_id not in threads:
                continue
            out.append(d)
    return out
