"""A Hypothesis state machine over ingest, sends, statuses, edits, lifecycle moves and
sweeps, checked against a simple model, on memory and on SQLite."""

from __future__ import annotations

import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

import convthread as ct
from convthread.domain.thread import LIFECYCLE, LifecyclePolicy
from convthread.domain.updates import DeletionReport, EditReport, StatusReport
from convthread.errors import IdempotencyError, InvalidTransition
from convthread.stores import MemoryStore, SQLiteStore
from tests._thread_util import T0, check_store_invariants, msg

S = ct.ThreadStatus
LIVE = {S.OPEN, S.PENDING, S.SNOOZED}
AUTO_RESOLVE = timedelta(hours=2)
WINDOW = timedelta(hours=24)


class ThreadMachine(RuleBasedStateMachine):
    use_sqlite = False

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="ct-stateful-"))
        store = SQLiteStore(self.tmp / "s.db") if self.use_sqlite else MemoryStore()
        self.clock = ct.ManualClock(T0)
        self.convs = ct.Conversations(
            store,
            clock=self.clock,
            ids=ct.SequentialIds(),
            lifecycle=LifecyclePolicy(auto_resolve_after=AUTO_RESOLVE),
        )
        # model
        self.delivered: dict[str, tuple[str, str, int]] = {}  # pid -> (text, thread, seq)
        self.status: dict[str, S] = {}  # thread -> status
        self.last_active: dict[str, object] = {}  # thread -> time of last message/status
        self.last_message: dict[str, object] = {}  # thread -> time of last message
        self.until: dict[str, object] = {}  # snoozed thread -> wake-up time
        self.owner: dict[str, int] = {}  # thread -> customer number
        self.live: dict[int, str] = {}  # customer -> live thread
        self.outbound: dict[str, tuple[str, int] | None] = {}  # out pid -> (thread, seq)
        self.reports: dict[str, int] = {}  # out pid -> best status rank reported
        self.content: dict[tuple[str, int], str] = {}  # inbound message -> text now
        self.payloads: dict[str, ct.Inbound] = {}
        self.n = 0

    def teardown(self) -> None:
        self.convs.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers

    def _set(self, tid: str, status: S) -> None:
        self.status[tid] = status
        self.last_active[tid] = self.clock.now()
        cust = self.owner[tid]
        if status in LIVE:
            self.live[cust] = tid
        elif self.live.get(cust) == tid:
            del self.live[cust]
        if status is not S.SNOOZED:
            self.until.pop(tid, None)

    # -- rules

    @rule(
        customer=st.integers(1, 2),
        pid=st.sampled_from([f"p{i}" for i in range(12)]),
        text=st.sampled_from(["a", "b"]),
        channel=st.sampled_from(["sms", "whatsapp"]),
    )
    def ingest(self, customer: int, pid: str, text: str, channel: str) -> None:
        key = f"{channel}-{customer}-{pid}"
        now = self.clock.now()
        inbound = msg(key, customer=customer, channel=channel, text=text, at=now)
        if key in self.delivered:
            first_text, tid, seq = self.delivered[key]
            if first_text != text:
                try:
                    self.convs.ingest(inbound)
                except IdempotencyError:
                    return
                raise AssertionError("key reuse with another payload must fail")
            # A redelivery of the very same payload returns the original outcome.
            again = self.convs.ingest(self.payloads[key])
            assert again.duplicate and (again.thread_id, again.seq) == (tid, seq)
            return
        before = self.live.get(customer)
        gap_ok = before is not None and (
            self.status[before] is not S.OPEN or now - self.last_message[before] <= WINDOW
        )
        r = self.convs.ingest(inbound)
        assert r.customer_id == self.convs.thread_state(r.thread_id).customer_id
        if gap_ok:
            assert r.thread_id == before, r.decision
        self.owner.setdefault(r.thread_id, customer)
        assert self.owner[r.thread_id] == customer
        if before is not None and before != r.thread_id:
            self._set(before, S.RESOLVED)  # superseded
        self._set(r.thread_id, S.OPEN)
        self.last_message[r.thread_id] = now
        self.delivered[key] = (text, r.thread_id, r.seq)
        self.payloads[key] = inbound
        self.content[(r.thread_id, r.seq)] = text
        # a redelivery returns the original outcome
        again = self.convs.ingest(inbound)
        assert again.duplicate and (again.thread_id, again.seq) == (r.thread_id, r.seq)

    @rule(customer=st.integers(1, 2), pid=st.sampled_from([f"o{i}" for i in range(6)]))
    def send(self, customer: int, pid: str) -> None:
        tid = self.live.get(customer)
        if tid is None or (pid in self.outbound and self.outbound[pid] is not None):
            return
        r = self.convs.send(
            tid, "reply", sender="agent:ann", provider_message_id=pid, channel="whatsapp"
        )
        self.outbound[pid] = (tid, r.seq)
        self.last_message[tid] = self.clock.now()
        self.last_active[tid] = self.clock.now()

    @rule(
        pid=st.sampled_from([f"o{i}" for i in range(6)]),
        status=st.sampled_from(list(ct.DeliveryStatus)),
    )
    def report_status(self, pid: str, status: ct.DeliveryStatus) -> None:
        r = self.convs.apply(
            StatusReport(
                channel="whatsapp", provider_message_id=pid, status=status, at=self.clock.now()
            )
        )
        best = self.reports.get(pid, 0)
        if pid not in self.outbound or self.outbound[pid] is None:
            self.outbound.setdefault(pid, None)
            assert r.outcome in ("held", "ignored")
        else:
            assert r.outcome == ("recorded" if status.rank > best else "ignored"), r
        self.reports[pid] = max(best, status.rank)

    @rule(data=st.data(), text=st.sampled_from(["x", "y"]), delete=st.booleans())
    def edit_or_delete(self, data: st.DataObject, text: str, delete: bool) -> None:
        if not self.delivered:
            return
        key = data.draw(st.sampled_from(sorted(self.delivered)))
        _t, tid, seq = self.delivered[key]
        channel = key.split("-", 1)[0]
        if delete:
            report: object = DeletionReport(
                channel=channel, provider_message_id=key, at=self.clock.now()
            )
        else:
            report = EditReport(
                channel=channel,
                provider_message_id=key,
                content=ct.Content(text=text),
                at=self.clock.now(),
            )
        r = self.convs.apply(report)  # type: ignore[arg-type]
        current = self.content[(tid, seq)]
        if current is None or (not delete and current == text and r.outcome == "ignored"):
            assert r.outcome == "ignored"
            return
        assert r.outcome == "recorded", r
        self.content[(tid, seq)] = None if delete else text  # type: ignore[assignment]

    @rule(data=st.data(), to=st.sampled_from(list(S)), minutes=st.integers(1, 300))
    def lifecycle(self, data: st.DataObject, to: S, minutes: int) -> None:
        if not self.status:
            return
        tid = data.draw(st.sampled_from(sorted(self.status)))
        current = self.status[tid]
        until = self.clock.now() + timedelta(minutes=minutes) if to is S.SNOOZED else None
        allowed = to in LIFECYCLE[current]
        cust = self.owner[tid]
        if allowed and to in LIVE and current not in LIVE and cust in self.live:
            allowed = False  # another live thread holds the customer's topic
        try:
            self.convs.set_status(tid, to, until=until)
        except InvalidTransition:
            assert not allowed, (current, to)
            return
        assert allowed, (current, to)
        self._set(tid, to)
        if to is S.SNOOZED:
            self.until[tid] = until

    @rule(minutes=st.integers(0, 200))
    def advance_and_sweep(self, minutes: int) -> None:
        self.clock.advance(minutes=minutes)
        now = self.clock.now()
        r = self.convs.sweep(now)
        woken = {t for t, u in self.until.items() if u <= now}  # type: ignore[operator]
        resolved = {
            t
            for t, s in self.status.items()
            if s in (S.OPEN, S.PENDING) and now - self.last_active[t] >= AUTO_RESOLVE  # type: ignore[operator]
        }
        assert set(r.woken) == woken
        assert set(r.resolved) == resolved
        for t in woken:
            self._set(t, S.OPEN)
        for t in resolved:
            self._set(t, S.RESOLVED)

    @precondition(lambda self: True)
    @rule(minutes=st.integers(1, 30))
    def tick(self, minutes: int) -> None:
        self.clock.advance(minutes=minutes)

    # -- invariants

    @invariant()
    def statuses_match_the_model(self) -> None:
        for tid, status in self.status.items():
            state = self.convs.thread_state(tid)
            assert state.status is status, (tid, state.status, status)
            # last_active per model: a message or a status change
            lm = self.last_message.get(tid)
            assert lm is None or state.last_activity == lm

    @invariant()
    def store_is_consistent(self) -> None:
        check_store_invariants(self.convs.store)

    @invariant()
    def timeline_matches(self) -> None:
        threads = set(self.status)
        for tid in threads:
            for e in self.convs.timeline(tid):
                if e.direction == "inbound":
                    want = self.content[(tid, e.seq)]
                    assert e.deleted == (want is None)
                    assert e.content.text == ("" if want is None else want)
                elif e.provider_message_id is not None:
                    rank = self.reports.get(e.provider_message_id, 0)
                    assert (e.status.rank if e.status else 0) == rank


ThreadMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
TestThreadsMemory = ThreadMachine.TestCase


class SQLiteThreadMachine(ThreadMachine):
    use_sqlite = True


SQLiteThreadMachine.TestCase.settings = settings(
    max_examples=12, stateful_step_count=25, deadline=None
)
TestThreadsSQLite = SQLiteThreadMachine.TestCase
