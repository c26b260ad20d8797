"""Replay of real customer-support tweets: each customer's mentions and the brand's
replies, joined through ``in_response_to_tweet_id``, end up in the threads the chain
implies (tests/corpora/twitter/README.md gives the data's provenance)."""

from __future__ import annotations

import csv
import heapq
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import pytest

import convthread as ct
from convthread.domain.continuity import ContinuityPolicy
from tests._thread_util import check_store_invariants

CSV = Path(__file__).parent / "corpora" / "twitter" / "twcs_sample.csv"


def load() -> dict[str, dict[str, str]]:
    with CSV.open(newline="", encoding="utf-8") as f:
        return {row["tweet_id"]: row for row in csv.DictReader(f)}


def when(row: dict[str, str]) -> datetime:
    return datetime.strptime(row["created_at"], "%a %b %d %H:%M:%S %z %Y")


def replay_order(rows: dict[str, dict[str, str]]) -> list[str]:
    """Parents before replies, otherwise by time (a few replies predate their parent's
    timestamp in the data)."""
    children: dict[str, list[str]] = defaultdict(list)
    heap: list[tuple[datetime, str]] = []
    for tid, row in rows.items():
        parent = row["in_response_to_tweet_id"]
        if parent in rows:
            children[parent].append(tid)
        else:
            heapq.heappush(heap, (when(row), tid))
    order: list[str] = []
    while heap:
        _t, tid = heapq.heappop(heap)
        order.append(tid)
        for child in children[tid]:
            heapq.heappush(heap, (when(rows[child]), child))
    assert len(order) == len(rows)
    return order


@pytest.mark.parametrize("strict", [True, False], ids=["references-only", "default-policy"])
def test_twitter_chains_become_threads(store_factory, ids, strict: bool) -> None:
    rows = load()
    assert len(rows) == 93
    # references-only: no recency and no reopening, so only explicit references can join
    # two tweets; the default policy must give the same threads on this data.
    policy = (
        ContinuityPolicy(window=timedelta(0), reopen_window=timedelta(0))
        if strict
        else ContinuityPolicy()
    )
    clock = ct.ManualClock()
    convs = ct.Conversations(store_factory(), clock=clock, ids=ids, continuity=policy)
    owner: dict[str, str] = {}  # tweet -> customer author id it belongs to
    placed: dict[str, str] = {}  # tweet -> thread id
    skipped: list[str] = []
    decisions: dict[str, ct.Decision] = {}
    for tid in replay_order(rows):
        row = rows[tid]
        parent = row["in_response_to_tweet_id"] or None
        clock.set(when(row))
        if row["inbound"] == "True":
            r = convs.ingest(
                ct.Inbound(
                    channel="twitter",
                    provider_message_id=tid,
                    sender=(
                        ct.SenderIdentifier(
                            ct.handle("twitter", row["author_id"]), ct.Trust.ASSERTED
                        ),
                    ),
                    content=ct.Content(text=row["text"]),
                    sent_at=when(row),
                    reply_to=parent,
                )
            )
            owner[tid] = row["author_id"]
            placed[tid] = r.thread_id
            decisions[tid] = r.decision
        else:
            # A brand reply is an outbound send on the thread of the tweet it answers.
            loc = convs.find_message("twitter", parent) if parent else None
            if loc is None:
                skipped.append(tid)  # it answers a tweet outside the sample
                continue
            s = convs.send(
                loc.thread_id,
                row["text"],
                sender=f"agent:{row['author_id']}",
                channel="twitter",
                provider_message_id=tid,
                reply_to=parent,
            )
            assert s.thread_id == loc.thread_id
            owner[tid] = owner[parent]  # type: ignore[index]
            placed[tid] = s.thread_id
    assert sorted(skipped) == ["119246", "119332"]

    # The threads the chain implies: union of each tweet with the tweet it answers, when
    # both were replayed and belong to the same customer.
    group = {tid: tid for tid in placed}

    def find(x: str) -> str:
        while group[x] != x:
            group[x] = group[group[x]]
            x = group[x]
        return x

    for tid in placed:
        parent = rows[tid]["in_response_to_tweet_id"]
        if parent in placed and owner[parent] == owner[tid]:
            group[find(tid)] = find(parent)
    expected: dict[str, set[str]] = defaultdict(set)
    actual: dict[str, set[str]] = defaultdict(set)
    for tid, thread in placed.items():
        expected[find(tid)].add(tid)
        actual[thread].add(tid)
    assert sorted(map(sorted, actual.values())) == sorted(map(sorted, expected.values()))
    assert len(actual) == 29

    # Each thread is one customer's; replies joined by explicit reference, with a reason.
    for thread, tweets in actual.items():
        state = convs.thread_state(thread)
        assert len({owner[t] for t in tweets}) == 1
        assert state.message_count == len(tweets)
    for tid, decision in decisions.items():
        parent = rows[tid]["in_response_to_tweet_id"]
        if parent in placed and owner[parent] == owner[tid] and strict:
            assert decision.rule == "explicit_reference", (tid, decision)
            assert parent in decision.reason
        assert decision.reason
    # A customer replying to another customer's tweet does not join their thread.
    assert placed["119249"] != placed["119250"]
    # The timeline of a thread is in channel time, whatever the replay order.
    tl = convs.timeline(placed["119241"])
    assert [e.provider_message_id for e in tl] == [
        "119242",
        "119240",
        "119241",
        "119243",
        "119244",
        "119245",
    ]
    check_store_invariants(convs.store)
