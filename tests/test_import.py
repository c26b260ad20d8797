"""History import: messages recorded at their own time, chunked, resumable; checked on
the Customer Support on Twitter sample against a computation made straight from the CSV."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import convthread as ct
from convthread.cli import _ProgressBar, main
from convthread.errors import OutOfOrderError, ValidationError
from convthread.importing import read_email_folder, read_jsonl, read_twitter_csv
from convthread.stores import SQLiteStore
from tests._thread_util import check_store_invariants

TWCS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "twitter" / "twcs_sample.csv"
T0 = datetime(2024, 5, 6, 9, 0, tzinfo=timezone.utc)
#: The wall clock in these tests: far from every message time, so a time stamped from
#: the clock cannot pass for a message's own.
WALL = datetime(2031, 1, 1, tzinfo=timezone.utc)
needs_twcs = pytest.mark.skipif(
    not TWCS.is_file(), reason=f"the shared Twitter corpus is not at {TWCS}"
)


def when(row: dict[str, str]) -> datetime:
    return datetime.strptime(row["created_at"], "%a %b %d %H:%M:%S %z %Y")


def csv_rows() -> dict[str, dict[str, str]]:
    with TWCS.open(newline="", encoding="utf-8") as f:
        return {row["tweet_id"]: row for row in csv.DictReader(f)}


class Expected:
    """Threads and durations computed from the CSV alone (csv module, no convthread)."""

    def __init__(self, rows: dict[str, dict[str, str]]) -> None:
        customer = {t: r["inbound"] == "True" for t, r in rows.items()}

        def owner(tid: str) -> str | None:  # the customer a tweet's conversation is with
            seen = set()
            while not customer[tid]:
                parent = rows[tid]["in_response_to_tweet_id"]
                if parent not in rows or tid in seen:
                    return None
                seen.add(tid)
                tid = parent
            return rows[tid]["author_id"]

        owners = {t: owner(t) for t in rows}
        #: company replies to a tweet outside the sample: nowhere to record them
        self.unplaceable = sorted(t for t, o in owners.items() if o is None)
        placed = [t for t in rows if owners[t] is not None]
        group = {t: t for t in placed}

        def find(x: str) -> str:
            while group[x] != x:
                group[x] = group[group[x]]
                x = group[x]
            return x

        for t in placed:
            parent = rows[t]["in_response_to_tweet_id"]
            if parent in group and owners[parent] == owners[t]:
                group[find(t)] = find(parent)
        threads: dict[str, set[str]] = defaultdict(set)
        for t in placed:
            threads[find(t)].add(t)
        self.threads = sorted(sorted(g) for g in threads.values())
        self.first_response: dict[str, int | None] = {}
        self.as_of: dict[str, datetime] = {}
        self.waiting: dict[str, int | None] = {}
        for tweets in self.threads:
            key = tweets[0]
            ins = sorted(when(rows[t]) for t in tweets if customer[t])
            outs = sorted(when(rows[t]) for t in tweets if not customer[t])
            times = {when(rows[t]) for t in tweets}
            assert len(times) == len(tweets), "the computation assumes distinct times"
            self.as_of[key] = max(times)
            self.first_response[key] = int((outs[0] - ins[0]).total_seconds()) if outs else None
            unanswered = [t for t in ins if not outs or t > outs[-1]]
            self.waiting[key] = (
                int((self.as_of[key] - unanswered[0]).total_seconds()) if unanswered else None
            )


@needs_twcs
def test_twitter_history_matches_a_computation_from_the_csv(store_factory, ids) -> None:
    rows = csv_rows()
    expected = Expected(rows)
    assert expected.unplaceable == ["119246", "119332"]
    convs = ct.Conversations(store_factory(), clock=ct.ManualClock(WALL), ids=ids)
    summary = convs.import_history(ct.history_order(read_twitter_csv(TWCS)), chunk_size=16)
    assert (summary.read, summary.imported, summary.skipped) == (93, 91, 0)
    assert summary.new_threads == len(expected.threads) == 29
    assert sorted(f.provider_message_id for f in summary.failures) == expected.unplaceable
    assert {f.error for f in summary.failures} == {"NotFound"}
    assert "119247" in summary.failures[0].reason

    where = {t: convs.find_message("twitter", t) for t in rows}
    actual: dict[str, set[str]] = defaultdict(set)
    for t, loc in where.items():
        if loc is not None:
            actual[loc.thread_id].add(t)
    assert sorted(sorted(g) for g in actual.values()) == expected.threads

    for tweets in expected.threads:
        thread_id = where[tweets[0]].thread_id  # type: ignore[union-attr]
        snap = convs.snapshot(thread_id)
        assert snap.as_of == expected.as_of[tweets[0]]
        assert snap.first_response_seconds == expected.first_response[tweets[0]]
        assert snap.waiting_seconds == expected.waiting[tweets[0]]
        # every event is stamped with its message's own time, inbound and outbound
        events = {e.seq: e.event for e in convs.events(thread_id)}
        for t in tweets:
            event = events[where[t].seq]  # type: ignore[union-attr]
            assert event.at == when(rows[t]), t
            assert isinstance(
                event, ct.MessageReceived if rows[t]["inbound"] == "True" else ct.MessageSent
            )
        state = convs.thread_state(thread_id)
        assert state.created_at == min(when(rows[t]) for t in tweets)
    check_store_invariants(convs.store)


@needs_twcs
def test_an_interrupted_import_resumes_without_recording_anything_twice(tmp_path) -> None:
    items = ct.history_order(read_twitter_csv(TWCS))
    seen: list[int] = []

    def stop_after_three_chunks(summary: ct.ImportSummary) -> None:
        seen.append(summary.imported)
        if len(seen) == 3:
            raise KeyboardInterrupt

    db = f"sqlite:///{tmp_path / 'h.db'}"
    with (
        ct.Conversations(db, clock=ct.ManualClock(WALL)) as convs,
        pytest.raises(KeyboardInterrupt),
    ):
        convs.import_history(items, chunk_size=10, progress=stop_after_three_chunks)
    first = seen[-1]
    assert 0 < first < 91
    with ct.Conversations(db, clock=ct.ManualClock(WALL)) as convs:
        again = convs.import_history(items, chunk_size=10)
        assert (again.skipped, again.imported, again.failed) == (first, 91 - first, 2)
        third = convs.import_history(items, chunk_size=25)
        assert (third.skipped, third.imported, third.new_threads) == (91, 0, 0)
        states = [s for t in {convs.find_message("twitter", i.provider_message_id) for i in items}
                  if t is not None for s in [convs.thread_state(t.thread_id)]]  # fmt: skip
        assert sum(s.message_count for s in {s.id: s for s in states}.values()) == 91
        check_store_invariants(convs.store)


def _inbound(pid: str, at: datetime, text: str = "hi", *, reply_to: str | None = None,
             channel: str = "whatsapp") -> ct.Inbound:  # fmt: skip
    return ct.Inbound(
        channel=channel,
        provider_message_id=pid,
        sender=(ct.SenderIdentifier(ct.phone("+447911123456"), ct.Trust.ASSERTED),),
        content=ct.Content(text=text),
        sent_at=at,
        reply_to=reply_to,
    )


def _reply(pid: str, to: str, at: datetime, *, channel: str = "whatsapp") -> ct.HistoryReply:
    return ct.HistoryReply(
        channel=channel,
        provider_message_id=pid,
        reply_to=to,
        sender=ct.Party.parse("agent:sam"),
        content=ct.Content(text="on it"),
        sent_at=at,
    )


def test_event_times_are_message_times_not_the_clock() -> None:
    clock = ct.ManualClock(WALL)
    convs = ct.Conversations("memory://", clock=clock, ids=ct.SequentialIds())
    summary = convs.import_history(
        [
            _inbound("w1", T0),
            _reply("o1", "w1", T0 + timedelta(minutes=5)),
            _inbound("w2", T0 + timedelta(hours=1)),
        ]
    )
    assert (summary.imported, summary.new_threads) == (3, 1)
    thread = convs.find_message("whatsapp", "w1").thread_id  # type: ignore[union-attr]
    assert [e.event.at for e in convs.events(thread)] == [
        T0,  # thread started
        T0,
        T0 + timedelta(minutes=5),
        T0 + timedelta(hours=1),
    ]
    snap = convs.snapshot(thread)
    assert snap.as_of == T0 + timedelta(hours=1)
    assert snap.first_response_seconds == 300
    assert snap.waiting_since == T0 + timedelta(hours=1)
    assert snap.waiting_seconds == 0
    customer = convs.customer(convs.thread_state(thread).customer_id)
    assert customer.state.created_at == T0
    # ingest, by contrast, stamps the clock
    live = convs.ingest(_inbound("w3", T0 + timedelta(hours=2)))
    assert live.event.at == WALL


def test_recency_and_supersession_are_judged_at_message_time() -> None:
    convs = ct.Conversations("memory://", clock=ct.ManualClock(WALL), ids=ct.SequentialIds())
    later = T0 + timedelta(days=2)  # beyond the 24-hour window
    convs.import_history([_inbound("w1", T0), _inbound("w2", T0 + timedelta(hours=3)),
                          _inbound("w3", later)])  # fmt: skip
    one = convs.find_message("whatsapp", "w1")
    two = convs.find_message("whatsapp", "w2")
    three = convs.find_message("whatsapp", "w3")
    assert one and two and three
    assert one.thread_id == two.thread_id != three.thread_id
    old = convs.thread_state(one.thread_id)
    assert old.status is ct.ThreadStatus.RESOLVED
    assert old.status_changed_at == later  # superseded when the new message was sent


def test_handoff_rules_are_not_triggered_by_the_past() -> None:
    rule = [ct.MovedToChannel(target="queue:voice", channel="voice")]
    past = [_inbound("w1", T0), _inbound("c1", T0 + timedelta(minutes=3), channel="voice")]
    convs = ct.Conversations("memory://", clock=ct.ManualClock(WALL), handoff_rules=rule)
    assert convs.import_history(past).imported == 2
    thread = convs.find_message("voice", "c1").thread_id  # type: ignore[union-attr]
    assert convs.thread_state(thread).pending is None
    # the same messages ingested live do trigger the rule
    live = ct.Conversations("memory://", clock=ct.ManualClock(WALL), handoff_rules=rule)
    results = live.ingest_many(past)
    assert results[1].handoff is not None


def test_a_message_older_than_its_thread_is_refused_and_the_rest_goes_in() -> None:
    convs = ct.Conversations("memory://", clock=ct.ManualClock(WALL))
    summary = convs.import_history(
        [
            _inbound("w1", T0 + timedelta(hours=1)),
            _inbound("w0", T0, reply_to="w1"),  # older than the thread it continues
            _reply("o1", "w1", T0 + timedelta(minutes=30)),  # older too
            _reply("o2", "w1", T0 + timedelta(hours=2)),
            _reply("o3", "nope", T0 + timedelta(hours=2)),
        ]
    )
    assert (summary.imported, summary.failed) == (2, 3)
    assert [(f.index, f.error) for f in summary.failures] == [
        (1, "OutOfOrderError"),
        (2, "OutOfOrderError"),
        (4, "NotFound"),
    ]
    assert "import history oldest first" in summary.failures[0].reason
    assert convs.find_message("whatsapp", "w0") is None
    assert convs.find_message("whatsapp", "o1") is None
    assert convs.find_message("whatsapp", "o2") is not None
    assert issubclass(OutOfOrderError, ValidationError)
    check_store_invariants(convs.store)


def test_results_that_are_not_messages_are_counted_as_ignored() -> None:
    convs = ct.Conversations("memory://")
    status = ct.StatusReport(
        channel="whatsapp", provider_message_id="x", status=ct.DeliveryStatus.READ, at=T0
    )
    summary = convs.import_history([status, _inbound("w1", T0), "junk"])  # type: ignore[list-item]
    assert (summary.read, summary.imported, summary.ignored, summary.failed) == (3, 1, 1, 1)
    assert summary.ignored_kinds == {"status": 1}
    with pytest.raises(ValidationError):
        convs.import_history([], chunk_size=0)
    for not_a_list in (b"payload", "payload", {"k": "v"}):
        with pytest.raises(ValidationError, match="must be an iterable"):
            convs.import_history(not_a_list)  # type: ignore[arg-type]


def test_the_async_service_imports_alike() -> None:
    items = [_inbound("w1", T0), _reply("o1", "w1", T0 + timedelta(minutes=1)),
             _reply("o9", "zz", T0 + timedelta(minutes=2))]  # fmt: skip

    async def go() -> ct.ImportSummary:
        async with ct.AsyncConversations("memory://") as convs:
            first = await convs.import_history(items)
            assert first.imported == 2
            return await convs.import_history(items)

    again = asyncio.run(go())
    assert (again.skipped, again.imported, again.failed) == (2, 0, 1)


@given(st.permutations(range(6)), st.lists(st.integers(0, 50), min_size=6, max_size=6))
def test_history_order_puts_replies_after_what_they_answer(perm, minutes) -> None:
    # a chain m0 <- m1 <- m2 and two more roots; timestamps arbitrary
    parents = {1: 0, 2: 1, 4: 3}
    items = [
        _inbound(f"m{i}", T0 + timedelta(minutes=minutes[i]),
                 reply_to=f"m{parents[i]}" if i in parents else None)
        for i in perm
    ]  # fmt: skip
    ordered = [int(i.provider_message_id[1:]) for i in ct.history_order(items)]
    assert sorted(ordered) == list(range(6))
    for child, parent in parents.items():
        assert ordered.index(parent) < ordered.index(child)
    roots = [i for i in ordered if i not in parents]
    assert [minutes[i] for i in roots] == sorted(minutes[i] for i in roots)


# --------------------------------------------------------------------------- readers, CLI


def _whatsapp_envelope(wamid: str, at: datetime, text: str) -> str:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "441234567890", "phone_number_id": "1"},
        "contacts": [{"profile": {"name": "Dana"}, "wa_id": "447911123456"}],
        "messages": [{"from": "447911123456", "id": wamid, "timestamp": str(int(at.timestamp())),
                      "text": {"body": text}, "type": "text"}],
    }  # fmt: skip
    change = {"value": value, "field": "messages"}
    envelope = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change]}]}
    return json.dumps(envelope)


def run_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(args), out=out), out.getvalue()


def test_cli_imports_whatsapp_payloads_and_a_rerun_skips_them(tmp_path, capsys) -> None:
    lines = tmp_path / "payloads.jsonl"
    lines.write_text(
        _whatsapp_envelope("wamid.1", T0 + timedelta(minutes=9), "second")
        + "\n{not json\n\n"
        + _whatsapp_envelope("wamid.0", T0, "first")
        + "\n",
        encoding="utf-8",
    )
    db = str(tmp_path / "h.db")
    status, text = run_cli("import", str(lines), "--channel", "whatsapp", "--store", db)
    assert status == 3  # one line could not be read
    assert "read 3: imported 2, skipped 0 (already in), failed 1" in text
    assert "(payloads.jsonl:2): ParseError" in text
    assert capsys.readouterr().err == ""  # no progress bar when stderr is not a terminal
    status, text = run_cli("import", str(lines), "--channel", "whatsapp", "--store", db, "--json")
    summary = json.loads(text)
    assert (summary["imported"], summary["skipped"], summary["failed"]) == (0, 2, 1)
    with ct.Conversations(SQLiteStore(db)) as convs:
        loc = convs.find_message("whatsapp", "wamid.0")
        assert loc is not None
        # sorted oldest first, whatever the file's order
        assert [e.event.at for e in convs.events(loc.thread_id)][1:] == [
            T0,
            T0 + timedelta(minutes=9),
        ]


@needs_twcs
def test_cli_imports_the_twitter_csv(tmp_path) -> None:
    db = str(tmp_path / "t.db")
    status, text = run_cli("import", str(TWCS), "--store", db, "--chunk-size", "7")
    assert status == 3
    assert "read 93: imported 91, skipped 0 (already in), failed 2, ignored 0; 29 new" in text
    assert "it answers twitter message '119247', which is not in the store" in text
    status, text = run_cli("import", str(TWCS), "--store", db, "--json")
    assert json.loads(text)["skipped"] == 91


def test_cli_imports_a_folder_of_raw_emails(tmp_path) -> None:
    folder = tmp_path / "mail"
    folder.mkdir()
    first = (
        "From: Dana <dana@example.com>\r\nTo: help@acme.example\r\nSubject: Order 1\r\n"
        "Date: Mon, 06 May 2024 09:00:00 +0000\r\nMessage-ID: <a1@example.com>\r\n\r\nHello\r\n"
    )
    second = (
        "From: Dana <dana@example.com>\r\nTo: help@acme.example\r\nSubject: Re: Order 1\r\n"
        "Date: Mon, 06 May 2024 10:00:00 +0000\r\nMessage-ID: <a2@example.com>\r\n"
        "In-Reply-To: <a1@example.com>\r\n\r\nStill there?\r\n"
    )
    (folder / "b.eml").write_text(second, encoding="utf-8")
    (folder / "a.eml").write_text(first, encoding="utf-8")
    db = str(tmp_path / "m.db")
    status, text = run_cli("import", str(folder), "--store", db)
    assert status == 0, text
    assert "imported 2" in text and "1 new threads" in text
    with ct.Conversations(SQLiteStore(db)) as convs:
        loc = convs.find_message("email", "a2@example.com")
        assert loc is not None
        snap = convs.snapshot(loc.thread_id)
        assert snap.as_of == T0 + timedelta(hours=1)
        assert snap.waiting_seconds == 3600
    assert [i.provider_message_id for i in read_email_folder(folder)] == [  # type: ignore[union-attr]
        "a1@example.com",
        "a2@example.com",
    ]


def test_readers_refuse_what_they_cannot_read(tmp_path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ValidationError, match="no time of their own"):
        list(read_jsonl(path, "sms"))
    bad = tmp_path / "bad.csv"
    bad.write_text("tweet_id,text\n1,hi\n", encoding="utf-8")
    with pytest.raises(ValidationError, match="author_id"):
        list(read_twitter_csv(bad))
    assert main(["import", str(tmp_path / "missing.jsonl"), "--store", "memory://"]) == 1


def test_progress_bar_draws_counts_on_one_line() -> None:
    stream = io.StringIO()
    bar = _ProgressBar(stream, total=10, width=10)
    bar(ct.ImportSummary(read=5, imported=4, skipped=1))
    bar.end()
    assert stream.getvalue() == ("\rimporting [#####-----] 5/10 (4 new, 1 already in, 0 failed)\n")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_cli_interrupted_then_rerun_resumes_with_a_progress_bar(tmp_path, monkeypatch) -> None:
    lines = tmp_path / "p.jsonl"
    lines.write_text(
        "".join(
            _whatsapp_envelope(f"wamid.{i}", T0 + timedelta(minutes=i), f"m{i}") + "\n"
            for i in range(5)
        ),
        encoding="utf-8",
    )
    db = str(tmp_path / "i.db")
    real = ct.Conversations.import_history

    def interrupted(self, messages, *, chunk_size, progress):  # type: ignore[no-untyped-def]
        def then_stop(summary: ct.ImportSummary) -> None:
            progress(summary)
            raise KeyboardInterrupt

        return real(self, messages, chunk_size=chunk_size, progress=then_stop)

    err = _Terminal()
    monkeypatch.setattr("sys.stderr", err)
    with monkeypatch.context() as patch:
        patch.setattr(ct.Conversations, "import_history", interrupted)
        status, _text = run_cli(
            "import", str(lines), "--channel", "whatsapp", "--store", db, "--chunk-size", "2"
        )
    assert status == 130
    assert "\rimporting [############------------------] 2/5 (2 new" in err.getvalue()
    assert "interrupted after 2 of 5 messages (2 imported); run the same command again" in (
        err.getvalue()
    )
    status, text = run_cli("import", str(lines), "--channel", "whatsapp", "--store", db)
    assert status == 0
    assert "read 5: imported 3, skipped 2 (already in), failed 0" in text
    assert err.getvalue().rstrip("\n").endswith("5/5 (3 new, 2 already in, 0 failed)")
