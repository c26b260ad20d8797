"""A Hypothesis state machine over control operations, on memory and on SQLite.

Invariants checked after every step:

* never two controllers: a party whose token is the thread's current one is the
  thread's controller (and nobody else believes it holds control);
* the fencing token only grows, by exactly one per change of control;
* stale writes never land: a refused operation leaves the stream as it was, and every
  message a bot, queue or agent sent was sent by the controller of that moment.
"""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

import convthread as ct
from convthread.errors import (
    InvalidTransition,
    NotFound,
    StaleControllerError,
    ValidationError,
)
from tests._thread_util import msg

PARTIES = ["bot:b", "queue:q", "agent:a1", "agent:a2", "agent:a3"]
_examples = itertools.count()


class _Ids:
    """Ids unique across examples that share one store."""

    def __init__(self, example: int) -> None:
        self.example = example
        self.inner = ct.SequentialIds()

    def new_id(self, prefix: str) -> str:
        return f"{self.inner.new_id(prefix)}x{self.example}"


def make_machine(store: ct.Store) -> type[RuleBasedStateMachine]:
    class ControlMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            n = next(_examples)
            self.clock = ct.ManualClock()
            self.convs = ct.Conversations(store, clock=self.clock, ids=_Ids(n))
            self.tid = self.convs.ingest(msg(f"x{n}", customer=f"cust{n}")).thread_id
            self.held: dict[str, int] = {}
            self.last_token = 0
            self.handoffs: list[str] = []

        # ------------------------------------------------------------ helpers

        def version(self) -> int:
            return self.convs.thread_state(self.tid).version

        def attempt(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
            before = self.version()
            try:
                return fn(*args, **kwargs)
            except (InvalidTransition, StaleControllerError, ValidationError, NotFound):
                assert self.version() == before, "a refused operation stored something"
                return None

        # ------------------------------------------------------------ rules

        @rule(to=st.sampled_from(PARTIES), by=st.sampled_from([None, *PARTIES]))
        def request(self, to: str, by: str | None) -> None:
            token = self.held.get(by) if by else None
            result = self.attempt(
                self.convs.request_handoff, self.tid, to=to, by=by, fencing_token=token
            )
            if result is not None and not result.repeat:
                self.handoffs.append(result.id)

        @rule(to=st.sampled_from(PARTIES), seconds=st.integers(1, 120), data=st.data())
        def offer(self, to: str, seconds: int, data: st.DataObject) -> None:
            if not self.handoffs:
                return
            hid = data.draw(st.sampled_from(self.handoffs))
            self.attempt(self.convs.offer_handoff, hid, to=to, ttl=timedelta(seconds=seconds))

        @rule(by=st.sampled_from(PARTIES), data=st.data())
        def accept(self, by: str, data: st.DataObject) -> None:
            if not self.handoffs:
                return
            hid = data.draw(st.sampled_from(self.handoffs))
            result = self.attempt(self.convs.accept_handoff, hid, by=by)
            if result is not None:
                self.held[by] = result.fencing_token

        @rule(by=st.sampled_from(PARTIES), data=st.data())
        def decline(self, by: str, data: st.DataObject) -> None:
            if not self.handoffs:
                return
            hid = data.draw(st.sampled_from(self.handoffs))
            self.attempt(self.convs.decline_handoff, hid, by=by)

        def expect_stale(self, token: int, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
            """A token that is not the current one is refused as stale, whoever shows it."""
            current = self.convs.thread_state(self.tid).fencing_token
            if token == current:
                return self.attempt(fn, *args, **kwargs)
            before = self.version()
            with pytest.raises(StaleControllerError):
                fn(*args, **kwargs)
            assert self.version() == before
            return None

        @rule(by=st.sampled_from(PARTIES))
        def release(self, by: str) -> None:
            token = self.held.get(by, 0)
            self.expect_stale(
                token, self.convs.release_control, self.tid, by=by, fencing_token=token
            )

        @rule(by=st.sampled_from([None, *PARTIES]), to=st.sampled_from(PARTIES))
        def transfer(self, by: str | None, to: str) -> None:
            token = self.held.get(by, 0) if by else self.convs.thread_state(self.tid).fencing_token
            if by is None and self.convs.thread_state(self.tid).controller is not None:
                token = 0  # the system without a token: must be refused unless 0 is current
            result = self.expect_stale(
                token, self.convs.transfer_control, self.tid, to=to, by=by, fencing_token=token
            )
            if result is not None:
                self.held[to] = result.fencing_token

        @rule(by=st.sampled_from(PARTIES), with_token=st.booleans())
        def write(self, by: str, with_token: bool) -> None:
            state = self.convs.thread_state(self.tid)
            token = self.held.get(by, 0) if with_token else None
            before = state.version
            try:
                self.convs.send(self.tid, f"from {by}", sender=by, fencing_token=token)
            except StaleControllerError:
                assert self.version() == before
                assert token != state.fencing_token or token is None
                return
            # it landed: the writer holds control (or nobody controls and no token is shown)
            if token is not None:
                assert token == state.fencing_token
            if state.controller is not None and token is None:
                assert str(state.controller) == by

        @rule(seconds=st.integers(1, 200))
        def tick_and_sweep(self, seconds: int) -> None:
            self.clock.advance(seconds=seconds)
            for result in self.convs.expire_handoffs():
                assert result.record.offered_to is None

        # ------------------------------------------------------------ invariants

        @invariant()
        def one_controller_and_growing_token(self) -> None:
            state = self.convs.thread_state(self.tid)
            assert state.fencing_token >= self.last_token
            self.last_token = state.fencing_token
            current_holders = [p for p, t in self.held.items() if t == state.fencing_token]
            assert len(current_holders) <= 1
            if current_holders:
                assert state.controller == ct.Party.parse(current_holders[0])

        @invariant()
        def history_is_fenced(self) -> None:
            token, controller = 0, None
            for stored in self.convs.events(self.tid):
                ev = stored.event
                if isinstance(ev, ct.HandoffAccepted | ct.ControlTransferred):
                    assert ev.fencing_token == token + 1
                    token = ev.fencing_token
                    controller = ev.by if isinstance(ev, ct.HandoffAccepted) else ev.to
                elif isinstance(ev, ct.ControlReleased):
                    assert ev.fencing_token == token + 1
                    token, controller = ev.fencing_token, None
                elif isinstance(ev, ct.MessageSent):
                    assert ev.fencing_token == token
                    if controller is not None and ev.sender.kind.value in ("bot", "queue", "agent"):
                        assert ev.sender == controller, f"stale write landed: {ev}"
            state = self.convs.thread_state(self.tid)
            assert (token, controller) == (state.fencing_token, state.controller)

    return ControlMachine


@pytest.mark.parametrize("examples", [40])
def test_control_state_machine(store_factory, examples: int) -> None:
    store = store_factory()
    is_sqlite = type(store).__name__ == "SQLiteStore"
    machine = make_machine(store)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples // 2 if is_sqlite else examples,
            stateful_step_count=25,
            deadline=None,
        ),
    )
