"""The public surface: exactly what __all__ lists, and optional arguments keyword-only."""

from __future__ import annotations

import importlib
import inspect
import pydoc
import typing
from typing import Any

import pytest

import convthread

PUBLIC_MODULES = [
    "convthread",
    "convthread.errors",
    "convthread.ports",
    "convthread.codec",
    "convthread.importing",
    "convthread.stores",
    "convthread.service",
    "convthread.domain.model",
    "convthread.domain.identifiers",
    "convthread.domain.events",
    "convthread.domain.feed",
    "convthread.domain.thread",
    "convthread.domain.continuity",
    "convthread.domain.segments",
    "convthread.domain.updates",
    "convthread.domain.identity",
    "convthread.domain.merge",
    "convthread.domain.handoff",
    "convthread.domain.snapshot",
    "convthread.domain.redaction",
    "convthread.domain.render",
    "convthread.domain.tokens",
    "convthread.domain.timeline",
    "convthread.channels",
    "convthread.testing",
]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_lists_only_existing_unique_names(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(exported) == len(set(exported)), "duplicates in __all__"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing attributes: {missing}"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_public_definition_is_exported(name: str) -> None:
    """A class or function defined in the module without a leading underscore is in
    __all__ (or the module is re-exporting it from where it is defined)."""
    module = importlib.import_module(name)
    defined = {
        n
        for n, obj in vars(module).items()
        if not n.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and getattr(obj, "__module__", None) == name
    }
    unexported = sorted(defined - set(module.__all__))
    allowed = ALLOWED_UNEXPORTED.get(name, set())
    assert not (set(unexported) - allowed), f"{name} defines but does not export {unexported}"


# Helpers that are public by module path but deliberately not re-exported.
ALLOWED_UNEXPORTED: dict[str, set[str]] = {
    "convthread.domain.thread": {"check_transition", "start_state"},
    "convthread.codec": {"decode_thread_state", "decode_customer_state"},
}


def test_top_level_reexports_every_public_name_once() -> None:
    assert sorted(convthread.__all__) == sorted(set(convthread.__all__))
    assert convthread.__version__


@pytest.mark.parametrize("cls", [convthread.Conversations, convthread.AsyncConversations])
def test_optional_arguments_are_keyword_only(cls: type) -> None:
    for name, fn in inspect.getmembers(cls, inspect.isfunction):
        if name.startswith("_"):
            continue
        for param in inspect.signature(fn).parameters.values():
            if param.default is not inspect.Parameter.empty:
                assert param.kind is inspect.Parameter.KEYWORD_ONLY, (
                    f"{cls.__name__}.{name}: optional argument {param.name!r} must be keyword-only"
                )


def _public_methods(cls: type) -> dict[str, Any]:
    return {n: f for n, f in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}


#: Methods that return an iterator rather than a result: (sync, async) return types.
ITERATORS: dict[str, tuple[type, type]] = {
    "follow": (convthread.Follower, convthread.AsyncFollower),
}


def test_sync_and_async_services_offer_the_same_operations() -> None:
    """Each public method is defined once: both services have it, with the same
    parameters, return annotation (the async one's is what awaiting it gives), type
    hints and docstring; the async ones are coroutine functions."""
    sync = _public_methods(convthread.Conversations)
    async_ = _public_methods(convthread.AsyncConversations)
    assert sync.keys() == async_.keys()
    assert len(sync) > 40
    for name, fn in sync.items():
        other = async_[name]
        if name in ITERATORS:  # a plain method returning an iterator, of each kind
            assert inspect.signature(fn).parameters == inspect.signature(other).parameters
            hints, other_hints = typing.get_type_hints(fn), typing.get_type_hints(other)
            assert (hints.pop("return"), other_hints.pop("return")) == ITERATORS[name], name
            assert hints == other_hints, name
            assert not inspect.iscoroutinefunction(other), name
            continue
        assert inspect.signature(fn) == inspect.signature(other), name
        assert typing.get_type_hints(fn) == typing.get_type_hints(other), name
        doc = inspect.getdoc(fn)
        assert doc and doc.strip(), f"{name} has no docstring"
        assert inspect.getdoc(other) == doc, name
        assert not inspect.iscoroutinefunction(fn), name
        assert inspect.iscoroutinefunction(other), name
        assert fn.__qualname__ == f"Conversations.{name}"
        assert other.__qualname__ == f"AsyncConversations.{name}"


def test_help_shows_the_real_signature_and_docstring() -> None:
    for cls in (convthread.Conversations, convthread.AsyncConversations):
        text = pydoc.render_doc(cls.send, renderer=pydoc.plaintext)
        assert "send(self, thread_id: 'str', content: 'str | Content', *, sender:" in text
        assert "-> 'SendResult'" in text
        assert "Record an outbound message by an agent" in text
