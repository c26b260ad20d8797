"""Public operations written once, run by the sync or the async service.

A public method is defined once, on the services' shared base class, as a function that
builds an :data:`~convthread.service._core.Op` (a generator of store calls) from its
arguments: its signature, docstring and argument handling are the public method's, and
``@operation(retries=...)`` states its retry budget. Each service class then gets a real
method of its own for it: ``Conversations`` a function that runs the op with
:func:`run_sync`, ``AsyncConversations`` a coroutine function that awaits
:func:`run_async`. The driver calls the definition afresh for every attempt, so a retry
starts from fresh reads; argument handling is pure, so running it again changes nothing.

A ``@procedure`` is a public method whose work is several operations in turn, each with
its own retries (an import runs one per chunk): a generator that yields ``(factory,
max_retries)`` steps, is sent each step's result, and is thrown a step's error (so it may
catch it and carry on).

Every writing method (``retries=True``, and each procedure) runs observed: its log
record, span and metrics come from :mod:`convthread.service._observe`, in one place.

The generated methods carry the definition's name, docstring and parameters
(``functools.wraps`` and an explicit ``__signature__``), with the return annotation of
the op's result, so ``inspect.signature``, ``help()`` and the argument checks built from
the type hints see the public method. For type checkers, the definition stays on the base
class as a descriptor whose ``__get__`` is overloaded on the service it is read from.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Coroutine, Generator
from functools import partial
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from convthread.ports import AsyncStore, Store
from convthread.service._core import Op
from convthread.service._drivers import (
    Observer,
    run_async,
    run_once_async,
    run_once_sync,
    run_sync,
)
from convthread.service._observe import observed_async, observed_sync, watch_for

if TYPE_CHECKING:
    from typing_extensions import Self

    from convthread.service._api import AsyncConversations, Conversations

P = ParamSpec("P")
T = TypeVar("T")

#: One step of a procedure: an op factory (called afresh on each retry) and its budget.
Step = tuple[Callable[[], Op[Any]], int]
#: A procedure: yields steps, is sent their results, returns its own.
Steps = Generator[Step, Any, T]

# The definition's return annotation names what its driver returns: ``Op[X]`` -> ``X``.
_RESULT = re.compile(r"^(?:Op|Steps)\[(?P<result>.+)\]$")


class _Defined(Generic[P, T]):
    """A public method defined once; each service class gets its own driver for it."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.__doc__ = fn.__doc__

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(self, obj: Conversations, owner: type[Any] | None = None) -> Callable[P, T]: ...
    @overload
    def __get__(
        self, obj: AsyncConversations, owner: type[Any] | None = None
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...
    def __get__(self, obj: object, owner: type[Any] | None = None) -> Any:
        if obj is None:
            return self
        # Each service class holds its own generated method, found before this one.
        raise TypeError(f"{self.fn.__name__} runs on Conversations or AsyncConversations")

    def sync_method(self) -> Callable[..., Any]:
        raise NotImplementedError

    def async_method(self) -> Callable[..., Any]:
        raise NotImplementedError

    def method_for(self, cls: type, *, asynchronous: bool) -> Callable[..., Any]:
        """The method ``cls`` gets: this definition's name, docstring and parameters."""
        method = self.async_method() if asynchronous else self.sync_method()
        functools.update_wrapper(method, self.fn)
        method.__qualname__ = f"{cls.__qualname__}.{self.fn.__name__}"
        annotation = self.fn.__annotations__.get("return")
        match = _RESULT.match(annotation) if isinstance(annotation, str) else None
        if match is None:
            raise TypeError(
                f"{self.fn.__qualname__} must be annotated '-> Op[...]' or '-> Steps[...]'"
            )
        result = match.group("result")
        method.__annotations__ = {**self.fn.__annotations__, "return": result}
        method.__signature__ = inspect.signature(self.fn).replace(  # type: ignore[attr-defined]
            return_annotation=result
        )
        return method


class Operation(_Defined[P, T]):
    """A public method whose work is one op, run with or without conflict retries."""

    def __init__(self, fn: Callable[..., Any], *, retries: bool) -> None:
        super().__init__(fn)
        self.retries = retries

    def sync_method(self) -> Callable[..., Any]:
        fn = self.fn
        if self.retries:
            watch = watch_for(fn.__name__)

            def method(service: Any, *args: Any, **kwargs: Any) -> Any:
                factory = partial(fn, service, *args, **kwargs)
                run = partial(run_sync, service.store, factory, service.config.max_retries)
                return observed_sync(watch, run, args, kwargs)

            return method

        def read(service: Any, *args: Any, **kwargs: Any) -> Any:
            return run_once_sync(service.store, fn(service, *args, **kwargs))

        return read

    def async_method(self) -> Callable[..., Any]:
        fn = self.fn
        if self.retries:
            watch = watch_for(fn.__name__)

            async def method(service: Any, *args: Any, **kwargs: Any) -> Any:
                factory = partial(fn, service, *args, **kwargs)
                run = partial(run_async, service.store, factory, service.config.max_retries)
                return await observed_async(watch, run, args, kwargs)

            return method

        async def read(service: Any, *args: Any, **kwargs: Any) -> Any:
            return await run_once_async(service.store, fn(service, *args, **kwargs))

        return read


class Procedure(_Defined[P, T]):
    """A public method whose work is several ops in turn (see the module docstring)."""

    def sync_method(self) -> Callable[..., Any]:
        fn = self.fn
        watch = watch_for(fn.__name__)

        def method(service: Any, *args: Any, **kwargs: Any) -> Any:
            run = partial(drive_sync, service.store, fn(service, *args, **kwargs))
            return observed_sync(watch, run, args, kwargs)

        return method

    def async_method(self) -> Callable[..., Any]:
        fn = self.fn
        watch = watch_for(fn.__name__)

        async def method(service: Any, *args: Any, **kwargs: Any) -> Any:
            run = partial(drive_async, service.store, fn(service, *args, **kwargs))
            return await observed_async(watch, run, args, kwargs)

        return method


def operation(
    *, retries: bool
) -> Callable[[Callable[Concatenate[Any, P], Op[T]]], Operation[P, T]]:
    """Define a public method by the op it runs; ``retries``: whether a conflicting
    commit is retried (up to the service's ``max_retries``) or, for reads, not at all."""

    def define(fn: Callable[Concatenate[Any, P], Op[T]]) -> Operation[P, T]:
        return Operation(fn, retries=retries)

    return define


def procedure(fn: Callable[Concatenate[Any, P], Steps[T]]) -> Procedure[P, T]:
    """Define a public method by the steps it runs (see the module docstring)."""
    return Procedure(fn)


def drive_sync(store: Store, steps: Steps[T], observe: Observer | None = None) -> T:
    """Run a procedure's steps one after the other with :func:`run_sync`."""
    try:
        factory, retries = next(steps)
        while True:
            try:
                result = run_sync(store, factory, retries, observe)
            except Exception as exc:
                factory, retries = steps.throw(exc)
            else:
                factory, retries = steps.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    finally:
        steps.close()


async def drive_async(store: AsyncStore, steps: Steps[T], observe: Observer | None = None) -> T:
    """Run a procedure's steps one after the other with :func:`run_async`."""
    try:
        factory, retries = next(steps)
        while True:
            try:
                result = await run_async(store, factory, retries, observe)
            except Exception as exc:
                factory, retries = steps.throw(exc)
            else:
                factory, retries = steps.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    finally:
        steps.close()


def build_service(cls: type, *, asynchronous: bool) -> None:
    """Give ``cls`` a method of its own for each public method defined on its bases."""
    seen = set(vars(cls))  # what a class defines itself overrides its bases
    for base in cls.__mro__[1:]:
        for name, value in vars(base).items():
            if name in seen:
                continue
            seen.add(name)
            if isinstance(value, _Defined):
                setattr(cls, name, value.method_for(cls, asynchronous=asynchronous))
