"""The testing kit's strategies: valid values for every public type, journeys whose
expectations hold on every store, failures that shrink to small examples, and the
Hypothesis and pytest plugins as a downstream project sees them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import phonenumbers
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

import convthread as ct
from convthread.domain.identifiers import default_registry
from convthread.domain.thread import CustomerState, ThreadState, evolve_customer
from convthread.errors import ConvthreadError, InvalidIdentifier
from convthread.stores import MemoryStore
from convthread.testing import _hypothesis_setup
from convthread.testing import strategies as cts

pytest_plugins = ["pytester"]

FAST = settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
DERIVED = set(_hypothesis_setup.other_public_structs())
REGISTERED = [
    *_hypothesis_setup.registered_types(),
    *_hypothesis_setup.other_public_structs(),
    cts.Journey,
    cts.Persona,
    cts.OutboundMessage,
]


def fresh() -> ct.Conversations:
    return ct.Conversations(MemoryStore(), clock=ct.ManualClock(), ids=ct.SequentialIds())


def check_valid(value: Any) -> None:
    """Decoding the value's own encoding re-runs every validation of its type."""
    if isinstance(value, msgspec.Struct) and not isinstance(value, cts.Journey):
        again = msgspec.convert(msgspec.to_builtins(value), type(value))
        assert again == value
    if isinstance(value, ct.Identifier):
        assert default_registry.renormalize(value) == value
    if isinstance(value, ct.Inbound):
        result = fresh().ingest(value)
        assert result.event.provider_message_id == value.provider_message_id
    if isinstance(value, ct.ThreadView):
        assert [e.seq for e in value.events] == list(range(1, value.state.version + 1))
    if isinstance(value, cts.Journey):
        value.play(fresh())


@pytest.mark.parametrize("tp", REGISTERED, ids=lambda t: t.__name__)
def test_from_type_draws_valid_values_for_every_public_type(tp: type[Any]) -> None:
    derived = tp in DERIVED  # strategies derived from field types: large values, few draws

    @settings(FAST, max_examples=3 if derived else 8)
    @given(st.data())
    def draw(data: st.DataObject) -> None:
        value = data.draw(st.from_type(tp))
        if getattr(tp, "_is_protocol", False):  # Clock, IdSource: structural types
            assert all(hasattr(value, m) for m in ("now", "new_id") if hasattr(tp, m))
        else:
            assert isinstance(value, tp)
        check_valid(value)

    draw()


def test_every_public_value_type_is_registered() -> None:
    registered = set(REGISTERED)
    value_types = {
        getattr(ct, name) for name in ct.__all__
        if isinstance(getattr(ct, name), type) and issubclass(getattr(ct, name), msgspec.Struct)
    }  # fmt: skip
    assert value_types - registered == set()


@FAST
@given(cts.phone_numbers(), st.sampled_from(["e164", "international"]))
def test_phone_numbers_are_valid_and_normalize(number: str, fmt: str) -> None:
    parsed = phonenumbers.parse(number, None)
    assert phonenumbers.is_valid_number(parsed)
    assert ct.phone(number).value == phonenumbers.format_number(
        parsed, phonenumbers.PhoneNumberFormat.E164
    )


@FAST
@given(st.sampled_from(cts.DEFAULT_REGIONS).flatmap(
    lambda r: st.tuples(st.just(r), cts.phone_numbers([r], format="national"))))  # fmt: skip
def test_national_numbers_read_with_their_region(pair: tuple[str, str]) -> None:
    region, number = pair
    assert phonenumbers.region_code_for_number(
        phonenumbers.parse(ct.phone(number, region=region).value)
    ) in (region, "US", "CA")


@FAST
@given(cts.email_addresses(idn=True, mixed_case=True))
def test_email_addresses_normalize_to_ascii(address: str) -> None:
    normalized = ct.email(address).value
    assert normalized.split("@")[1].isascii()


def test_internationalized_domains_are_drawn() -> None:
    address = find(cts.email_addresses(idn=True), lambda a: not a.isascii())
    assert "xn--" in ct.email(address).value


@FAST
@given(cts.identifiers(invalid=True))
def test_invalid_identifiers_are_rejected(identifier: ct.Identifier) -> None:
    with pytest.raises(InvalidIdentifier):
        default_registry.renormalize(identifier)


@FAST
@given(cts.identifiers(invalid=True), cts.inbounds())
def test_ingest_rejects_invalid_identifiers_and_stores_nothing(
    identifier: ct.Identifier, inbound: ct.Inbound
) -> None:
    convs = fresh()
    bad = msgspec.structs.replace(inbound, sender=(ct.SenderIdentifier(identifier),))
    with pytest.raises(ConvthreadError):
        convs.ingest(bad)
    assert convs.store.scan("msg") == []


@pytest.mark.parametrize("kind", ["phone", "email", "handle"])
def test_invalid_raw_values_are_rejected(kind: str) -> None:
    strategy = {
        "phone": cts.phone_numbers(invalid=True).map(lambda v: ("phone", v, "")),
        "email": cts.email_addresses(invalid=True).map(lambda v: ("email", v, "")),
        "handle": st.sampled_from(cts.PLATFORMS).flatmap(
            lambda p: cts.handle_values(p, invalid=True).map(lambda v: ("handle", v, p))),
    }[kind]  # fmt: skip

    @FAST
    @given(strategy)
    def check(raw: tuple[str, str, str]) -> None:
        with pytest.raises(InvalidIdentifier):
            ct.normalize_identifier(raw[0], raw[1], scope=raw[2])

    check()


@FAST
@given(cts.thread_histories())
def test_thread_histories_are_gap_free_and_in_time_order(history: list[ct.StoredEvent]) -> None:
    assert [e.seq for e in history] == list(range(1, len(history) + 1))
    times = [e.event.at for e in history]
    assert times == sorted(times)
    assert isinstance(history[0].event, ct.ThreadStarted)


@FAST
@given(cts.customer_histories())
def test_customer_histories_fold(history: list[tuple[int, ct.CustomerEvent]]) -> None:
    state: CustomerState | None = None
    for seq, event in history:
        state = evolve_customer(state, "cu_0001", seq, event)
    assert state is not None and state.version == len(history)


# -- journeys replay with every expectation met, on each store


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_journeys_replay_with_every_expectation_met(
    kind: str, convthread_conversations_factory: Callable[..., ct.Conversations]
) -> None:
    @settings(max_examples=25 if kind == "memory" else 8, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
    @given(cts.journeys(max_personas=3, max_steps=10))
    def replay(journey: cts.Journey) -> None:
        convs = convthread_conversations_factory(kind)
        log = journey.play(convs)
        assert len(log.results) == len(journey.steps)

    replay()


def test_journeys_take_the_policy_into_account() -> None:
    policy = ct.ContinuityPolicy(window=ct.ContinuityPolicy().window / 24)  # one hour

    @FAST
    @given(cts.journeys(policy=policy, max_steps=6))
    def replay(journey: cts.Journey) -> None:
        journey.play(ct.Conversations(MemoryStore(), clock=ct.ManualClock(),
                                      ids=ct.SequentialIds(), continuity=policy))  # fmt: skip

    replay()
    journey = find(cts.journeys(), lambda j: len(j.steps) > 1)
    with pytest.raises(ValueError, match="window"):
        journey.play(ct.Conversations(MemoryStore(), clock=ct.ManualClock(), continuity=policy))


def test_play_needs_a_manual_clock() -> None:
    journey = find(cts.journeys(), lambda j: True)
    with pytest.raises(TypeError, match="ManualClock"):
        journey.play(ct.Conversations(MemoryStore()))


# -- failures shrink to small, readable examples


def test_a_handler_that_ignores_duplicates_shrinks_to_two_steps() -> None:
    def ingest_twice_counted(journey: cts.Journey, convs: ct.Conversations) -> list[str]:
        seen: list[str] = []

        def ingest(inbound: ct.Inbound) -> ct.IngestResult:
            seen.append(inbound.provider_message_id)
            return convs.ingest(inbound)

        journey.play(convs, ingest=ingest)
        return seen

    def broken(journey: cts.Journey) -> bool:
        return len(ingest_twice_counted(journey, fresh())) != journey.distinct_messages

    smallest = find(
        cts.journeys(), broken, settings=settings(database=None, max_examples=30, derandomize=True)
    )
    assert len(smallest.steps) <= 3  # typically [a message, its redelivery]
    redelivery = next(
        n for n, st_ in enumerate(smallest.steps, 1) if isinstance(st_, cts.Redeliver)
    )
    original = smallest.steps[redelivery - 1].of  # type: ignore[union-attr]
    assert repr(smallest).startswith(f"Journey({len(smallest.steps)} steps: #1 +0m ana on ")

    # An ingest that stores a redelivery as a new message fails at step 2, marked.
    convs = fresh()

    delivered: set[str] = set()

    def forgetful(inbound: ct.Inbound) -> ct.IngestResult:  # a retry gets a new id
        pid = inbound.provider_message_id
        if pid in delivered:
            inbound = msgspec.structs.replace(inbound, provider_message_id=pid + "-retry")
        delivered.add(pid)
        return convs.ingest(inbound)

    with pytest.raises(
        cts.JourneyFailure, match=rf"step #{redelivery}: a redelivery of #{original}"
    ) as info:
        smallest.play(convs, ingest=forgetful)
    assert f">> #{redelivery} " in str(info.value)


@pytest.mark.parametrize(
    ("strategy", "condition", "smallest"),
    [
        (cts.phones(), lambda i: True, "+447400120000"),
        (cts.email_addresses(), lambda a: True, "0@0.com"),
        (cts.texts(), lambda t: True, ""),
        (cts.handle_values("twitter"), lambda h: True, "0"),
    ],
)
def test_values_shrink_to_the_simplest(strategy: Any, condition: Any, smallest: Any) -> None:
    value = find(strategy, condition, settings=settings(database=None))
    assert (value.value if isinstance(value, ct.Identifier) else value) == smallest


def test_inbound_and_states_shrink_small() -> None:
    quick = settings(database=None, max_examples=30)
    inbound = find(cts.inbounds(), lambda i: True, settings=quick)
    assert inbound.content == ct.Content() and len(inbound.sender) == 1
    state = find(cts.thread_states(), lambda s: s.message_count > 0, settings=quick)
    assert isinstance(state, ThreadState) and state.version == 2


# -- the plugins, as a downstream project sees them


def test_from_type_works_without_importing_the_kit(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import sys
        from hypothesis import HealthCheck, strategies as st, given, settings
        from convthread import Inbound, ThreadState, Identifier
        # what is checked is the registration, not speed: a loaded machine must not fail it
        @settings(max_examples=5, database=None, suppress_health_check=list(HealthCheck))
        @given(st.from_type(Inbound), st.from_type(ThreadState), st.from_type(Identifier))
        def t(i, s, ident):
            assert isinstance(i, Inbound) and isinstance(s, ThreadState)
        t()
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert proc.stdout.strip() == "ok", proc.stderr
    # the kit imported first (its own `import hypothesis` runs the hook): still fine
    code = ("import convthread.testing\nfrom hypothesis import strategies as st\n"
            "from convthread import Inbound\nfrom convthread.testing import Journey\n"
            "assert isinstance(st.from_type(Journey).example(), Journey)\n"
            "assert isinstance(st.from_type(Inbound).example(), Inbound)\nprint('ok')")  # fmt: skip
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.stdout.strip() == "ok", proc.stderr


def test_the_hook_leaves_hypothesis_alone_when_convthread_is_broken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(name: str) -> Any:
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(_hypothesis_setup.importlib, "import_module", broken)
    _hypothesis_setup._register()  # no exception


def test_the_pytest_plugin_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        textwrap.dedent("""
        import pytest
        from convthread import Conversations, ManualClock
        from convthread.stores import SQLiteStore, MemoryStore

        def test_defaults(convthread_conversations, convthread_clock, convthread_store):
            assert isinstance(convthread_conversations, Conversations)
            assert isinstance(convthread_store, MemoryStore)
            assert convthread_conversations.config.clock is convthread_clock

        @pytest.mark.parametrize("convthread_store", ["sqlite"], indirect=True)
        def test_sqlite(convthread_store, convthread_sqlite_store):
            assert isinstance(convthread_store, SQLiteStore)
            assert convthread_store.path != convthread_sqlite_store.path

        def test_factory(convthread_conversations_factory):
            a, b = convthread_conversations_factory(), convthread_conversations_factory("sqlite")
            assert a.store is not b.store

        async def _unused(): ...

        def test_async(convthread_async_conversations):
            assert type(convthread_async_conversations).__name__ == "AsyncConversations"

        def test_postgres(convthread_postgres_store):
            assert convthread_postgres_store is not None

        def store(): ...  # users' own names do not clash with the plugin's
    """)
    )
    env_url = os.environ.pop("CONVTHREAD_TEST_POSTGRES_URL", None)
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    finally:
        if env_url is not None:
            os.environ["CONVTHREAD_TEST_POSTGRES_URL"] = env_url
    result.assert_outcomes(passed=4, skipped=1)
    result.stdout.fnmatch_lines(["*no PostgreSQL URL: pass --convthread-postgres-url*"])


def test_journeys_hand_threads_off_and_the_controller_sends() -> None:
    def handed_off_then_sent(journey: cts.Journey) -> bool:
        handed = {s.on for s in journey.steps if isinstance(s, cts.Handoff)}
        return any(
            isinstance(s, cts.Send) and s.on in handed and s.message.sender.kind.value == "agent"
            for s in journey.steps
        )

    journey = find(cts.journeys(), handed_off_then_sent, settings=settings(database=None))
    log = journey.play(fresh())
    assert any(isinstance(r, cts.HandoffOutcome) for r in log.results)
    controller: dict[str, ct.Party] = {}  # thread id -> who took it over
    for step, result in zip(journey.steps, log.results, strict=True):
        if isinstance(result, cts.HandoffOutcome):
            controller[result.thread_id] = result.controller
        elif isinstance(step, cts.Send) and result.thread_id in controller:
            assert step.message.sender == controller[result.thread_id]
    assert "is handed off to" in journey.describe()


def test_the_postgres_fixture_with_a_server(pytester: pytest.Pytester) -> None:
    from tests.conftest import POSTGRES_URL, require_postgres

    require_postgres()
    pytester.makepyfile(
        textwrap.dedent("""
        def test_postgres(convthread_postgres_store, convthread_store_factory):
            from convthread import Conversations, ManualClock
            from convthread.testing import journeys
            convs = Conversations(convthread_postgres_store, clock=ManualClock())
            journey = journeys().example()
            journey.play(convs)
    """)
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-W", "ignore", f"--convthread-postgres-url={POSTGRES_URL}"
    )
    result.assert_outcomes(passed=1)


def test_the_kit_exports_exactly_the_strategies_module() -> None:
    import convthread.testing as kit

    assert sorted(kit.__all__) == sorted([*cts.__all__, "strategies"])
    assert all(getattr(kit, name) is getattr(cts, name) for name in cts.__all__)
    assert "pytest" not in {m.split(".")[0] for m in vars(kit) if isinstance(m, str)}
