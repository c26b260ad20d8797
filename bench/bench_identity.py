"""Identity benchmark: resolving a known identifier among 1,000,000, and building 1.2M
links with 200k merges, next to a plain union-find baseline, in one run.

    .venv/bin/python bench/bench_identity.py            # full sizes (several minutes)
    .venv/bin/python bench/bench_identity.py --quick    # small sizes, a smoke test

What is measured (all in one process, memory store):

1. **Resolve.** A memory store holding N identifiers (N = 1,000,000), each linked to a
   customer, is filled through the store protocol in bulk (``Store.commit`` of the same
   ``ident`` and ``customer`` entries the service writes; building it through ``ingest``
   would take many minutes and measure ingest, not resolution). Then, per call and for
   random known identifiers: ``Conversations.find_customer`` (normalize, index lookup,
   decode) and the resolution step of ``ingest`` (``resolve_sender``: index lookups,
   customer state decode, the merge policy and the pure ``resolve``). p50 and p99 in
   microseconds.
2. **Build.** The same workload four ways: 1,000,000 links that each create a customer,
   200,000 links that attach a new identifier to an existing customer, then 200,000
   merges of the customers owning two random identifiers (skipped when already one).
   * ``union-find``: a plain dict-based union-find with path halving and union by size;
   * ``IdentityGraph``: convthread's whole-graph structure (``convthread.IdentityGraph``)
     under the default ``MergePolicy``, through its bulk calls (``add_customers``,
     ``link_all``, ``merge_all``): every link and merge checked against the policy
     (blocklist, per-kind limits, verified account ids) and kept so that ``unmerge`` can
     undo it, told the number of identifiers to expect (``capacity``). This is the row
     the aims apply to; the same without ``capacity`` is printed under it;
   * ``domain fold``: the identity graph as convthread's pure domain keeps it: each link
     an ``IdentifierLinked`` event folded into a ``CustomerState``, each merge checked
     against the ``MergePolicy`` and folded as ``CustomerMerged`` on both customers,
     plus the identifier -> customer index (no store, no encoding);
   * ``service``: ``Conversations.ingest`` / ``link`` / ``merge`` through the memory
     store, at a reduced scale (``--service-scale``, default 1/50 of the full sizes)
     because every operation is an event-sourced transaction (encode events and cached
     states, compare-and-set commit, thread reassignment); its per-operation costs are
     printed and extrapolated to the full sizes, marked as such.
   Time is measured without tracemalloc; peak memory in a second, identical run under
   tracemalloc.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from datetime import datetime, timezone
from typing import cast

import convthread as ct
from convthread.codec import encode
from convthread.domain.events import CustomerCreated, CustomerMerged, IdentifierLinked
from convthread.domain.merge import MergePolicy
from convthread.domain.model import Identifier, Inbound, SenderIdentifier, Trust
from convthread.domain.thread import CustomerState, evolve_customer
from convthread.ports import Batch, Put
from convthread.service._core import NS_CUSTOMER, NS_IDENT, IdentRef
from convthread.service._drivers import run_sync
from convthread.service._identity import resolve_sender
from convthread.service._write import Overlay
from convthread.stores import MemoryStore

KIND = "member"  # a custom kind: no per-kind limit, trivial normalizer
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
MiB = 1024 * 1024


def registry() -> ct.IdentifierRegistry:
    reg = ct.IdentifierRegistry()
    reg.register(KIND, lambda raw, scope: raw)
    return reg


def ident(i: int) -> Identifier:
    return Identifier(KIND, f"m{i:08d}")


def p99(samples: list[int]) -> float:
    return pct(samples, 0.99)


def pct(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] / 1000.0


# --------------------------------------------------------------------------- resolve


def bench_resolve(n: int, samples: int, repeats: int) -> None:
    store = MemoryStore()
    state_bytes = {}
    chunk = 20_000
    for start in range(0, n, chunk):
        puts = []
        for i in range(start, min(n, start + chunk)):
            key = ident(i).key
            cid = f"cu_{i:08d}"
            state = CustomerState(
                id=cid,
                version=2,
                created_at=T0,
                identifiers={key: (ident(i), Trust.ASSERTED)},
            )
            puts.append(Put(NS_IDENT, key, encode(IdentRef(cid))))
            puts.append(Put(NS_CUSTOMER, cid, encode(state)))
            if i == 0:
                state_bytes["customer"] = len(puts[-1].value)
        store.commit(Batch(puts=tuple(puts)))
    convs = ct.Conversations(store, identifiers=registry())
    config = convs.config
    reg = config.identifiers
    rng = random.Random(1)
    raws = [f"m{rng.randrange(n):08d}" for _ in range(samples)]
    picks = [ident(int(r[1:])) for r in raws]
    clock = time.perf_counter_ns
    # As a channel adapter hands it over: normalized by the registry (untimed), then
    # resolved (timed).
    # Several rounds over the same samples; the round with the lowest p99 is reported
    # (this machine shares its cores: a neighbour's burst lands in one round's tail).
    rounds: list[list[int]] = []
    for _round in range(repeats):
        timings: list[int] = []
        for raw in raws:
            identifier = reg.normalize(KIND, raw)  # just handed over: not timed
            t = clock()
            convs.find_customer(identifier)
            timings.append(clock() - t)
        rounds.append(timings)
    find = min(rounds, key=p99)
    # The same from the raw value: normalization (a miss for most of these values:
    # 200,000 random picks among 1,000,000) plus resolution.
    fresh = ct.Conversations(store, identifiers=registry())
    from_raw: list[int] = []
    for raw in raws:
        t = clock()
        fresh.find_customer(fresh.config.identifiers.normalize(KIND, raw))
        from_raw.append(clock() - t)
    step: list[int] = []
    for p in picks:
        sender = (SenderIdentifier(p, Trust.ASSERTED),)
        t = clock()
        run_sync(store, lambda s=sender: resolve_sender(config, s, Overlay()), 0)
        step.append(clock() - t)
    print(f"resolve a known identifier among {n:,} (memory store, {samples:,} samples)")
    print(
        f"  find_customer          p50 {pct(find, 0.50):6.2f} us   p99 {pct(find, 0.99):6.2f} us"
        f"   (aim: p99 <= 5 us; the identifier as an adapter hands it over;"
        f" best of {repeats} rounds, p99 of each: "
        + ", ".join(f"{pct(r, 0.99):.2f}" for r in rounds)
        + ")"
    )
    print(
        f"  normalize + find       p50 {pct(from_raw, 0.50):6.2f} us   p99 "
        f"{pct(from_raw, 0.99):6.2f} us   (from the raw value, first sight of most)"
    )
    print(
        f"  ingest resolution step p50 {pct(step, 0.50):6.2f} us   p99 {pct(step, 0.99):6.2f} us"
        "   (index + customer state + policy + resolve)"
    )
    store.close()


# --------------------------------------------------------------------------- workload


class Workload:
    def __init__(self, creates: int, attaches: int, merges: int, seed: int = 7) -> None:
        rng = random.Random(seed)
        self.creates = creates
        self.attaches = [(creates + k, rng.randrange(creates)) for k in range(attaches)]
        total = creates + attaches
        self.merges = [(rng.randrange(total), rng.randrange(total)) for _ in range(merges)]

    @property
    def links(self) -> int:
        return self.creates + len(self.attaches)


def union_find(w: Workload) -> int:
    parent: dict[str, str] = {}
    size: dict[str, int] = {}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> bool:
        ra, rb = find(a), find(b)
        if ra == rb:
            return False
        if size[ra] < size[rb]:
            ra, rb = rb, ra
        parent[rb] = ra
        size[ra] += size[rb]
        return True

    for i in range(w.creates):
        k = ident(i).key
        parent[k] = k
        size[k] = 1
    for new, existing in w.attaches:
        k = ident(new).key
        parent[k] = k
        size[k] = 1
        union(k, ident(existing).key)
    merged = 0
    for a, b in w.merges:
        merged += union(ident(a).key, ident(b).key)
    return merged


def identity_graph(w: Workload, *, sized: bool = True) -> int:
    """The workload through ``IdentityGraph``'s bulk calls (identifiers generated lazily,
    as a caller streaming a contact base would). ``sized``: the graph is told how many
    identifiers to expect (``capacity``), as an import that knows its row count would."""
    graph = ct.IdentityGraph(MergePolicy(), capacity=w.links if sized else 0)
    graph.add_customers(ident(i) for i in range(w.creates))
    attached = graph.link_all((ident(existing), ident(new)) for new, existing in w.attaches)
    merged = graph.merge_all((ident(a), ident(b)) for a, b in w.merges)
    assert not attached.refused and not merged.refused
    return merged.applied


def domain_fold(w: Workload) -> int:
    """The identity graph as the pure domain keeps it (events folded into states)."""
    policy = MergePolicy()
    owner: dict[str, str] = {}
    states: dict[str, CustomerState] = {}
    trust = Trust.ASSERTED
    for i in range(w.creates):
        idn = ident(i)
        cid = f"cu_{i:08d}"
        st = evolve_customer(None, cid, 1, CustomerCreated(at=T0))
        st = evolve_customer(st, cid, 2, IdentifierLinked(at=T0, identifier=idn, trust=trust))
        states[cid] = st
        owner[idn.key] = cid
    for new, existing in w.attaches:
        idn = ident(new)
        cid = owner[ident(existing).key]
        st = states[cid]
        if policy.link_refusal(st.identifiers, idn, trust) is None:
            states[cid] = evolve_customer(
                st, cid, st.version + 1, IdentifierLinked(at=T0, identifier=idn, trust=trust)
            )
            owner[idn.key] = cid
    merged = 0
    for n, (a, b) in enumerate(w.merges):
        ca, cb = owner.get(ident(a).key), owner.get(ident(b).key)
        if ca is None or cb is None or ca == cb:
            continue
        sa, sb = states[ca], states[cb]
        if policy.hard_violations(sa, sb):
            continue
        s_id, x_id = policy.choose_survivor(sa, sb)
        survivor, absorbed = states[s_id], states[x_id]
        moved = tuple(absorbed.identifiers.values())
        event = CustomerMerged(
            at=T0, merge_id=f"mg_{n}", survivor=s_id, absorbed=x_id, identifiers=moved
        )
        states[s_id] = evolve_customer(survivor, s_id, survivor.version + 1, event)
        states[x_id] = evolve_customer(absorbed, x_id, absorbed.version + 1, event)
        for idn, _t in moved:
            owner[idn.key] = s_id
        merged += 1
    return merged


def service_build(w: Workload) -> tuple[int, dict[str, float]]:
    clock = ct.ManualClock(T0)
    convs = ct.Conversations(
        MemoryStore(), clock=clock, ids=ct.SequentialIds(width=8), identifiers=registry()
    )
    phases: dict[str, float] = {}
    t = time.perf_counter()
    for i in range(w.creates):
        convs.ingest(
            Inbound(
                channel="app",
                provider_message_id=str(i),
                sender=(SenderIdentifier(ident(i), Trust.ASSERTED),),
                sent_at=T0,
            )
        )
    phases["ingest (new customer + link + thread)"] = (time.perf_counter() - t) / w.creates
    t = time.perf_counter()
    for new, existing in w.attaches:
        cid = convs.find_customer(ident(existing))
        assert cid is not None
        convs.link(cid, ident(new), trust=Trust.ASSERTED)
    phases["link"] = (time.perf_counter() - t) / max(1, len(w.attaches))
    t = time.perf_counter()
    merged = 0
    for a, b in w.merges:
        ca, cb = convs.find_customer(ident(a)), convs.find_customer(ident(b))
        if ca is None or cb is None or ca == cb:
            continue
        convs.merge(ca, cb)
        merged += 1
    phases["merge (incl. thread moves)"] = (time.perf_counter() - t) / max(1, len(w.merges))
    convs.close()
    return merged, phases


def measure(fn: Callable[[], object]) -> tuple[float, float, object]:
    elapsed, result = timed(fn)
    return elapsed, peak_of(fn), result


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    gc.collect()
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def peak_of(fn: Callable[[], object]) -> float:
    """Peak MiB allocated while ``fn`` runs (a separate run: tracemalloc slows it)."""
    gc.collect()
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / MiB


def compared(
    fns: dict[str, Callable[[], object]], repeats: int
) -> dict[str, tuple[float, list[float], float, object]]:
    """Run ``fns`` in turn, ``repeats`` rounds (alternating, so a slow spell of this
    shared machine hits each alike): per name, the best time, every time, the peak MiB
    and the result."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    results: dict[str, object] = {}
    for _round in range(repeats):
        for name, fn in fns.items():
            elapsed, results[name] = timed(fn)
            times[name].append(elapsed)
    return {
        name: (min(times[name]), times[name], peak_of(fn), results[name])
        for name, fn in fns.items()
    }


def bench_build(creates: int, attaches: int, merges: int, scale: int, repeats: int) -> None:
    full = Workload(creates, attaches, merges)
    print(
        f"\nbuild {full.links:,} links ({creates:,} new customers + {attaches:,} attached) "
        f"with {merges:,} merge attempts"
    )
    rows = compared(
        {
            "union-find (baseline)": lambda: union_find(full),
            "IdentityGraph": lambda: identity_graph(full),
            "  same, no capacity": lambda: identity_graph(full, sized=False),
        },
        repeats,
    )
    print(f"  (time: best of {repeats} alternating rounds; every round in brackets)")
    uf_time, _all, uf_peak, _merged = rows["union-find (baseline)"]
    for name, (best, every, peak, merged) in rows.items():
        versus = (
            f"   {best / uf_time:.2f}x time, {peak / uf_peak:.2f}x memory of union-find"
            if best != uf_time
            else ""
        )
        print(
            f"  {name:22s} {best:8.2f} s   peak {peak:8.1f} MiB   merges {merged:,}{versus}"
            f"   [{', '.join(f'{t:.2f}' for t in every)}]"
        )
    g_time, _all, g_peak, _merged = rows["IdentityGraph"]
    d_time, d_peak, d_merged = measure(lambda: domain_fold(full))
    print(
        f"  domain fold             {d_time:8.2f} s   peak {d_peak:8.1f} MiB   merges {d_merged:,}"
        f"   ({d_time / uf_time:.1f}x time, {d_peak / uf_peak:.1f}x memory of union-find)"
    )
    small = Workload(creates // scale, attaches // scale, merges // scale)
    s_time, s_peak, s_result = measure(lambda: service_build(small))
    s_merged, phases = cast(tuple[int, dict[str, float]], s_result)
    print(
        f"  service, 1/{scale} scale   {s_time:8.2f} s   peak {s_peak:8.1f} MiB   merges {s_merged:,}"
        f"   ({small.links:,} links, {len(small.merges):,} merge attempts)"
    )
    for name, per_op in phases.items():
        print(f"      {name:40s} {per_op * 1e6:8.1f} us/op")
    est_time = s_time * scale
    est_peak = s_peak * scale
    print(
        f"  service, full size      ~{est_time:7.0f} s   ~{est_peak:7.0f} MiB"
        "   EXTRAPOLATED linearly from the 1/{0} run, not measured".format(scale)
    )
    print(
        f"  aims (IdentityGraph row): within 1.2x of union-find ({1.2 * uf_time:.2f} s): "
        f"{'met' if g_time <= 1.2 * uf_time else 'NOT met'}; under 150 MiB: "
        f"{'met' if g_peak < 150 else 'NOT met'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument(
        "--service-scale", type=int, default=50, help="run the service build at 1/N size"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of the compared measurements"
    )
    args = parser.parse_args()
    div = 100 if args.quick else 1
    print(f"python {sys.version.split()[0]}, convthread {ct.__version__}")
    bench_resolve(1_000_000 // div, 200_000 // div, args.repeats)
    bench_build(
        1_000_000 // div,
        200_000 // div,
        200_000 // div,
        args.service_scale if not args.quick else 5,
        args.repeats,
    )


if __name__ == "__main__":
    main()
