"""The store conformance kit: prove a store behaves like the reference.

A store author subclasses :class:`StoreConformance` in a pytest test module and provides
a factory; every ``test_*`` method of the kit then runs against the store::

    from convthread.testing.store_conformance import StoreConformance

    class TestMyStore(StoreConformance):
        persistent = True  # optional capabilities, see below

        def make_store(self):
            return MyStore(self.tmp_path / "db")   # a new, empty store every call

        def reopen_store(self, store):
            store.close()
            return MyStore(self.tmp_path / "db")   # the same data, a new object

Required cases run for every store. Optional ones run only where the class declares
the capability, and are skipped with the reason otherwise:

* ``persistent``: :meth:`StoreConformance.reopen_store` gives back the same data.
* ``multi_process``: several processes may share the store;
  :meth:`StoreConformance.store_opener` returns a picklable callable that opens it.
* ``scrubs_files``: :meth:`StoreConformance.store_files` names the files that hold
  the data; after ``scrub()`` rewritten and deleted bytes appear in none of them.
* ``positions``: the store reports :attr:`~convthread.ports.Recorded.position` (the
  store's commit order, semantics 6 of :mod:`convthread.ports`): positive, unique,
  growing with each commit and with seq, kept by rewrites and reopening. The store
  state machine checks them wherever a store reports them, declared or not.
* the change feed, detected: where the store is a :class:`~convthread.ports.FeedReader`
  (``read_positions``, ``last_position``), :class:`FeedConformance` checks that it reads
  every event by position, in order, paged by ``after`` and ``limit``, per tenant, with
  rewritten bytes at the same position; that a reader paging while writers commit in
  threads sees every position once and never one below a position it has seen; and,
  where it is a :class:`~convthread.ports.FeedWatcher`, that a watch is woken by a
  commit and ends its wait when closed from another thread. The store state machine
  compares the feed with the stored events after every step.
* ``multi_get``: the store offers ``get_multi`` (:class:`~convthread.ports.MultiGet`),
  whose results must equal per-namespace ``get_many`` (missing keys, duplicates, empty
  input, odd keys, after deletes, on a closed store). The store state machine then
  compares ``get_multi`` with the reference after every step too.
  :class:`MultiGetConformance` holds just these cases, for a store whose other cases
  run elsewhere (an asyncio store behind a blocking adapter, say).

Thread heads (``get_heads``, ``find_heads``, head writes in a batch) are required: a
store written to the protocol of releases up to 0.1, without them
(:class:`~convthread.ports.KVStore`), runs the head cases through the adapter the
service would put it behind (``convthread.stores._kv``), so its generic index is tested
for what the adapter needs of it.

Two Hypothesis state machines run the same operations against the store and against
:class:`~convthread.stores.MemoryStore` and compare them after every step:
:func:`store_machine` at the protocol level (append, put, delete, compare-and-set,
conflicts, rewrite, head writes and queries, scrub, reopen) and :func:`service_machine` through
:class:`~convthread.Conversations` (ingest, redeliver, send, erase, reopen). Both are
classes with ``@rule`` methods: subclass them to add rules. The kit runs them from
``test_state_machine`` and ``test_service_machine``; tune ``machine_settings``.

The kit imports pytest and hypothesis: use it from tests only.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import random
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from convthread.errors import ConflictError, ConvthreadError, StoreError
from convthread.ports import (
    ABSENT,
    ANY,
    DEFAULT_TENANT,
    Append,
    Batch,
    Delete,
    FeedReader,
    FeedWatcher,
    HeadQuery,
    HeadWrite,
    Item,
    KVStore,
    MultiGet,
    Put,
    Recorded,
    Rewrite,
    Store,
    ThreadHead,
)
from convthread.stores._kv import with_heads
from convthread.stores.memory import MemoryStore

__all__ = [
    "KEYS",
    "NAMESPACES",
    "STREAMS",
    "THREADS",
    "FeedConformance",
    "HeadConformance",
    "MultiGetConformance",
    "ServiceMachine",
    "StoreConformance",
    "StoreMachine",
    "service_machine",
    "store_machine",
    "unpositioned",
]

#: The stream names, namespaces and keys the kit uses. Keys mix ASCII, the ``|``
#: separator the service uses, accents, CJK and an astral character, so scan order
#: (code-point order) and prefix bounds are exercised.
STREAMS = ("th_a", "th_b", "cu_1")
NAMESPACES = ("msg", "ident")
KEYS = ("a", "a|", "a|b", "ab", "b", "é", "éa", "中", "中|x", "\U0001f600", "z~", "")
#: Thread ids of the head cases (code-point order differs from byte order of UTF-16).
THREADS = ("th_a", "th_b", "th_c", "th_é", "th_中")
_H0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def heads_of(store: Store | KVStore) -> Store:
    """``store`` itself, or the adapter the service runs a store without heads behind."""
    return store if isinstance(store, Store) else with_heads(store)


def make_head(
    thread_id: str,
    *,
    tenant: str = DEFAULT_TENANT,
    customer: str = "cu_1",
    status: str = "open",
    minutes: float = 0,
    channels: tuple[str, ...] = ("sms",),
    snoozed_minutes: float | None = None,
    controller: str | None = None,
    last_seq: int = 1,
    topic: str | None = None,
    state: bytes = b"\x00state\xff",
) -> ThreadHead:
    """A head for the cases: times are minutes after a fixed instant (fractions keep
    microseconds)."""
    return ThreadHead(
        thread_id=thread_id,
        tenant=tenant,
        customer_id=customer,
        status=status,
        last_seq=last_seq,
        last_activity=_H0 + timedelta(minutes=minutes),
        last_channel=channels[-1],
        topic=topic,
        channels=channels,
        snoozed_until=None if snoozed_minutes is None else _H0 + timedelta(minutes=snoozed_minutes),
        controller=controller,
        created_at=_H0,
        state=state,
    )


def unpositioned(records: list[Recorded]) -> list[Recorded]:
    """``records`` with position 0, to compare what stores share (stream, seq, data):
    positions differ between stores (gaps are allowed) and are checked on their own."""
    return [msgspec.structs.replace(r, position=0) for r in records]


# --------------------------------------------------------------------------- test cases


class _StoreKit:
    """What every case of the kit shares: the capabilities, the store factory a
    subclass provides, the fixtures and :meth:`run_without_pytest`."""

    #: Capabilities (optional cases run only when declared).
    persistent: ClassVar[bool] = False
    multi_process: ClassVar[bool] = False
    scrubs_files: ClassVar[bool] = False
    multi_get: ClassVar[bool] = False
    positions: ClassVar[bool] = False
    #: Settings for the state machines (examples are whole runs, each on a new store).
    machine_settings: ClassVar[settings] = settings(
        max_examples=30,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )

    tmp_path: Path

    # -- what a subclass provides

    def make_store(self) -> KVStore:
        """A new, empty store (each call a fresh one)."""
        raise NotImplementedError("subclasses of StoreConformance implement make_store()")

    def reopen_store(self, store: KVStore) -> Store:
        """Close ``store`` and open the same data again (``persistent`` stores)."""
        raise NotImplementedError("declare persistent = True and implement reopen_store()")

    def store_opener(self, store: KVStore) -> Callable[[], KVStore]:
        """A picklable callable that opens ``store``'s data in another process."""
        raise NotImplementedError("declare multi_process = True and implement store_opener()")

    def store_files(self, store: KVStore) -> list[Path]:
        """The files that hold ``store``'s data (``scrubs_files`` stores)."""
        raise NotImplementedError("declare scrubs_files = True and implement store_files()")

    def discard_store(self, store: KVStore) -> None:
        """Release a store the kit made (close it; drop its data if it must)."""
        store.close()

    # -- fixtures

    @pytest.fixture(autouse=True)
    def _kit_setup(self, tmp_path: Path) -> Iterator[None]:
        self.tmp_path = tmp_path
        self._opened: list[KVStore] = []
        yield
        for store in reversed(self._opened):
            with contextlib.suppress(ConvthreadError):
                self.discard_store(store)

    def new_store(self) -> KVStore:
        store = self.make_store()
        self._opened.append(store)
        return store

    def reopen(self, store: KVStore) -> Store:
        if not self.persistent:
            pytest.skip("capability not declared: persistent (reopen_store)")
        again = self.reopen_store(store)
        if store in self._opened:
            self._opened.remove(store)
        self._opened.append(again)
        return again

    @pytest.fixture
    def store(self) -> KVStore:
        return self.new_store()

    def run_without_pytest(
        self, *, machines: bool = True, tmp_path: Path | None = None
    ) -> dict[str, str]:
        """Run every case outside pytest (a REPL, a notebook, a docs example).

        Returns ``{case name: "passed" | "skipped: reason"}``. The first failing case
        raises an :class:`AssertionError` whose message names the case (``Class.test_x``)
        and says what failed; the original error is its ``__cause__``. ``machines=False``
        leaves out the two state machines.
        """
        import inspect
        import tempfile

        results: dict[str, str] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for name in sorted(n for n in dir(self) if n.startswith("test_")):
                if not machines and name in ("test_state_machine", "test_service_machine"):
                    continue
                self.tmp_path = tmp_path or Path(tmp) / name
                self.tmp_path.mkdir(parents=True, exist_ok=True)
                self._opened = []
                method = getattr(self, name)
                try:
                    if "store" in inspect.signature(method).parameters:
                        method(self.new_store())
                    else:
                        method()
                    results[name] = "passed"
                except pytest.skip.Exception as exc:
                    results[name] = f"skipped: {exc.msg}"
                except Exception as exc:
                    what = str(exc) or type(exc).__name__
                    if not isinstance(exc, AssertionError):
                        what = f"{type(exc).__name__}: {what}"
                    raise AssertionError(
                        f"store conformance case {type(self).__name__}.{name} failed: {what}"
                    ) from exc
                finally:
                    for store in reversed(self._opened):
                        with contextlib.suppress(ConvthreadError):
                            self.discard_store(store)
        return results


class MultiGetConformance(_StoreKit):
    """The cases of the optional ``multi_get`` capability (``get_multi``). They run as
    part of :class:`StoreConformance`; subclass this class alone to run only them."""

    #: Keys with characters a query builder may mishandle, on top of :data:`KEYS`.
    ODD_KEYS: ClassVar[tuple[str, ...]] = (
        "a b",
        "a|b|c",
        "<id.x@example.com>",
        "a\tb",
        "'; --",
        "?",
        "$1",
        "%s",
        "(?,?)",
        "\\",
        "é\u0301",
    )

    def multi(self, store: KVStore) -> MultiGet:
        """``store`` as a :class:`~convthread.ports.MultiGet`; skips when not declared."""
        if not self.multi_get:
            pytest.skip("capability not declared: multi_get (get_multi)")
        assert isinstance(store, MultiGet), f"{store!r} declares multi_get but has no get_multi"
        return store

    @staticmethod
    def expected_multi(store: KVStore, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], Item]:
        """What ``get_multi(pairs)`` must give: per-namespace ``get_many``."""
        by_ns: dict[str, list[str]] = {}
        for ns, key in pairs:
            by_ns.setdefault(ns, []).append(key)
        out: dict[tuple[str, str], Item] = {}
        for ns, keys in by_ns.items():
            for key, item in store.get_many(ns, keys).items():
                out[(ns, key)] = item
        return out

    def test_multi_get_is_offered(self, store: KVStore) -> None:
        self.multi(store)

    def test_multi_get_of_nothing_is_empty(self, store: KVStore) -> None:
        multi = self.multi(store)
        assert multi.get_multi([]) == {}
        assert multi.get_multi([("ns", "k")]) == {}
        store.commit(Batch(puts=(Put("ns", "k", b"v"),)))
        assert multi.get_multi([]) == {}

    def test_multi_get_matches_get_many(self, store: KVStore) -> None:
        multi = self.multi(store)
        rng = random.Random(20260301)
        namespaces = (*NAMESPACES, "third")
        keys = (*KEYS, *self.ODD_KEYS)
        universe = [(ns, key) for ns in namespaces for key in keys]
        for round_ in range(6):
            puts = rng.sample(universe, rng.randint(1, len(universe) // 2))
            deletes = rng.sample(universe, rng.randint(0, len(universe) // 4))
            store.commit(
                Batch(puts=tuple(Put(ns, k, b"%d:%s" % (round_, k.encode())) for ns, k in puts))
            )
            store.commit(Batch(deletes=tuple(Delete(ns, k) for ns, k in deletes)))
            for _ in range(5):
                pairs = [rng.choice(universe) for _ in range(rng.randint(1, 40))]
                pairs += rng.sample(pairs, min(len(pairs), 3))  # duplicates
                pairs.append(("nowhere", rng.choice(keys)))  # a namespace with no entries
                rng.shuffle(pairs)
                got = multi.get_multi(pairs)
                assert got == self.expected_multi(store, pairs)
                assert set(got) <= set(pairs)
        everything = multi.get_multi(universe)
        assert everything == self.expected_multi(store, universe)
        for ns in namespaces:  # every entry, with its value and version
            assert {k: it for (n, k), it in everything.items() if n == ns} == dict(store.scan(ns))

    def test_multi_get_after_deletes_and_versions(self, store: KVStore) -> None:
        multi = self.multi(store)
        store.commit(Batch(puts=(Put("a", "k", b"1"), Put("b", "k", b"1"), Put("a", "j", b"1"))))
        store.commit(Batch(puts=(Put("a", "k", b"2", 1),), deletes=(Delete("b", "k", 1),)))
        pairs = [("a", "k"), ("b", "k"), ("a", "j"), ("b", "j")]
        assert multi.get_multi(pairs) == {("a", "k"): Item(b"2", 2), ("a", "j"): Item(b"1", 1)}
        store.commit(Batch(puts=(Put("b", "k", b"again", ABSENT),), deletes=(Delete("a", "k"),)))
        assert multi.get_multi(pairs) == {
            ("b", "k"): Item(b"again", 1),  # versions restart after a delete
            ("a", "j"): Item(b"1", 1),
        }

    def test_multi_get_many_pairs(self, store: KVStore) -> None:
        multi = self.multi(store)
        keys = [f"k{i:04d}" for i in range(1200)]
        store.commit(Batch(puts=tuple(Put("big", k, k.encode()) for k in keys[::2])))
        store.commit(Batch(puts=tuple(Put("other", k, b"") for k in keys[1::3])))
        pairs = [(ns, k) for k in keys for ns in ("big", "other")]
        got = multi.get_multi(pairs)
        assert got == self.expected_multi(store, pairs)
        assert len(got) == 600 + 400

    def test_multi_get_on_a_closed_store_raises(self) -> None:
        store = self.new_store()
        multi = self.multi(store)
        store.commit(Batch(puts=(Put("ns", "k", b"v"),)))
        store.close()
        with pytest.raises(StoreError):
            multi.get_multi([("ns", "k")])


class FeedConformance(_StoreKit):
    """The cases of the change feed's store tier, run where the store reads events by
    position (:class:`~convthread.ports.FeedReader`; detected, not declared). They run
    as part of :class:`StoreConformance`; subclass this class alone to run only them."""

    def feed(self, store: KVStore) -> FeedReader:
        if not isinstance(store, FeedReader):
            pytest.skip("not offered: the change feed (read_positions, last_position)")
        return store

    @staticmethod
    def read_all(feed: FeedReader, limit: int = 3) -> list[Recorded]:
        out: list[Recorded] = []
        while page := feed.read_positions(DEFAULT_TENANT, out[-1].position if out else 0, limit):
            out.extend(page)
        return out

    def test_feed_reads_every_event_by_position(self, store: KVStore) -> None:
        feed = self.feed(store)
        assert feed.read_positions(DEFAULT_TENANT, 0, 10) == []
        assert feed.last_position(DEFAULT_TENANT) == 0
        store.commit(Batch(appends=(Append("a", 0, (b"1", b"2")), Append("b", 0, (b"3",)))))
        with pytest.raises(ConflictError):
            store.commit(Batch(appends=(Append("a", 0, (b"no",)),)))
        store.commit(Batch(appends=(Append("a", 2, (b"4",)),)))
        every = self.read_all(feed, limit=1)
        assert [(r.stream, r.seq, r.data) for r in every if r.stream == "a"] == [
            ("a", 1, b"1"),
            ("a", 2, b"2"),
            ("a", 3, b"4"),
        ]
        assert sorted(r.data for r in every) == [b"1", b"2", b"3", b"4"]
        positions = [r.position for r in every]
        assert positions == sorted(set(positions)) and positions[0] > 0
        assert feed.last_position(DEFAULT_TENANT) == positions[-1]
        assert every[-1].data == b"4"  # the later commit's event comes last
        by_stream = {(r.stream, r.seq): r.position for s in ("a", "b") for r in store.read(s)}
        assert {(r.stream, r.seq): r.position for r in every} == by_stream
        # Paging: after a position, at most limit.
        assert feed.read_positions(DEFAULT_TENANT, positions[0], 2) == every[1:3]
        assert feed.read_positions(DEFAULT_TENANT, positions[-1], 5) == []
        assert feed.read_positions(DEFAULT_TENANT, 0, 0) == []

    def test_feed_is_per_tenant(self, store: KVStore) -> None:
        feed = self.feed(store)
        store.commit(Batch(appends=(Append("s", 0, (b"x",)),)))
        assert feed.read_positions("another tenant", 0, 10) == []
        assert feed.last_position("another tenant") == 0

    def test_feed_reads_rewritten_bytes_at_the_same_position(self, store: KVStore) -> None:
        feed = self.feed(store)
        store.commit(Batch(appends=(Append("s", 0, (b"keep", b"secret")),)))
        before = self.read_all(feed)
        store.commit(Batch(rewrites=(Rewrite("s", 2, b"gone"),)))
        after = self.read_all(feed)
        assert [r.position for r in after] == [r.position for r in before]
        assert [r.data for r in after] == [b"keep", b"gone"]

    def test_feed_reader_never_sees_a_position_after_a_higher_one(self, store: KVStore) -> None:
        """Writers in threads commit while a reader pages on from the last position it
        saw: it sees every event once, in position order, none skipped."""
        feed = self.feed(store)
        writers, commits = 4, 25
        done = threading.Event()
        seen: list[int] = []
        errors: list[BaseException] = []

        def write(n: int) -> None:
            for i in range(commits):
                store.commit(Batch(appends=(Append(f"w{n}", 2 * i, (b"e", b"f")),)))

        def read() -> None:
            try:
                while True:
                    last = done.is_set()
                    while page := feed.read_positions(DEFAULT_TENANT, seen[-1] if seen else 0, 7):
                        seen.extend(r.position for r in page)
                    if last:
                        return
            except BaseException as exc:  # the test must fail, not lose the reader
                errors.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        outcomes = _race(writers, write)
        done.set()
        reader.join(timeout=120)
        assert outcomes == [None] * writers and not errors
        full = [r.position for r in self.read_all(feed, limit=1000)]
        assert len(full) == writers * commits * 2
        assert seen == full

    def test_feed_watch_wakes_on_a_commit_and_closes_from_another_thread(
        self, store: KVStore
    ) -> None:
        self.feed(store)
        if not isinstance(store, FeedWatcher):
            pytest.skip("not offered: feed watches (watch)")
        watch = store.watch()
        try:
            store.commit(Batch(appends=(Append("s", 0, (b"x",)),)))
            assert watch.wait(10.0)
        finally:
            watch.close()
        watch = store.watch()
        woke: list[bool] = []
        waiter = threading.Thread(target=lambda: woke.append(watch.wait(60.0)))
        waiter.start()
        threading.Event().wait(0.05)
        watch.close()
        waiter.join(timeout=10)
        assert not waiter.is_alive() and woke == [False]


class HeadConformance(_StoreKit):
    """The cases of thread heads: head writes with compare-and-set, reads and queries.
    Part of :class:`StoreConformance`."""

    @staticmethod
    def insert(store: Store, *heads: ThreadHead) -> None:
        store.commit(Batch(heads=tuple(HeadWrite(h, ABSENT) for h in heads)))

    def test_heads_insert_then_read(self, store: KVStore) -> None:
        h = heads_of(store)
        head = make_head("th_é", minutes=1.5, snoozed_minutes=90.25, controller="agent:ann")
        self.insert(h, head)
        got = h.get_heads(DEFAULT_TENANT, ["th_é", "th_missing"])
        assert got == {"th_é": msgspec_replace(head, version=1)}
        assert got["th_é"].last_activity.utcoffset() == timedelta(0)
        assert h.get_heads(DEFAULT_TENANT, []) == {}

    def test_heads_are_per_tenant(self, store: KVStore) -> None:
        h = heads_of(store)
        self.insert(h, make_head("th_a", tenant="t1", customer="cu_x"))
        self.insert(h, make_head("th_a", tenant="t2", customer="cu_y"))
        assert h.get_heads("t1", ["th_a"])["th_a"].customer_id == "cu_x"
        assert h.get_heads("t2", ["th_a"])["th_a"].customer_id == "cu_y"
        assert h.get_heads(DEFAULT_TENANT, ["th_a"]) == {}
        assert [x.customer_id for x in h.find_heads(HeadQuery(tenant="t2"))] == ["cu_y"]

    def test_head_insert_of_an_existing_head_conflicts_and_writes_nothing(
        self, store: Store
    ) -> None:
        h = heads_of(store)
        self.insert(h, make_head("th_a"))
        with pytest.raises(ConflictError):
            h.commit(
                Batch(
                    appends=(Append("s", 0, (b"x",)),),
                    puts=(Put("ns", "k", b"v", ABSENT),),
                    heads=(HeadWrite(make_head("th_a", status="closed"), ABSENT),),
                )
            )
        assert h.read("s") == [] and h.get("ns", "k") is None
        assert h.get_heads(DEFAULT_TENANT, ["th_a"])["th_a"].status == "open"

    def test_head_update_is_compare_and_set(self, store: KVStore) -> None:
        h = heads_of(store)
        self.insert(h, make_head("th_a"))
        moved = make_head("th_a", status="pending", minutes=5, last_seq=2)
        h.commit(Batch(heads=(HeadWrite(moved, 1),)))
        assert h.get_heads(DEFAULT_TENANT, ["th_a"])["th_a"] == msgspec_replace(moved, version=2)
        for expected in (1, 3):  # stale, ahead
            with pytest.raises(ConflictError):
                h.commit(
                    Batch(
                        appends=(Append("s", 0, (b"x",)),),
                        heads=(HeadWrite(make_head("th_a", status="closed"), expected),),
                    )
                )
        with pytest.raises(ConflictError):
            h.commit(Batch(heads=(HeadWrite(make_head("th_missing"), 1),)))
        assert h.read("s") == []
        assert h.get_heads(DEFAULT_TENANT, ["th_a"])["th_a"].status == "pending"
        assert h.get_heads(DEFAULT_TENANT, ["th_missing"]) == {}

    def test_head_writes_that_cannot_apply_are_refused(self, store: KVStore) -> None:
        h = heads_of(store)
        with pytest.raises(StoreError):
            h.commit(Batch(heads=(HeadWrite(make_head("th_a"), ANY),)))
        twice = (HeadWrite(make_head("th_a"), ABSENT), HeadWrite(make_head("th_a"), ABSENT))
        with pytest.raises(StoreError):
            h.commit(Batch(appends=(Append("s", 0, (b"x",)),), heads=twice))
        assert h.get_heads(DEFAULT_TENANT, ["th_a"]) == {} and h.read("s") == []

    def test_head_writes_commit_with_the_rest_of_the_batch(self, store: KVStore) -> None:
        h = heads_of(store)
        h.commit(
            Batch(
                appends=(Append("th_a", 0, (b"e1", b"e2")),),
                puts=(Put("msg", "sms|m1", b"ref", ABSENT),),
                heads=(HeadWrite(make_head("th_a", last_seq=2), ABSENT),),
            )
        )
        assert h.version("th_a") == 2 and h.get("msg", "sms|m1") is not None
        assert h.get_heads(DEFAULT_TENANT, ["th_a"])["th_a"].last_seq == 2

    def _query_world(self, h: Store) -> None:
        self.insert(
            h,
            make_head("th_a", customer="cu_1", status="open", minutes=30),
            make_head(
                "th_b", customer="cu_1", status="pending", minutes=10, channels=("sms", "whatsapp")
            ),
            make_head("th_c", customer="cu_2", status="open", minutes=10, controller="agent:ann"),
            make_head("th_é", customer="cu_2", status="snoozed", minutes=20, snoozed_minutes=60),
            make_head("th_中", customer="cu_3", status="closed", minutes=40, channels=("email",)),
        )

    def test_head_queries_filter_and_order_by_last_activity(self, store: KVStore) -> None:
        h = heads_of(store)
        self._query_world(h)

        def ids(**kw: Any) -> list[str]:
            return [x.thread_id for x in h.find_heads(HeadQuery(**kw))]

        # ties on last activity break by thread id
        assert ids() == ["th_b", "th_c", "th_é", "th_a", "th_中"]
        assert ids(newest_first=True) == ["th_中", "th_a", "th_é", "th_c", "th_b"]
        assert ids(statuses=("open",)) == ["th_c", "th_a"]
        assert ids(statuses=("open", "snoozed")) == ["th_c", "th_é", "th_a"]
        assert ids(customer_id="cu_2") == ["th_c", "th_é"]
        assert ids(customer_id="cu_2", statuses=("snoozed",)) == ["th_é"]
        assert ids(channel="whatsapp") == ["th_b"]
        assert ids(channel="sms", newest_first=True) == ["th_a", "th_é", "th_c", "th_b"]
        assert ids(controller="agent:ann") == ["th_c"]
        assert ids(snoozed_before=_H0 + timedelta(minutes=60)) == []
        assert ids(snoozed_before=_H0 + timedelta(minutes=60, microseconds=1)) == ["th_é"]
        window = {
            "active_from": _H0 + timedelta(minutes=10),
            "active_until": _H0 + timedelta(minutes=30),
        }
        assert ids(**window) == ["th_b", "th_c", "th_é", "th_a"]
        assert ids(**window, newest_first=True) == ["th_a", "th_é", "th_c", "th_b"]
        assert ids(limit=2) == ["th_b", "th_c"]
        assert ids(limit=0) == []
        assert ids(customer_id="cu_nobody") == [] and ids(statuses=("resolved",)) == []

    def test_head_queries_page_by_cursor(self, store: KVStore) -> None:
        h = heads_of(store)
        self._query_world(h)
        for newest_first in (False, True):
            for statuses in ((), ("open", "pending", "snoozed")):
                everything = h.find_heads(HeadQuery(newest_first=newest_first, statuses=statuses))
                seen: list[ThreadHead] = []
                query = HeadQuery(newest_first=newest_first, statuses=statuses, limit=2)
                while True:
                    page = h.find_heads(query)
                    seen.extend(page)
                    if len(page) < 2:
                        break
                    query = msgspec_replace(
                        query, after=(page[-1].last_activity, page[-1].thread_id)
                    )
                assert seen == everything

    def test_a_head_moved_between_customers(self, store: KVStore) -> None:
        h = heads_of(store)
        self._query_world(h)
        head = h.get_heads(DEFAULT_TENANT, ["th_a"])["th_a"]
        h.commit(Batch(heads=(HeadWrite(msgspec_replace(head, customer_id="cu_3"), 1),)))
        assert [x.thread_id for x in h.find_heads(HeadQuery(customer_id="cu_1"))] == ["th_b"]
        assert [x.thread_id for x in h.find_heads(HeadQuery(customer_id="cu_3"))] == [
            "th_a",
            "th_中",
        ]

    def test_concurrent_head_inserts_have_one_winner(self, store: KVStore) -> None:
        h = heads_of(store)
        outcomes = _race(
            4,
            lambda i: h.commit(
                Batch(heads=(HeadWrite(make_head("th_a", last_seq=i + 1), ABSENT),))
            ),
        )
        assert sum(o is None for o in outcomes) == 1
        assert all(o is None or isinstance(o, ConflictError) for o in outcomes)

    def test_concurrent_head_updates_lose_no_write(self, store: KVStore) -> None:
        h = heads_of(store)
        self.insert(h, make_head("th_a", last_seq=0))

        def bump(_i: int) -> None:
            for _ in range(5):
                while True:
                    head = h.get_heads(DEFAULT_TENANT, ["th_a"])["th_a"]
                    new = msgspec_replace(head, last_seq=head.last_seq + 1)
                    try:
                        h.commit(Batch(heads=(HeadWrite(new, head.version),)))
                        break
                    except ConflictError:
                        continue

        assert _race(4, bump) == [None] * 4
        head = h.get_heads(DEFAULT_TENANT, ["th_a"])["th_a"]
        assert head.last_seq == 20 and head.version == 21


class StoreConformance(HeadConformance, MultiGetConformance, FeedConformance):
    """Test cases every store must pass. Subclass and implement :meth:`make_store`."""

    # -- required: reads of an empty store

    def test_is_a_store(self, store: KVStore) -> None:
        assert isinstance(store, KVStore)
        assert isinstance(heads_of(store), Store)

    def test_empty_store(self, store: KVStore) -> None:
        assert store.read("nothing") == []
        assert store.version("nothing") == 0
        assert store.get("ns", "k") is None
        assert store.get_many("ns", ["a", "b"]) == {}
        assert store.get_many("ns", []) == {}
        assert store.scan("ns") == []

    def test_empty_batch_is_a_no_op(self, store: KVStore) -> None:
        store.commit(Batch())
        assert store.scan("ns") == []

    # -- required: streams

    def test_append_numbers_events_from_one(self, store: KVStore) -> None:
        store.commit(Batch(appends=(Append("s", 0, (b"e1", b"e2")),)))
        store.commit(Batch(appends=(Append("s", 2, (b"e3",)),)))
        assert unpositioned(store.read("s")) == [
            Recorded("s", 1, b"e1"),
            Recorded("s", 2, b"e2"),
            Recorded("s", 3, b"e3"),
        ]
        assert store.version("s") == 3
        assert store.version("other") == 0

    def test_read_after_and_limit(self, store: KVStore) -> None:
        store.commit(Batch(appends=(Append("s", 0, tuple(b"e%d" % i for i in range(1, 11))),)))
        assert [r.seq for r in store.read("s", after=7)] == [8, 9, 10]
        assert [r.seq for r in store.read("s", after=2, limit=3)] == [3, 4, 5]
        assert store.read("s", after=10) == []
        assert store.read("s", after=20) == []
        assert [r.seq for r in store.read("s", limit=1)] == [1]
        assert store.read("s", limit=0) == []

    def test_append_at_wrong_version_conflicts_and_writes_nothing(self, store: KVStore) -> None:
        store.commit(Batch(appends=(Append("s", 0, (b"e1",)),)))
        for expected in (0, 2, 5):
            with pytest.raises(ConflictError):
                store.commit(
                    Batch(
                        appends=(Append("s", expected, (b"bad",)), Append("t", 0, (b"t1",))),
                        puts=(Put("ns", "k", b"v", ANY),),
                    )
                )
        assert unpositioned(store.read("s")) == [Recorded("s", 1, b"e1")]
        assert store.version("t") == 0
        assert store.get("ns", "k") is None

    def test_empty_append_checks_the_version(self, store: KVStore) -> None:
        store.commit(Batch(appends=(Append("s", 0, (b"e1",)),)))
        store.commit(Batch(appends=(Append("s", 1, ()),), puts=(Put("ns", "k", b"v"),)))
        with pytest.raises(ConflictError):
            store.commit(Batch(appends=(Append("s", 0, ()),), puts=(Put("ns", "j", b"v"),)))
        assert store.get("ns", "j") is None
        assert store.version("s") == 1

    def test_two_appends_to_one_stream_in_a_batch_are_refused(self, store: KVStore) -> None:
        with pytest.raises(StoreError):
            store.commit(Batch(appends=(Append("s", 0, (b"a",)), Append("s", 0, (b"b",)))))
        assert store.version("s") == 0

    def test_event_bytes_round_trip(self, store: KVStore) -> None:
        blobs = (b"", b"\x00\xff\x00", bytes(range(256)), b"x" * 1_000_000)
        store.commit(Batch(appends=(Append("s", 0, blobs),)))
        assert tuple(r.data for r in store.read("s")) == blobs

    def test_streams_are_independent(self, store: KVStore) -> None:
        store.commit(Batch(appends=(Append("a", 0, (b"1",)), Append("b", 0, (b"1", b"2")))))
        assert store.version("a") == 1 and store.version("b") == 2
        assert store.read("ab") == []

    # -- required: index entries

    def test_put_versions_start_at_one_and_grow(self, store: KVStore) -> None:
        store.commit(Batch(puts=(Put("ns", "k", b"v1", ABSENT),)))
        assert store.get("ns", "k") == Item(b"v1", 1)
        store.commit(Batch(puts=(Put("ns", "k", b"v2", 1),)))
        store.commit(Batch(puts=(Put("ns", "k", b"v3", ANY),)))
        assert store.get("ns", "k") == Item(b"v3", 3)

    def test_put_expectations(self, store: KVStore) -> None:
        store.commit(Batch(puts=(Put("ns", "k", b"v1", ABSENT),)))
        with pytest.raises(ConflictError):
            store.commit(Batch(puts=(Put("ns", "k", b"x", ABSENT),)))
        with pytest.raises(ConflictError):
            store.commit(Batch(puts=(Put("ns", "k", b"x", 2),)))
        with pytest.raises(ConflictError):
            store.commit(Batch(puts=(Put("ns", "missing", b"x", 1),)))
        assert store.get("ns", "k") == Item(b"v1", 1)
        assert store.get("ns", "missing") is None

    def test_namespaces_are_independent(self, store: KVStore) -> None:
        store.commit(Batch(puts=(Put("a", "k", b"1"), Put("b", "k", b"2"))))
        assert store.get("a", "k") == Item(b"1", 1)
        assert store.get("b", "k") == Item(b"2", 1)
        assert store.scan("a") == [("k", Item(b"1", 1))]

    def test_delete(self, store: KVStore) -> None:
        store.commit(Batch(puts=(Put("ns", "k", b"v"), Put("ns", "j", b"v"))))
        with pytest.raises(ConflictError):
            store.commit(Batch(deletes=(Delete("ns", "k", 2),)))
        with pytest.raises(ConflictError):
            store.commit(Batch(deletes=(Delete("ns", "k", ABSENT),)))
        with pytest.raises(ConflictError):
            store.commit(Batch(deletes=(Delete("ns", "missing", 1),)))
        store.commit(Batch(deletes=(Delete("ns", "k", 1), Delete("ns", "missing", ANY))))
        store.commit(Batch(deletes=(Delete("ns", "j", ANY),)))
        assert store.get("ns", "k") is None and store.get("ns", "j") is None
        store.commit(Batch(puts=(Put("ns", "k", b"again", ABSENT),)))
        assert store.get("ns", "k") == Item(b"again", 1)  # versions restart after delete

    def test_same_key_twice_in_a_batch(self, store: KVStore) -> None:
        """Expectations are checked against the state before the batch; puts apply in
        order, then deletes."""
        store.commit(Batch(puts=(Put("ns", "k", b"1", ABSENT), Put("ns", "k", b"2", ANY))))
        assert store.get("ns", "k") == Item(b"2", 2)
        store.commit(Batch(puts=(Put("ns", "k", b"3", 2),), deletes=(Delete("ns", "k", 2),)))
        assert store.get("ns", "k") is None
        with pytest.raises(ConflictError):
            store.commit(Batch(puts=(Put("ns", "j", b"1", ABSENT), Put("ns", "j", b"2", 1))))
        assert store.get("ns", "j") is None

    def test_get_many(self, store: KVStore) -> None:
        store.commit(Batch(puts=tuple(Put("ns", k, k.encode()) for k in ("a", "b", "c"))))
        got = store.get_many("ns", ["c", "a", "zz", "a"])
        assert got == {"a": Item(b"a", 1), "c": Item(b"c", 1)}
        many = [f"k{i:04d}" for i in range(1200)]
        store.commit(Batch(puts=tuple(Put("big", k, b"") for k in many)))
        assert set(store.get_many("big", many)) == set(many)

    def test_value_bytes_round_trip(self, store: KVStore) -> None:
        values = {
            "empty": b"",
            "nul": b"\x00a\x00",
            "all": bytes(range(256)),
            "big": b"v" * 500_000,
        }
        store.commit(Batch(puts=tuple(Put("ns", k, v) for k, v in values.items())))
        assert {k: it.value for k, it in store.get_many("ns", list(values)).items()} == values

    def test_keys_may_hold_any_text(self, store: KVStore) -> None:
        keys = ["a b", "a|b|c", "<id.x@example.com>", "é", "中文", "\U0001f600", "a\tb", "'; --"]
        store.commit(Batch(puts=tuple(Put("ns", k, k.encode()) for k in keys)))
        for k in keys:
            assert store.get("ns", k) == Item(k.encode(), 1)
        assert [k for k, _ in store.scan("ns")] == sorted(keys)

    def test_scan_order_prefix_after_limit(self, store: KVStore) -> None:
        keys = [k for k in KEYS if k]
        store.commit(Batch(puts=tuple(Put("ns", k, k.encode()) for k in keys)))
        ordered = sorted(keys)  # Python sorts str by code point: the required order
        assert [k for k, _ in store.scan("ns")] == ordered
        assert [k for k, _ in store.scan("ns", prefix="a")] == [k for k in ordered if k[0] == "a"]
        assert [k for k, _ in store.scan("ns", prefix="a|")] == ["a|", "a|b"]
        assert [k for k, _ in store.scan("ns", prefix="中")] == ["中", "中|x"]
        assert [k for k, _ in store.scan("ns", after="b")] == [k for k in ordered if k > "b"]
        assert [k for k, _ in store.scan("ns", prefix="a", after="ab")] == ["a|", "a|b"]
        assert [k for k, _ in store.scan("ns", prefix="é", after="a")] == ["é", "éa"]
        assert [k for k, _ in store.scan("ns", limit=2)] == ordered[:2]
        assert store.scan("ns", prefix="nothing") == []
        assert store.scan("ns", limit=0) == []

    def test_scan_pages_through_everything(self, store: KVStore) -> None:
        keys = [f"c|{i:05d}" for i in range(2500)]
        store.commit(Batch(puts=tuple(Put("ns", k, b"") for k in keys)))
        seen: list[str] = []
        after = ""
        while True:
            page = store.scan("ns", prefix="c|", after=after, limit=1000)
            seen.extend(k for k, _ in page)
            if len(page) < 1000:
                break
            after = page[-1][0]
        assert seen == keys

    # -- required: atomic batches

    def test_batch_with_a_failed_expectation_writes_nothing(self, store: KVStore) -> None:
        store.commit(Batch(puts=(Put("ns", "taken", b"v"),)))
        with pytest.raises(ConflictError):
            store.commit(
                Batch(
                    appends=(Append("s", 0, (b"e",)),),
                    puts=(Put("ns", "new", b"v", ABSENT), Put("ns", "taken", b"x", ABSENT)),
                    deletes=(Delete("ns", "taken", ANY),),
                )
            )
        assert store.version("s") == 0
        assert store.get("ns", "new") is None
        assert store.get("ns", "taken") == Item(b"v", 1)

    def test_batch_commits_everything_together(self, store: KVStore) -> None:
        store.commit(Batch(appends=(Append("s", 0, (b"old",)),), puts=(Put("ns", "d", b"x"),)))
        store.commit(
            Batch(
                appends=(Append("s", 1, (b"e2",)), Append("t", 0, (b"t1",))),
                puts=(Put("ns", "p", b"v", ABSENT),),
                deletes=(Delete("ns", "d", 1),),
                rewrites=(Rewrite("s", 1, b"new"),),
            )
        )
        assert [r.data for r in store.read("s")] == [b"new", b"e2"]
        assert store.version("t") == 1
        assert store.get("ns", "p") == Item(b"v", 1)
        assert store.get("ns", "d") is None

    # -- required: rewrite

    def test_rewrite_keeps_the_sequence_number(self, store: KVStore) -> None:
        store.commit(Batch(appends=(Append("s", 0, (b"a", b"secret", b"c")),)))
        store.commit(Batch(rewrites=(Rewrite("s", 2, b"gone"),)))
        assert unpositioned(store.read("s")) == [
            Recorded("s", 1, b"a"),
            Recorded("s", 2, b"gone"),
            Recorded("s", 3, b"c"),
        ]
        assert store.version("s") == 3

    def test_rewrite_of_a_missing_event_fails_and_writes_nothing(self, store: KVStore) -> None:
        store.commit(Batch(appends=(Append("s", 0, (b"a",)),)))
        for stream, seq in (("s", 2), ("s", 0), ("nope", 1)):
            with pytest.raises(StoreError):
                store.commit(
                    Batch(puts=(Put("ns", "k", b"v"),), rewrites=(Rewrite(stream, seq, b"x"),))
                )
        assert store.get("ns", "k") is None
        assert unpositioned(store.read("s")) == [Recorded("s", 1, b"a")]

    def test_scrub_keeps_live_data(self, store: KVStore) -> None:
        store.commit(Batch(appends=(Append("s", 0, (b"a", b"b")),), puts=(Put("ns", "k", b"v"),)))
        store.commit(Batch(rewrites=(Rewrite("s", 1, b"x"),), deletes=(Delete("ns", "k"),)))
        store.scrub()
        assert [r.data for r in store.read("s")] == [b"x", b"b"]
        assert store.get("ns", "k") is None

    # -- required: concurrency (threads of one process)

    # -- optional: positions

    def positioned(self) -> None:
        if not self.positions:
            pytest.skip("capability not declared: positions (Recorded.position)")

    def test_positions_follow_commits(self, store: KVStore) -> None:
        self.positioned()
        store.commit(Batch(appends=(Append("a", 0, (b"1", b"2")),)))
        store.commit(Batch(appends=(Append("b", 0, (b"3",)), Append("a", 2, (b"4",)))))
        with pytest.raises(ConflictError):
            store.commit(Batch(appends=(Append("a", 0, (b"no",)),)))
        store.commit(Batch(appends=(Append("b", 1, (b"5",)),)))
        first, second, third = store.read("a")[:2], store.read("b")[:1], store.read("b")[1:]
        assert [r.position > 0 for r in store.read("a")] == [True] * 3
        assert first[0].position < first[1].position
        batch2 = [*second, store.read("a")[2]]
        assert max(r.position for r in first) < min(r.position for r in batch2)
        assert max(r.position for r in batch2) < third[0].position

    def test_rewrite_keeps_the_position(self, store: KVStore) -> None:
        self.positioned()
        store.commit(Batch(appends=(Append("s", 0, (b"a", b"secret")),)))
        before = [r.position for r in store.read("s")]
        store.commit(Batch(rewrites=(Rewrite("s", 2, b"gone"),)))
        assert [r.position for r in store.read("s")] == before
        assert [r.position for r in store.read("s", after=1)] == before[1:]

    def test_concurrent_absent_puts_have_one_winner(self, store: KVStore) -> None:
        outcomes = _race(
            8, lambda i: store.commit(Batch(puts=(Put("ns", "race", b"%d" % i, ABSENT),)))
        )
        assert outcomes.count(None) == 1
        assert all(isinstance(o, ConflictError) for o in outcomes if o is not None)
        item = store.get("ns", "race")
        assert item is not None and item.version == 1

    def test_concurrent_appends_at_one_version_have_one_winner(self, store: KVStore) -> None:
        store.commit(Batch(appends=(Append("s", 0, (b"first",)),)))
        outcomes = _race(
            8,
            lambda i: store.commit(
                Batch(
                    appends=(Append("s", 1, (b"w%d" % i, b"w%d" % i)),),
                    puts=(Put("ns", f"by{i}", b"", ABSENT),),
                )
            ),
        )
        assert outcomes.count(None) == 1
        assert all(isinstance(o, ConflictError) for o in outcomes if o is not None)
        events = store.read("s")
        assert [r.seq for r in events] == [1, 2, 3]
        winner = outcomes.index(None)
        assert events[1].data == events[2].data == b"w%d" % winner
        assert [k for k, _ in store.scan("ns", prefix="by")] == [f"by{winner}"]

    def test_concurrent_compare_and_set_loses_no_update(self, store: KVStore) -> None:
        store.commit(Batch(puts=(Put("ns", "counter", b"0", ABSENT),)))
        per_thread = 15

        def bump(_i: int) -> None:
            done = 0
            while done < per_thread:
                item = store.get("ns", "counter")
                assert item is not None
                value = int(item.value) + 1
                try:
                    store.commit(
                        Batch(
                            puts=(Put("ns", "counter", b"%d" % value, item.version),),
                            appends=(Append("log", value - 1, (b"%d" % value,)),),
                        )
                    )
                except ConflictError:
                    continue
                done += 1

        outcomes = _race(4, bump)
        assert outcomes == [None] * 4
        item = store.get("ns", "counter")
        assert item == Item(b"%d" % (4 * per_thread), 4 * per_thread + 1)
        assert [r.seq for r in store.read("log")] == list(range(1, 4 * per_thread + 1))

    def test_errors_are_the_library_hierarchy(self, store: KVStore) -> None:
        store.commit(Batch(puts=(Put("ns", "k", b"v"),)))
        with pytest.raises(ConvthreadError):
            store.commit(Batch(puts=(Put("ns", "k", b"v", ABSENT),)))
        with pytest.raises(ConvthreadError):
            store.commit(Batch(rewrites=(Rewrite("nope", 1, b""),)))

    def test_closed_store_refuses_calls(self) -> None:
        store = self.new_store()
        store.commit(Batch(puts=(Put("ns", "k", b"v"),)))
        store.close()
        with pytest.raises(StoreError):
            store.get("ns", "k")
        with pytest.raises(StoreError):
            store.commit(Batch(puts=(Put("ns", "j", b"v"),)))
        store.close()  # closing twice is harmless

    # -- optional: persistence

    def test_reopen_keeps_everything(self) -> None:
        if not self.persistent:
            pytest.skip("capability not declared: persistent (reopen_store)")
        store = self.new_store()
        store.commit(Batch(appends=(Append("s", 0, (b"a", b"b")),), puts=(Put("ns", "k", b"v"),)))
        store.commit(Batch(puts=(Put("ns", "k", b"v2", 1),), rewrites=(Rewrite("s", 1, b"x"),)))
        store = self.reopen(store)
        assert unpositioned(store.read("s")) == [Recorded("s", 1, b"x"), Recorded("s", 2, b"b")]
        assert store.get("ns", "k") == Item(b"v2", 2)
        with pytest.raises(ConflictError):
            store.commit(Batch(appends=(Append("s", 1, (b"c",)),)))
        store.commit(Batch(appends=(Append("s", 2, (b"c",)),)))
        assert store.version("s") == 3

    # -- optional: several processes

    def test_processes_share_the_store_safely(self) -> None:
        if not self.multi_process:
            pytest.skip("capability not declared: multi_process (store_opener)")
        store = self.new_store()
        store.commit(Batch(puts=(Put("ns", "counter", b"0", ABSENT),)))
        opener = self.store_opener(store)
        ctx = multiprocessing.get_context("spawn")
        procs, per_proc = 3, 20
        with ctx.Pool(procs) as pool:
            results = pool.starmap(_process_worker, [(opener, i, per_proc) for i in range(procs)])
        assert sorted(results) == list(range(procs))
        total = procs * per_proc
        assert store.get("ns", "counter") == Item(b"%d" % total, total + 1)
        assert [r.seq for r in store.read("log")] == list(range(1, total + 1))
        claimed = store.scan("claims", limit=10_000)
        assert len(claimed) == total  # each ABSENT claim had exactly one winner

    # -- optional: bytes gone from files

    def test_scrub_removes_bytes_from_files(self) -> None:
        if not self.scrubs_files:
            pytest.skip("capability not declared: scrubs_files (store_files)")
        store = self.new_store()
        secret = b"SECRET-7f3a9c-" * 4
        filler = tuple(b"filler %d " % i + b"." * 200 for i in range(200))
        store.commit(Batch(appends=(Append("s", 0, (b"a" + secret, *filler)),)))
        store.commit(Batch(puts=(Put("ns", "k", secret), Put("ns", "keep", b"x" * 300))))
        assert any(secret in p.read_bytes() for p in self.store_files(store) if p.exists())
        store.commit(Batch(rewrites=(Rewrite("s", 1, b"gone"),), deletes=(Delete("ns", "k"),)))
        store.scrub()
        leaks = [p for p in self.store_files(store) if p.exists() and secret in p.read_bytes()]
        assert leaks == []
        assert unpositioned(store.read("s", limit=1)) == [Recorded("s", 1, b"gone")]

    # -- state machines

    def test_state_machine(self) -> None:
        machine = store_machine(
            self.make_store, self.reopen_store if self.persistent else None, self.discard_store
        )
        run_state_machine_as_test(machine, settings=self.machine_settings)

    def test_service_machine(self) -> None:
        machine = service_machine(
            self.make_store, self.reopen_store if self.persistent else None, self.discard_store
        )
        run_state_machine_as_test(machine, settings=self.machine_settings)


def msgspec_replace(obj: Any, **changes: Any) -> Any:
    """``obj`` (a msgspec struct) with ``changes``."""
    import msgspec

    return msgspec.structs.replace(obj, **changes)


def _close(store: KVStore) -> None:
    store.close()


def _race(n: int, fn: Callable[[int], object]) -> list[BaseException | None]:
    """Run ``fn(i)`` in ``n`` threads released together; each one's exception or None."""
    barrier = threading.Barrier(n)
    outcomes: list[BaseException | None] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            fn(i)
        except BaseException as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return outcomes


def _process_worker(opener: Callable[[], KVStore], index: int, count: int) -> int:
    """In a child process: ``count`` compare-and-set increments and ABSENT claims."""
    store = opener()
    try:
        done = 0
        while done < count:
            item = store.get("ns", "counter")
            assert item is not None
            value = int(item.value) + 1
            try:
                store.commit(
                    Batch(
                        appends=(Append("log", value - 1, (b"%d:%d" % (index, value),)),),
                        puts=(
                            Put("ns", "counter", b"%d" % value, item.version),
                            Put("claims", f"{value:06d}", b"%d" % index, ABSENT),
                        ),
                    )
                )
            except ConflictError:
                continue
            done += 1
        return index
    finally:
        store.close()


# --------------------------------------------------------------------------- store machine

_Outcome = tuple[str, str]  # ("ok", "") or (error class name, "")


def _outcome(fn: Callable[[], object]) -> _Outcome:
    try:
        fn()
    except ConflictError:
        return ("conflict", "")
    except StoreError:
        return ("store_error", "")
    return ("ok", "")


class StoreMachine(RuleBasedStateMachine):
    """Protocol-level operations on the store under test and on the reference.

    Subclasses set ``make`` (and ``reopen``, which may be None); :func:`store_machine`
    does it. Add rules by subclassing: use :meth:`both` to run the same batch on both.
    """

    make: ClassVar[Callable[[], KVStore]]
    reopen: ClassVar[Callable[[KVStore], KVStore] | None] = None
    discard: ClassVar[Callable[[KVStore], None]]

    def __init__(self) -> None:
        super().__init__()
        self.store = type(self).make()
        self.ref = MemoryStore()
        self.positions: dict[tuple[str, int], int] = {}

    def check_positions(self, records: list[Recorded]) -> None:
        """Where the store reports positions: an event keeps its position (rewrites and
        reopening included), and events that appeared since the last step have
        positions above every one seen before, growing with seq within a stream."""
        if not any(r.position for r in records):
            return
        assert all(r.position > 0 for r in records), "some events report position 0"
        known, top = self.positions, max(self.positions.values(), default=0)
        fresh = []
        for r in records:
            was = known.get((r.stream, r.seq))
            if was is None:
                fresh.append(r)
            else:
                assert r.position == was, f"{r.stream}#{r.seq} moved from {was} to {r.position}"
        assert all(r.position > top for r in fresh), (
            f"new events {[(r.stream, r.seq, r.position) for r in fresh]} "
            f"are not after position {top}"
        )
        assert len({r.position for r in records}) == len(records), "positions repeat"
        for r in fresh:
            known[(r.stream, r.seq)] = r.position

    @property
    def heads(self) -> Store:
        """The store under test, behind the key-value adapter if it has no heads."""
        return heads_of(self.store)

    def teardown(self) -> None:
        self.ref.close()
        type(self).discard(self.store)

    # -- helpers

    def expectation(self, ns: str, key: str, mode: str) -> int:
        item = self.ref.get(ns, key)
        if mode == "right":
            return item.version if item is not None else ABSENT
        if mode == "absent":
            return ABSENT
        if mode == "any":
            return ANY
        if mode == "stale":
            return max((item.version if item is not None else 0) - 1, 1)
        return (item.version if item is not None else 0) + 1  # "ahead"

    def both(self, batch: Batch) -> None:
        want = _outcome(lambda: self.ref.commit(batch))
        target = self.heads if batch.heads else self.store
        got = _outcome(lambda: target.commit(batch))
        assert got == want, f"{batch!r}: store gave {got[0]}, the reference {want[0]}"

    def head_expectation(self, thread_id: str, mode: str) -> int:
        head = self.ref.get_heads(DEFAULT_TENANT, [thread_id]).get(thread_id)
        if mode == "right":
            return head.version if head is not None else ABSENT
        if mode == "absent":
            return ABSENT
        if mode == "stale":
            return max((head.version if head is not None else 0) - 1, 1)
        return (head.version if head is not None else 0) + 1  # "ahead"

    # -- rules

    @rule(
        stream=st.sampled_from(STREAMS),
        n=st.integers(0, 3),
        offset=st.sampled_from([0, 0, 0, -1, 1]),
        data=st.binary(max_size=40),
    )
    def append(self, stream: str, n: int, offset: int, data: bytes) -> None:
        expected = max(self.ref.version(stream) + offset, 0)
        events = tuple(data + b"%d" % i for i in range(n))
        self.both(Batch(appends=(Append(stream, expected, events),)))

    @rule(
        ns=st.sampled_from(NAMESPACES),
        key=st.sampled_from(KEYS),
        value=st.binary(max_size=30),
        mode=st.sampled_from(["right", "right", "absent", "any", "stale", "ahead"]),
    )
    def put(self, ns: str, key: str, value: bytes, mode: str) -> None:
        self.both(Batch(puts=(Put(ns, key, value, self.expectation(ns, key, mode)),)))

    @rule(
        ns=st.sampled_from(NAMESPACES),
        key=st.sampled_from(KEYS),
        mode=st.sampled_from(["right", "absent", "any", "stale", "ahead"]),
    )
    def delete(self, ns: str, key: str, mode: str) -> None:
        self.both(Batch(deletes=(Delete(ns, key, self.expectation(ns, key, mode)),)))

    @rule(
        stream=st.sampled_from(STREAMS),
        seq=st.integers(0, 6),
        data=st.binary(max_size=20),
    )
    def rewrite(self, stream: str, seq: int, data: bytes) -> None:
        self.both(Batch(rewrites=(Rewrite(stream, seq, data),)))

    @rule(
        streams=st.lists(st.sampled_from(STREAMS), max_size=2, unique=True),
        keys=st.lists(
            st.tuples(
                st.sampled_from(NAMESPACES),
                st.sampled_from(KEYS),
                st.sampled_from(["right", "absent", "any", "stale"]),
                st.booleans(),
            ),
            max_size=4,
        ),
        stale_stream=st.booleans(),
        rewrite_first=st.booleans(),
    )
    def mixed_batch(
        self,
        streams: list[str],
        keys: list[tuple[str, str, str, bool]],
        stale_stream: bool,
        rewrite_first: bool,
    ) -> None:
        appends = []
        for i, s in enumerate(streams):
            version = self.ref.version(s)
            expected = version + 1 if stale_stream and i == 0 else version
            appends.append(Append(s, expected, (b"m%d" % version,)))
        puts = []
        deletes = []
        for ns, key, mode, is_delete in keys:
            expected = self.expectation(ns, key, mode)
            if is_delete:
                deletes.append(Delete(ns, key, expected))
            else:
                puts.append(Put(ns, key, b"mixed", expected))
        rewrites = []
        if rewrite_first and streams and self.ref.version(streams[0]) >= 1:
            rewrites.append(Rewrite(streams[0], 1, b"rewritten"))
        self.both(
            Batch(
                appends=tuple(appends),
                puts=tuple(puts),
                deletes=tuple(deletes),
                rewrites=tuple(rewrites),
            )
        )

    @rule(
        thread=st.sampled_from(THREADS),
        customer=st.sampled_from(("cu_1", "cu_2", "cu_é")),
        status=st.sampled_from(("open", "pending", "snoozed", "closed")),
        minutes=st.integers(0, 4),
        channels=st.sampled_from((("sms",), ("sms", "email"), ("whatsapp",))),
        snoozed=st.sampled_from((None, 5, 7)),
        controller=st.sampled_from((None, None, "agent:ann", "bot:x")),
        mode=st.sampled_from(["right", "right", "right", "absent", "stale", "ahead"]),
        with_append=st.booleans(),
    )
    def write_head(
        self,
        thread: str,
        customer: str,
        status: str,
        minutes: int,
        channels: tuple[str, ...],
        snoozed: int | None,
        controller: str | None,
        mode: str,
        with_append: bool,
    ) -> None:
        head = make_head(
            thread,
            customer=customer,
            status=status,
            minutes=minutes,
            channels=channels,
            snoozed_minutes=snoozed,
            controller=controller,
            state=b"s:%d" % minutes,
        )
        appends = (
            (Append(STREAMS[0], self.ref.version(STREAMS[0]), (b"h",)),) if with_append else ()
        )
        self.both(
            Batch(appends=appends, heads=(HeadWrite(head, self.head_expectation(thread, mode)),))
        )

    @rule(
        customer=st.sampled_from((None, "cu_1", "cu_2")),
        statuses=st.sampled_from(((), ("open",), ("open", "snoozed"), ("closed",))),
        channel=st.sampled_from((None, "sms", "email")),
        controller=st.sampled_from((None, "agent:ann")),
        snoozed=st.sampled_from((None, 6)),
        newest_first=st.booleans(),
        limit=st.integers(0, 4),
        cursor=st.sampled_from((None, (1, "th_b"), (3, "th_中"))),
    )
    def find_heads_matches(
        self,
        customer: str | None,
        statuses: tuple[str, ...],
        channel: str | None,
        controller: str | None,
        snoozed: int | None,
        newest_first: bool,
        limit: int,
        cursor: tuple[int, str] | None,
    ) -> None:
        query = HeadQuery(
            customer_id=customer,
            statuses=statuses,
            channel=channel,
            controller=controller,
            snoozed_before=None if snoozed is None else _H0 + timedelta(minutes=snoozed),
            newest_first=newest_first,
            limit=limit,
            after=None if cursor is None else (_H0 + timedelta(minutes=cursor[0]), cursor[1]),
        )
        assert self.heads.find_heads(query) == self.ref.find_heads(query), query

    @rule()
    def scrub(self) -> None:
        self.store.scrub()

    @precondition(lambda self: type(self).reopen is not None)
    @rule()
    def reopen_store(self) -> None:
        reopen = type(self).reopen
        assert reopen is not None
        self.store = reopen(self.store)

    @rule(
        ns=st.sampled_from(NAMESPACES),
        prefix=st.sampled_from(["", "a", "a|", "é", "中", "z"]),
        after=st.sampled_from(["", "a", "a|", "b", "éa"]),
        limit=st.integers(0, 5),
    )
    def scan_matches(self, ns: str, prefix: str, after: str, limit: int) -> None:
        assert self.store.scan(ns, prefix, after, limit) == self.ref.scan(ns, prefix, after, limit)

    @rule(stream=st.sampled_from(STREAMS), after=st.integers(0, 5), limit=st.integers(0, 4))
    def read_matches(self, stream: str, after: int, limit: int) -> None:
        got = self.store.read(stream, after, limit)
        assert unpositioned(got) == unpositioned(self.ref.read(stream, after, limit))

    # -- the comparison after every step

    @invariant()
    def same_as_reference(self) -> None:
        records = []
        for stream in STREAMS:
            got = self.store.read(stream)
            assert unpositioned(got) == unpositioned(self.ref.read(stream)), stream
            assert self.store.version(stream) == self.ref.version(stream), stream
            records += got
        self.check_positions(records)
        if isinstance(self.store, FeedReader):
            # The feed holds exactly the stored events, in position order.
            feed, after = [], 0
            while page := self.store.read_positions(DEFAULT_TENANT, after, 50):
                feed += page
                after = page[-1].position
            assert feed == sorted(records, key=lambda r: r.position), "the feed differs"
            assert self.store.last_position(DEFAULT_TENANT) == (feed[-1].position if feed else 0)
        for ns in NAMESPACES:
            assert self.store.scan(ns) == self.ref.scan(ns), ns
            assert self.store.get_many(ns, list(KEYS)) == self.ref.get_many(ns, list(KEYS))
        want_heads = self.ref.get_heads(DEFAULT_TENANT, list(THREADS))
        assert self.heads.get_heads(DEFAULT_TENANT, list(THREADS)) == want_heads
        assert self.heads.find_heads(HeadQuery(limit=100)) == self.ref.find_heads(
            HeadQuery(limit=100)
        )
        if isinstance(self.store, MultiGet):
            pairs = [(ns, key) for ns in NAMESPACES for key in KEYS]
            want = {(ns, k): it for ns in NAMESPACES for k, it in self.ref.scan(ns, limit=100)}
            assert self.store.get_multi(pairs) == want


def store_machine(
    make: Callable[[], KVStore],
    reopen: Callable[[KVStore], KVStore] | None = None,
    discard: Callable[[KVStore], None] | None = None,
) -> type[StoreMachine]:
    """A :class:`StoreMachine` over stores from ``make`` (each run a new one), reopened with
    ``reopen`` (None: never) and released with ``discard`` (default: close)."""
    return type(
        "StoreMachineFor",
        (StoreMachine,),
        {
            "make": staticmethod(make),
            "reopen": staticmethod(reopen) if reopen else None,
            "discard": staticmethod(discard or _close),
        },
    )


# --------------------------------------------------------------------------- service machine

_T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
_PHONES = ("+447911123456", "+447911123457", "+447911123458")
_CHANNELS = ("sms", "whatsapp", "email")


class ServiceMachine(RuleBasedStateMachine):
    """:class:`~convthread.Conversations` over the store under test and over the
    reference, driven by the same operations with the same clock and ids; every result
    and every read must be equal.

    Rules: ingest, redeliver, send, erase, reopen. Subclass to add rules (status,
    link, merge, unmerge, ...) using :meth:`both`, which runs one call on both services
    and compares the results (or the error types).
    """

    make: ClassVar[Callable[[], KVStore]]
    reopen: ClassVar[Callable[[KVStore], KVStore] | None] = None
    discard: ClassVar[Callable[[KVStore], None]]

    inbounds = Bundle("inbounds")
    threads = Bundle("threads")
    customers = Bundle("customers")

    def __init__(self) -> None:
        super().__init__()
        import convthread as ct

        self.ct = ct
        self.clock_a = ct.ManualClock(_T0)
        self.clock_b = ct.ManualClock(_T0)
        self.store = type(self).make()
        self.a = ct.Conversations(self.store, clock=self.clock_a, ids=ct.SequentialIds())
        self.b = ct.Conversations(MemoryStore(), clock=self.clock_b, ids=ct.SequentialIds())
        self.counter = 0
        self.seen_threads: set[str] = set()
        self.seen_customers: set[str] = set()

    def teardown(self) -> None:
        self.b.close()
        type(self).discard(self.store)

    def both(self, call: Callable[[Any], Any]) -> Any:
        """Run ``call(service)`` on both services; equal results or equal error types."""
        outcomes = []
        for convs in (self.a, self.b):
            try:
                outcomes.append(("ok", call(convs)))
            except ConvthreadError as exc:
                outcomes.append((type(exc).__name__, None))
        assert outcomes[0] == outcomes[1], outcomes
        return outcomes[0][1]

    @rule(
        target=inbounds,
        phone=st.sampled_from(_PHONES),
        channel=st.sampled_from(_CHANNELS),
        text=st.text(max_size=30),
        minutes=st.integers(0, 600),
    )
    def ingest(self, phone: str, channel: str, text: str, minutes: int) -> Any:
        ct = self.ct
        self.counter += 1
        for clock in (self.clock_a, self.clock_b):
            clock.advance(minutes=minutes)
        if channel == "email":
            ident = ct.SenderIdentifier(ct.email(f"p{phone[-1]}@example.com"), ct.Trust.CLAIMED)
        else:
            ident = ct.SenderIdentifier(ct.phone(phone), ct.Trust.ASSERTED)
        inbound = ct.Inbound(
            channel=channel,
            provider_message_id=f"<m{self.counter}.{phone[-4:]}@example.com>",
            sender=(ident,),
            content=ct.Content(text=text),
            sent_at=self.clock_a.now(),
        )
        result = self.both(lambda c: c.ingest(inbound))
        if result is not None:
            self.seen_threads.add(result.thread_id)
            self.seen_customers.add(result.customer_id)
        return inbound

    @rule(inbound=inbounds)
    def redeliver(self, inbound: Any) -> None:
        self.both(lambda c: c.ingest(inbound))

    @precondition(lambda self: bool(self.seen_threads))
    @rule(data=st.data(), text=st.text(max_size=20))
    def send(self, data: st.DataObject, text: str) -> None:
        thread_id = data.draw(st.sampled_from(sorted(self.seen_threads)))
        self.counter += 1
        self.both(
            lambda c: c.send(
                thread_id,
                text or "-",
                sender="agent:alice",
                provider_message_id=f"out-{self.counter}",
            )
        )

    @precondition(lambda self: bool(self.seen_customers))
    @rule(data=st.data())
    def erase(self, data: st.DataObject) -> None:
        customer_id = data.draw(st.sampled_from(sorted(self.seen_customers)))
        self.both(lambda c: c.erase_customer(customer_id))

    @precondition(lambda self: type(self).reopen is not None)
    @rule()
    def reopen_store(self) -> None:
        reopen = type(self).reopen
        assert reopen is not None
        self.store = reopen(self.store)
        self.a = self.ct.Conversations(self.store, clock=self.clock_a, ids=self.a.config.ids)

    @invariant()
    def reads_match(self) -> None:
        for thread_id in sorted(self.seen_threads):
            self.both(functools.partial(_call, "thread", thread_id))
        for customer_id in sorted(self.seen_customers):
            self.both(functools.partial(_call, "customer", customer_id))
        for phone in _PHONES:
            self.both(functools.partial(_call, "find_customer", self.ct.phone(phone)))


def _call(method: str, arg: Any, convs: Any) -> Any:
    return getattr(convs, method)(arg)


def service_machine(
    make: Callable[[], KVStore],
    reopen: Callable[[KVStore], KVStore] | None = None,
    discard: Callable[[KVStore], None] | None = None,
) -> type[ServiceMachine]:
    """A :class:`ServiceMachine` over stores from ``make`` (each run a new one), reopened with
    ``reopen`` (None: never) and released with ``discard`` (default: close)."""
    return type(
        "ServiceMachineFor",
        (ServiceMachine,),
        {
            "make": staticmethod(make),
            "reopen": staticmethod(reopen) if reopen else None,
            "discard": staticmethod(discard or _close),
        },
    )
