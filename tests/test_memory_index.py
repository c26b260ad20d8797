"""The memory store's indexes: its sorted key index (used by ``scan``) against a plain sorted
set, and its head indexes against a sort of every head."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from convthread.ports import ABSENT, Batch, HeadQuery, HeadWrite, ThreadHead
from convthread.stores import MemoryStore
from convthread.stores.memory import _SortedKeys

KEYS = st.text(alphabet="ab|é", max_size=4)


class _Small(_SortedKeys):
    """Rebuilds after a handful of writes, so runs exercise every state."""

    __slots__ = ()
    REBUILD_AT = 3


class SortedKeysMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.index = _Small()
        self.model: set[str] = set()

    @rule(key=KEYS)
    def add_or_remove(self, key: str) -> None:
        if key in self.model:
            self.index.remove(key)
            self.model.discard(key)
        else:
            self.index.add(key)
            self.model.add(key)

    @rule(prefix=st.text(alphabet="ab|é", max_size=2), after=KEYS, limit=st.integers(0, 6))
    def page(self, prefix: str, after: str, limit: int) -> None:
        ordered = sorted(k for k in self.model if k.startswith(prefix) and (not after or k > after))
        assert self.index.page(prefix, after, limit) == ordered[:limit]

    @invariant()
    def holds_each_key_once(self) -> None:
        everything = self.index.page("", "", 10_000)
        assert everything == sorted(self.model)


TestSortedKeys = SortedKeysMachine.TestCase
TestSortedKeys.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


@given(st.lists(KEYS, unique=True, max_size=50))
def test_a_rebuild_keeps_every_key(keys: list[str]) -> None:
    index = _Small()
    for k in keys:
        index.add(k)
    for k in keys[::2]:
        index.remove(k)
    assert index.page("", "", 1000) == sorted(keys[1::2])


_T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
_WRITES = st.lists(
    st.tuples(
        st.integers(0, 4),  # thread
        st.integers(0, 50),  # minutes after _T0
        st.sampled_from(["open", "pending", "resolved"]),
        st.sampled_from(["sms", "email"]),
        st.booleans(),  # query after this write
    ),
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(_WRITES)
def test_heads_written_often_between_queries_are_found_once_where_they_last_moved(
    writes: list[tuple[int, int, str, str, bool]],
) -> None:
    store = MemoryStore()
    latest: dict[str, ThreadHead] = {}
    for n, minutes, status, channel, query_now in writes:
        tid = f"th_{n}"
        old = latest.get(tid)
        head = ThreadHead(
            thread_id=tid,
            tenant="t",
            customer_id="cu",
            status=status,
            last_seq=1 if old is None else old.last_seq + 1,
            last_activity=_T0 + timedelta(minutes=minutes),
            last_channel=channel,
            topic=None,
            channels=(channel,)
            if old is None or channel in old.channels
            else (*old.channels, channel),
            snoozed_until=None,
            controller=None,
            created_at=_T0,
            state=b"",
        )
        store.commit(Batch(heads=(HeadWrite(head, ABSENT if old is None else old.version),)))
        latest[tid] = store.get_heads("t", [tid])[tid]
        if query_now:
            for query in (
                HeadQuery(tenant="t"),
                HeadQuery(tenant="t", statuses=("open",), newest_first=True),
                HeadQuery(tenant="t", channel="email"),
            ):
                expected = sorted(
                    (h for h in latest.values() if query.matches(h)),
                    key=lambda h: (h.last_activity, h.thread_id),
                    reverse=query.newest_first,
                )
                assert store.find_heads(query) == expected
