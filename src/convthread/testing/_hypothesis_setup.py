"""Hypothesis plugin: registers a strategy for every public convthread type.

Hypothesis calls :func:`_register` when it is imported, through the ``hypothesis`` entry
point in convthread's package metadata, so ``st.from_type(Inbound)`` works in any project
that has convthread installed, without importing anything by hand.

Care taken, because this runs inside ``import hypothesis``:

* this module imports nothing heavy at import time;
* the strategies are :func:`~hypothesis.strategies.deferred`: ``convthread.testing
  .strategies`` is imported the first time one is drawn from, not now (it may be the
  very module whose ``import hypothesis`` triggered this hook);
* if convthread itself cannot be imported (a broken or partial install), nothing is
  registered and Hypothesis goes on; set ``HYPOTHESIS_NO_PLUGINS=1`` to skip all plugins.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__: list[str] = []

#: (module, type name) -> name of the strategy function in convthread.testing.strategies
#: (called without arguments). Event types of the unions are added by _register().
_TYPES: dict[tuple[str, str], str] = {
    ("convthread.domain.model", "Identifier"): "identifiers",
    ("convthread.domain.model", "SenderIdentifier"): "sender_identifiers",
    ("convthread.domain.model", "Party"): "parties",
    ("convthread.domain.model", "Content"): "contents",
    ("convthread.domain.model", "Attachment"): "attachments",
    ("convthread.domain.model", "Inbound"): "inbounds",
    ("convthread.domain.events", "Decision"): "decisions",
    ("convthread.domain.events", "Evidence"): "evidences",
    ("convthread.domain.thread", "ThreadState"): "thread_states",
    ("convthread.domain.thread", "CustomerState"): "customer_states",
    ("convthread.domain.thread", "PendingHandoff"): "pending_handoffs",
    ("convthread.domain.updates", "StatusReport"): "status_reports",
    ("convthread.domain.updates", "EditReport"): "edit_reports",
    ("convthread.domain.updates", "DeletionReport"): "deletion_reports",
    ("convthread.domain.updates", "ReactionReport"): "reaction_reports",
    ("convthread.domain.updates", "Unsupported"): "unsupported_reports",
    ("convthread.domain.continuity", "ContinuityPolicy"): "continuity_policies",
    ("convthread.domain.identifiers", "IdentifierRegistry"): "identifier_registries",
    ("convthread.service._results", "IngestResult"): "ingest_results",
    ("convthread.service._import", "HistoryReply"): "history_replies",
    ("convthread.service._results", "SendResult"): "send_results",
    ("convthread.service._results", "StoredEvent"): "stored_events",
    ("convthread.service._results", "ThreadView"): "thread_views",
    ("convthread.service._results", "CustomerView"): "customer_views",
    ("convthread.ports", "ManualClock"): "manual_clocks",
    ("convthread.ports", "Clock"): "manual_clocks",
    ("convthread.ports", "SequentialIds"): "sequential_ids",
    ("convthread.ports", "IdSource"): "sequential_ids",
    ("convthread.testing.strategies", "OutboundMessage"): "outbound_messages",
    ("convthread.testing.strategies", "Persona"): "personas",
    ("convthread.testing.strategies", "Journey"): "journeys",
}
_EVENT_UNIONS = (("convthread.domain.events", "ThreadEvent"),
                 ("convthread.domain.events", "CustomerEvent"))  # fmt: skip


def _deferred(name: str, *args: Any) -> Any:
    """A callable Hypothesis resolves when ``from_type`` first needs the strategy, so
    nothing is built (or imported) while Hypothesis is being imported."""

    def resolve(_type: Any) -> Any:
        module = importlib.import_module("convthread.testing.strategies")
        return getattr(module, name)(*args)

    return resolve


def registered_types() -> list[type[Any]]:
    """Every type :func:`_register` registers (for tests and documentation)."""
    import typing

    out: list[type[Any]] = []
    for module_name, type_name in _TYPES:
        if module_name == "convthread.testing.strategies":
            continue  # defined next to the strategies: imported lazily
        out.append(getattr(importlib.import_module(module_name), type_name))
    for module_name, union_name in _EVENT_UNIONS:
        union = getattr(importlib.import_module(module_name), union_name)
        out.extend(typing.get_args(union))
    return out


def other_public_structs() -> list[type[Any]]:
    """Public structs of ``convthread`` with no named strategy: they get one derived from
    their field types (:func:`convthread.testing.strategies.struct_strategy`)."""
    import msgspec

    convthread = importlib.import_module("convthread")
    known = set(registered_types())
    out = []
    for name in getattr(convthread, "__all__", ()):
        obj = getattr(convthread, name, None)
        if isinstance(obj, type) and issubclass(obj, msgspec.Struct) and obj not in known:
            out.append(obj)
    return out


def _register() -> None:
    """Register a strategy for every public convthread type (the entry point's hook)."""
    try:
        from hypothesis import strategies as st

        types = registered_types()
    except ImportError:  # a partial install: leave Hypothesis alone
        return
    names = {}
    for (module_name, type_name), strategy_name in _TYPES.items():
        if module_name != "convthread.testing.strategies":
            names[getattr(importlib.import_module(module_name), type_name)] = strategy_name
    for tp in types:
        if tp in names:
            st.register_type_strategy(tp, _deferred(names[tp]))
        else:  # an event type
            st.register_type_strategy(tp, _deferred("event_strategy", tp))
    try:
        others = other_public_structs()
    except ImportError:
        others = []
    for tp in others:
        st.register_type_strategy(tp, _deferred("struct_strategy", tp))
    # Types defined in the strategies module itself: registered when it is importable
    # now (it is not when its own ``import hypothesis`` is what runs this hook).
    import sys

    module = sys.modules.get("convthread.testing.strategies")
    if module is None or not hasattr(module, "journeys"):
        try:
            module = importlib.import_module("convthread.testing.strategies")
        except ImportError:
            return
    if hasattr(module, "journeys"):
        for (module_name, type_name), strategy_name in _TYPES.items():
            if module_name == "convthread.testing.strategies":
                st.register_type_strategy(getattr(module, type_name), _deferred(strategy_name))
