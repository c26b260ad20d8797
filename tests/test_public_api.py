"""The public surface: exactly what __all__ lists, and optional arguments keyword-only."""

from __future__ import annotations

import importlib
import inspect

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


def test_sync_and_async_services_offer_the_same_operations() -> None:
    def ops(cls: type) -> set[str]:
        return {n for n, _ in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}

    assert ops(convthread.Conversations) == ops(convthread.AsyncConversations)
    for name in ops(convthread.AsyncConversations) - {"close"}:
        assert inspect.iscoroutinefunction(getattr(convthread.AsyncConversations, name)), name
