"""The whole identity graph at once, in compact arrays, under a merge policy.

The service keeps each customer as its own event-sourced state and reads customers one at
a time, by identifier. Some jobs need every customer at once: planning the import of an
existing contact base (a million contacts, their duplicates merged under the same
:class:`~convthread.MergePolicy` before anything is written), checking a list of merges
against the policy, or answering "which customer holds this?" for bulk data.
:class:`IdentityGraph` does these in about 120 bytes per identifier.

How it is kept:

* identifiers are interned into an open-addressing hash table (an ``array`` of ints
  pointing into a list of values), so a lookup costs no object per entry;
* each identifier's kind, trust, and the customer it was linked to are machine integers
  in ``array`` columns, and so are each customer's merge pointer and its per-kind counts
  (what the policy's limits need);
* a merge sets one pointer (the absorbed customer's identifiers stay linked to it and are
  found through the survivor); ``unmerge`` clears that pointer, so it gives back exactly
  the customers as they were, with whatever was linked to each since. An identifier
  unlinked since the merge is not given back, and one linked after it (again, perhaps)
  was linked to the survivor and stays there: the rule of ``Conversations.unmerge``
  (:func:`~convthread.domain.merge.unmerge_keys`).

Customers are numbers ``0, 1, 2, ...`` in creation order, so "oldest" is the lowest
number; map them to your own ids (or to new customer ids when you write the result).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
from itertools import islice, repeat
from operator import add, and_, length_hint, mul
from typing import Final

import msgspec

from convthread.domain.merge import MergePolicy, SurvivorRule
from convthread.domain.model import Identifier, IdentifierKind, Trust
from convthread.errors import NotFound, PolicyViolation, ValidationError

__all__ = ["BulkReport", "IdentityGraph"]

_NONE: Final = -1
_TRUSTS: Final = (Trust.CLAIMED, Trust.ASSERTED, Trust.VERIFIED)
_VERIFIED: Final = 2
_FIRST_CAPACITY: Final = 1 << 12
_SPREAD: Final = 1_000_003  # separates equal values of different kinds in the table
_CHUNK: Final = 1 << 16  # identifiers taken from an iterable at a time by add_customers


class BulkReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a bulk operation of :class:`IdentityGraph` did."""

    applied: int
    #: operations that changed nothing (already linked at that trust; already one customer)
    unchanged: int
    #: ``(index in the input, reason)`` of each operation the graph refused
    refused: tuple[tuple[int, str], ...] = ()


class IdentityGraph:
    """Every customer's identifiers, trust and merges, in arrays, under ``policy``.

    Links and merges are checked exactly as the service checks them: blocklisted values
    are never linked, per-kind limits and the limit on verified account ids hold for
    every customer, and an identifier belongs to one customer at a time. A refused
    operation raises :class:`~convthread.PolicyViolation` and changes nothing.

    The survivor of a merge follows the policy's named rule (``oldest``: the lower
    number; ``most_identifiers``; ``most_trusted``). A custom survivor callable needs
    the customers' full states, which this graph does not keep: it is refused.
    """

    __slots__ = (
        "_child",
        "_count",
        "_head",
        "_into",
        "_is_account",
        "_kind",
        "_limit_counts",
        "_limit_kinds",
        "_limit_of",
        "_limits",
        "_linked",
        "_mask",
        "_max_verified",
        "_may_block",
        "_next",
        "_oldest",
        "_owner",
        "_per_kind",
        "_rank",
        "_sibling",
        "_space_code",
        "_spaces",
        "_table",
        "_totals",
        "_trust",
        "_up",
        "_values",
        "_verified",
        "policy",
    )

    def __init__(self, policy: MergePolicy | None = None, *, capacity: int = 0) -> None:
        """``capacity``: the number of identifiers you expect, if you know it. The
        table is then sized once, instead of growing (and rehashing) on the way; it
        still grows past it."""
        self.policy = MergePolicy() if policy is None else policy
        if not isinstance(capacity, int) or capacity < 0:
            raise ValidationError(f"capacity must be a non-negative int, not {capacity!r}")
        rule = self.policy.survivor
        if not isinstance(rule, SurvivorRule):
            raise ValidationError(
                "IdentityGraph supports the named survivor rules (oldest, most_identifiers, "
                "most_trusted), not a custom callable: it keeps no customer states to pass it"
            )
        # Interned identifiers: an open-addressing table of indexes into the columns.
        size = _FIRST_CAPACITY
        while size < 2 * capacity:
            size *= 2
        self._table = array("i", [_NONE]) * size
        self._mask = size - 1
        self._values: list[str] = []
        self._kind = array("H")  # index into _spaces: (kind, scope)
        self._owner = array("i")  # the customer it is linked to; _NONE once unlinked
        self._trust = array("b")  # Trust rank
        self._next = array("i")  # the next identifier linked to the same customer
        self._linked = 0
        self._spaces: list[tuple[str, str]] = []
        self._space_code: dict[str, dict[str, int]] = {}  # kind -> scope -> space
        self._limit_of: list[int] = []  # per space: index into _limits, or _NONE
        self._may_block: list[bool] = []  # per space: can the blocklist refuse one
        self._is_account: list[bool] = []
        # Customers. _into is the merge record (absorbed -> survivor, or itself);
        # _up the same forest with paths halved, for fast finds; reset after an unmerge.
        self._up = array("i")
        self._into = array("i")
        self._head = array("i")  # first identifier linked to this customer
        self._child = array("i")  # first customer merged into this one
        self._sibling = array("i")  # the next customer merged into the same survivor
        # Counts over a customer and everything merged into it (kept on every node of
        # the merge forest, so an unmerge subtracts exactly what it takes away).
        self._limits: list[int] = []
        self._limit_kinds: list[str] = []
        self._per_kind: list[array[int]] = []
        # Copies kept for the merge path (measured: about 3% of a bulk build), derived
        # from _limits/_per_kind and the frozen policy: (limit, its counts) per kind, ...
        self._limit_counts: list[tuple[int, array[int]]] = []
        self._verified = array("i")
        # ... whether the survivor is simply the lower number, and the verified limit.
        self._oldest = rule is SurvivorRule.OLDEST
        self._max_verified = self.policy.max_verified_accounts
        self._count = array("i") if rule is SurvivorRule.MOST_IDENTIFIERS else None
        self._rank = array("i") if rule is SurvivorRule.MOST_TRUSTED else None
        # Every column of totals, which a merge adds up and an unmerge takes apart.
        self._totals: list[array[int]] = [
            column for column in (self._verified, self._count, self._rank) if column is not None
        ]

    # ------------------------------------------------------------------ sizes

    def __len__(self) -> int:
        """The number of linked identifiers."""
        return self._linked

    @property
    def customers(self) -> int:
        """The number of customers ever created (merged ones included)."""
        return len(self._into)

    def __repr__(self) -> str:
        return (
            f"<IdentityGraph: {self._linked:,} identifiers, {len(self._into):,} customers "
            f"({sum(1 for _ in self.survivors()):,} after merges)>"
        )

    def survivors(self) -> Iterator[int]:
        """The customers not merged into another, in order: the result of a plan, one
        per person (with :meth:`identifiers_of` for what each holds)."""
        into = self._into
        return (c for c in range(len(into)) if into[c] == c)

    # ------------------------------------------------------------------ reading

    def customer_of(self, identifier: Identifier) -> int | None:
        """The customer now holding ``identifier`` (the survivor, after merges), or None."""
        root = self._holder(identifier)
        return None if root == _NONE else root

    def trust_of(self, identifier: Identifier) -> Trust | None:
        """The trust ``identifier`` is linked at, or None when it is not linked."""
        j = self._find(identifier)
        if j == _NONE or self._owner[j] == _NONE:
            return None
        return _TRUSTS[self._trust[j]]

    def survivor_of(self, customer: int) -> int:
        """The customer that ``customer`` is part of now (itself unless merged)."""
        self._check(customer)
        return self._root(customer)

    def merged_into(self, customer: int) -> int | None:
        """The customer ``customer`` was merged into directly, or None."""
        self._check(customer)
        into = self._into[customer]
        return None if into == customer else into

    def identifiers_of(self, customer: int) -> list[tuple[Identifier, Trust]]:
        """The identifiers ``customer`` holds now (with those of customers merged into it),
        sorted."""
        self._check(customer)
        out: list[tuple[Identifier, Trust]] = []
        for c in self._members(self._root(customer)):
            j = self._head[c]
            while j != _NONE:
                kind, scope = self._spaces[self._kind[j]]
                out.append((Identifier(kind, self._values[j], scope), _TRUSTS[self._trust[j]]))
                j = self._next[j]
        out.sort()
        return out

    def merge_violations(self, a: int, b: int) -> tuple[str, ...]:
        """What merging the customers of ``a`` and ``b`` would break (empty: nothing)."""
        self._check(a)
        self._check(b)
        return self._violations(a, b, self._root(a), self._root(b))

    def _violations(self, a: int, b: int, ra: int, rb: int) -> tuple[str, ...]:
        if ra == rb:
            return (f"customers {a} and {b} are already one customer ({ra})",)
        out: list[str] = []
        limits = zip(self._limit_kinds, self._limits, self._per_kind, strict=True)
        for kind, limit, counts in limits:
            total = counts[ra] + counts[rb]
            if total > limit:
                out.append(f"{total} {kind} identifiers (limit {limit})")
        verified = self._verified[ra] + self._verified[rb]
        if verified > self.policy.max_verified_accounts:
            out.append(
                f"{verified} verified account ids (limit {self.policy.max_verified_accounts})"
            )
        return tuple(out)

    # ------------------------------------------------------------------ writing

    def new_customer(self) -> int:
        """A new customer with no identifiers; returns its number."""
        c = len(self._into)
        self._grow_customers(1)
        return c

    def add_customers(
        self, identifiers: Iterable[Identifier], *, trust: Trust = Trust.ASSERTED
    ) -> range:
        """One new customer per identifier, each linked at ``trust``: the bulk form of
        :meth:`new_customer` and :meth:`link`. Returns the new customers' numbers, in
        order. All or nothing: if one identifier is refused, nothing is added."""
        rank = _rank(trust)
        first_c = len(self._into)
        first_j = len(self._values)
        linked = self._linked
        relinked: set[int] = set()  # identifiers unlinked before, linked again by this call
        self._reserve(first_j + length_hint(identifiers))  # a sized input: one growth
        source = iter(identifiers)
        try:
            while chunk := list(islice(source, _CHUNK)):
                self._add_chunk(chunk, trust, rank, first_j, relinked)
        except BaseException:
            for j in relinked:
                self._owner[j] = _NONE
            self._truncate(first_j, first_c)
            self._linked = linked
            raise
        return range(first_c, len(self._into))

    def _add_chunk(
        self, chunk: list[Identifier], trust: Trust, rank: int, since: int, relinked: set[int]
    ) -> None:
        """Add one chunk of an ``add_customers`` call that started at identifier ``since``
        (``relinked``: what the call linked again, so far)."""
        first_j = len(self._values)
        first_c = len(self._into)
        count = len(chunk)
        self._reserve(first_j + count)
        # Locals: this loop runs once per identifier of a whole contact base. It interns
        # the values; the other columns are filled in bulk below.
        table, mask, values, kinds = self._table, self._mask, self._values, self._kind
        limit_of, may_block = self._limit_of, self._may_block
        is_blocked = self.policy.is_blocked
        verified_account = rank == _VERIFIED
        owners = array("i")  # the new customer of each newly interned identifier
        heads = array("i")  # each new customer's identifier
        again: dict[int, int] = {}  # interned but unlinked identifier -> its new customer
        limited: list[tuple[int, int]] = []  # (limit slot, customer)
        accounts: list[int] = []  # customers with a verified account id
        add_value, add_kind, add_owner, add_head = (
            values.append,
            kinds.append,
            owners.append,
            heads.append,
        )
        last_kind, last_scope = "", ""
        code = spread = limit = _NONE
        block = False
        c = first_c
        for identifier in chunk:
            value, kind, scope = identifier.value, identifier.kind, identifier.scope
            if kind != last_kind or scope != last_scope:  # what depends on the space only
                code = self._space(kind, scope)
                last_kind, last_scope = kind, scope
                spread, limit, block = code * _SPREAD, limit_of[code], may_block[code]
            if block and is_blocked(identifier):
                raise PolicyViolation(f"{identifier} is blocklisted (a shared or junk value)")
            slot = (hash(value) + spread) & mask
            found = table[slot]
            while found != -1:  # _NONE
                if values[found] == value and kinds[found] == code:
                    break
                slot = (slot + 1) & mask
                found = table[slot]
            if found == -1:
                found = table[slot] = len(values)
                add_value(value)
                add_kind(code)
                add_owner(c)
            elif found >= since or found in again or found in relinked:
                raise PolicyViolation(f"{identifier} appears twice in add_customers")
            elif self._owner[found] != _NONE:
                raise PolicyViolation(self._taken(identifier, found))
            else:
                again[found] = c
            add_head(found)
            if limit != _NONE:
                if self._limits[limit] < 1:
                    raise PolicyViolation(self._limit_text(identifier, trust, 1, limit))
                limited.append((limit, c))
            if verified_account and self._is_account[code]:
                if self.policy.max_verified_accounts < 1:
                    raise PolicyViolation(self._verified_text(identifier, 1))
                accounts.append(c)
            c += 1
        fresh = len(owners)
        self._owner.extend(owners)
        self._trust.extend(array("b", [rank]) * fresh)
        self._next.extend(array("i", [_NONE]) * fresh)
        for j, customer in again.items():
            self._owner[j] = customer
            self._trust[j] = rank
            self._next[j] = _NONE
            relinked.add(j)
        self._grow_customers(count, heads=heads)
        for limit_slot, customer in limited:
            self._per_kind[limit_slot][customer] = 1
        for customer in accounts:
            self._verified[customer] = 1
        if self._count is not None:
            self._count[first_c:] = array("i", [1]) * count
        if self._rank is not None:
            self._rank[first_c:] = array("i", [rank]) * count
        self._linked += count

    def link(self, customer: int, identifier: Identifier, *, trust: Trust = Trust.ASSERTED) -> None:
        """Link ``identifier`` to ``customer`` (its survivor, if it was merged) at
        ``trust``; linking one it already holds keeps the higher trust.

        Raises :class:`~convthread.PolicyViolation` when the identifier is blocklisted,
        belongs to another customer, or would break a limit."""
        self._check(customer)
        self._link_root(self._root(customer), identifier, trust, _rank(trust))

    def link_all(
        self, links: Iterable[tuple[Identifier, Identifier]], *, trust: Trust = Trust.ASSERTED
    ) -> BulkReport:
        """For each ``(known, new)``: link ``new`` at ``trust`` to the customer holding
        ``known``. Each link is checked as :meth:`link` checks it; a refused one is
        reported (with its index in ``links``) and the others go on."""
        rank = _rank(trust)
        applied = unchanged = 0
        refused: list[tuple[int, str]] = []
        for index, (known, new) in enumerate(links):
            root = self._holder(known)
            if root == _NONE:
                refused.append((index, f"{known} is not linked to any customer"))
                continue
            try:
                if self._link_root(root, new, trust, rank):
                    applied += 1
                else:
                    unchanged += 1
            except PolicyViolation as exc:
                refused.append((index, str(exc)))
        return BulkReport(applied=applied, unchanged=unchanged, refused=tuple(refused))

    def unlink(self, identifier: Identifier) -> int:
        """Unlink ``identifier``; returns the customer it was linked to directly.

        Raises :class:`~convthread.NotFound` when it is not linked."""
        j = self._find(identifier)
        owner = _NONE if j == _NONE else self._owner[j]
        if owner == _NONE:
            raise NotFound("linked identifier", str(identifier))
        self._add_counts(owner, j, -1)
        _remove(self._head, self._next, owner, j)
        self._owner[j] = _NONE
        self._linked -= 1
        return owner

    def merge(self, a: int, b: int) -> int:
        """Merge the customers of ``a`` and ``b``; returns the survivor.

        Raises :class:`~convthread.PolicyViolation` (changing nothing) when they are
        already one customer or the merge would break a limit."""
        self._check(a)
        self._check(b)
        return self._merge_roots(a, b, self._root(a), self._root(b))

    def merge_all(self, pairs: Iterable[tuple[Identifier, Identifier]]) -> BulkReport:
        """For each pair of identifiers: merge the customers holding them. Pairs already
        held by one customer count as unchanged; a merge the policy refuses, or a pair
        with an identifier nobody holds, is reported (with its index in ``pairs``) and
        the others go on."""
        applied = unchanged = 0
        refused: list[tuple[int, str]] = []
        for index, (x, y) in enumerate(pairs):
            ra, rb = self._holder(x), self._holder(y)
            if ra == _NONE or rb == _NONE:
                missing = x if ra == _NONE else y
                refused.append((index, f"{missing} is not linked to any customer"))
            elif ra == rb:
                unchanged += 1
            else:
                try:
                    self._merge_roots(ra, rb, ra, rb)
                    applied += 1
                except PolicyViolation as exc:
                    refused.append((index, str(exc)))
        return BulkReport(applied=applied, unchanged=unchanged, refused=tuple(refused))

    def unmerge(self, customer: int) -> int:
        """Undo the merge that absorbed ``customer``; returns the customer it had been
        merged into. ``customer`` comes back with everything linked to it (and to the
        customers merged into it), as before the merge.

        Raises :class:`~convthread.NotFound` when ``customer`` was not merged."""
        self._check(customer)
        survivor = self._into[customer]
        if survivor == customer:
            raise NotFound("merge that absorbed customer", str(customer))
        self._subtract_totals(customer, survivor)
        _remove(self._child, self._sibling, survivor, customer)
        self._into[customer] = customer
        # Halved paths may skip over the detached customer: start again from the record.
        self._up = array("i", self._into)
        return survivor

    # ------------------------------------------------------------------ internals

    def _holder(self, identifier: Identifier) -> int:
        """The root customer holding ``identifier``, or ``_NONE``. (The lookup of every
        bulk call: ``_probe`` and ``_root`` written out, to save two calls.)"""
        scopes = self._space_code.get(identifier.kind)
        code = None if scopes is None else scopes.get(identifier.scope)
        if code is None:
            return _NONE
        value = identifier.value
        table, values, kinds, mask = self._table, self._values, self._kind, self._mask
        slot = (hash(value) + code * _SPREAD) & mask
        while (j := table[slot]) != _NONE and (values[j] != value or kinds[j] != code):
            slot = (slot + 1) & mask
        c = _NONE if j == _NONE else self._owner[j]
        if c == _NONE:
            return _NONE
        up = self._up
        while (parent := up[c]) != c:
            up[c] = c = up[parent]
        return c

    def _link_root(self, root: int, identifier: Identifier, trust: Trust, rank: int) -> bool:
        """Link ``identifier`` to the root customer ``root``; False when it held it
        already at that trust or higher. Checks first, then writes: a refusal (raised)
        changes nothing."""
        if 2 * len(self._values) + 2 > self._mask:  # _reserve's test, written out
            self._reserve(len(self._values) + 1)
        scopes = self._space_code.get(identifier.kind)
        code = scopes.get(identifier.scope) if scopes is not None else None
        if code is None:
            code = self._space(identifier.kind, identifier.scope)
        slot, j = self._probe(code, identifier.value)
        if j != _NONE and self._owner[j] != _NONE:
            if self._root(self._owner[j]) != root:
                raise PolicyViolation(self._taken(identifier, j))
            if rank <= self._trust[j]:
                return False
            self._raise_trust(j, root, rank)
            return True
        if self._may_block[code] and self.policy.is_blocked(identifier):
            raise PolicyViolation(f"{identifier} is blocklisted (a shared or junk value)")
        limited = self._limit_of[code]
        if limited != _NONE:
            total = self._per_kind[limited][root] + 1
            if total > self._limits[limited]:
                raise PolicyViolation(self._limit_text(identifier, trust, total, limited))
        if rank == _VERIFIED and self._is_account[code]:
            total = self._verified[root] + 1
            if total > self.policy.max_verified_accounts:
                raise PolicyViolation(self._verified_text(identifier, total))
        if j == _NONE:
            j = len(self._values)
            self._table[slot] = j
            self._values.append(identifier.value)
            self._kind.append(code)
            self._owner.append(root)
            self._trust.append(rank)
            self._next.append(self._head[root])
        else:  # linked before, unlinked since: interned already
            self._owner[j] = root
            self._trust[j] = rank
            self._next[j] = self._head[root]
        self._head[root] = j
        self._linked += 1
        # _add_counts(root, j, 1), written out: root is a root, so only its counts change.
        if limited != _NONE:
            self._per_kind[limited][root] += 1
        if rank == _VERIFIED and self._is_account[code]:
            self._verified[root] += 1
        if self._count is not None:
            self._count[root] += 1
        if self._rank is not None:
            self._rank[root] += rank
        return True

    def _merge_roots(self, a: int, b: int, ra: int, rb: int) -> int:
        refused = ra == rb or self._verified[ra] + self._verified[rb] > self._max_verified
        for limit, counts in self._limit_counts:
            refused = refused or counts[ra] + counts[rb] > limit
        if refused:  # say why (the quick test above is the same one, without the words)
            found = self._violations(a, b, ra, rb)
            raise PolicyViolation(f"customers {a} and {b} cannot be merged: " + "; ".join(found))
        if self._oldest:  # the lower number
            survivor, absorbed = (ra, rb) if ra < rb else (rb, ra)
        else:
            survivor, absorbed = self._survivor(ra, rb)
        self._into[absorbed] = survivor
        self._up[absorbed] = survivor
        self._sibling[absorbed] = self._child[survivor]
        self._child[survivor] = absorbed
        for column in self._totals:  # survivor is a root: only its totals change
            column[survivor] += column[absorbed]
        return survivor

    def _check(self, customer: int) -> None:
        if not isinstance(customer, int):
            raise ValidationError(f"a customer is an int, not {customer!r}")
        if not 0 <= customer < len(self._into):
            raise NotFound("customer in this graph", str(customer))

    def _root(self, c: int) -> int:
        """The root of ``c``, halving the path on the way."""
        up = self._up
        while (parent := up[c]) != c:
            up[c] = c = up[parent]
        return c

    def _members(self, root: int) -> Iterator[int]:
        stack = [root]
        while stack:
            c = stack.pop()
            yield c
            k = self._child[c]
            while k != _NONE:
                stack.append(k)
                k = self._sibling[k]

    def _survivor(self, a: int, b: int) -> tuple[int, int]:
        # Lower number = created first: the oldest, and the tie-break of the other rules.
        larger = self._count if self._count is not None else self._rank
        if larger is None:
            return (a, b) if a < b else (b, a)
        return (a, b) if (-larger[a], a) <= (-larger[b], b) else (b, a)

    def _space(self, kind: str, scope: str) -> int:
        """The number of the (kind, scope) pair, registering it when new."""
        scopes = self._space_code.get(kind)
        if scopes is None:
            scopes = self._space_code[kind] = {}
        code = scopes.get(scope)
        if code is not None:
            return code
        code = len(self._spaces)
        if code > 0xFFFF:
            raise ValidationError("an IdentityGraph holds at most 65,536 (kind, scope) pairs")
        self._spaces.append((kind, scope))
        scopes[scope] = code
        self._may_block.append(self.policy.may_block(kind))
        self._is_account.append(kind == IdentifierKind.ACCOUNT)
        limit = self.policy.max_per_kind.get(kind)
        if limit is None:
            self._limit_of.append(_NONE)
        elif kind in self._limit_kinds:
            # Limits count every identifier of a kind, whatever its scope: one column of
            # counts per kind, shared by its scopes.
            self._limit_of.append(self._limit_kinds.index(kind))
        else:
            self._limit_of.append(len(self._limits))
            self._limits.append(limit)
            self._limit_kinds.append(kind)
            counts = array("i", bytes(4 * len(self._into)))
            self._per_kind.append(counts)
            self._limit_counts.append((limit, counts))
            self._totals.append(counts)
        return code

    def _find(self, identifier: Identifier) -> int:
        scopes = self._space_code.get(identifier.kind)
        code = None if scopes is None else scopes.get(identifier.scope)
        return _NONE if code is None else self._probe(code, identifier.value)[1]

    def _probe(self, code: int, value: str) -> tuple[int, int]:
        """``(slot, identifier)`` of ``value`` in space ``code``; when it is not interned,
        the free slot where it would go and ``_NONE``."""
        table, values, kinds, mask = self._table, self._values, self._kind, self._mask
        slot = (hash(value) + code * _SPREAD) & mask
        found = table[slot]
        while found != _NONE:
            if values[found] == value and kinds[found] == code:
                return slot, found
            slot = (slot + 1) & mask
            found = table[slot]
        return slot, _NONE

    def _reserve(self, entries: int) -> None:
        """Keep the table at most half full (short probe runs), growing it fourfold."""
        capacity = self._mask + 1
        if 2 * entries <= capacity:
            return
        while 2 * entries > capacity:
            capacity *= 4
        self._rehash(capacity)

    def _rehash(self, capacity: int) -> None:
        table = array("i", [_NONE]) * capacity
        mask = capacity - 1
        # Each value's home slot, computed by map (C loops; str hashes are cached), so
        # the Python loop only places them.
        homes = map(
            and_,
            map(add, map(hash, self._values), map(mul, self._kind, repeat(_SPREAD))),
            repeat(mask),
        )
        for j, slot in enumerate(homes):
            while table[slot] != _NONE:
                slot = (slot + 1) & mask
            table[slot] = j
        self._table, self._mask = table, mask

    def _grow_customers(self, count: int, *, heads: array[int] | None = None) -> None:
        start = len(self._into)
        numbers = array("i", range(start, start + count))
        nothing = array("i", [_NONE]) * count
        zeros = bytes(4 * count)
        self._up.extend(numbers)
        self._into.extend(numbers)
        self._head.extend(nothing if heads is None else heads)
        self._child.extend(nothing)
        self._sibling.extend(nothing)
        for column in self._totals:
            column.frombytes(zeros)

    def _truncate(self, identifiers: int, customers: int) -> None:
        """Forget everything from identifier ``identifiers`` and customer ``customers`` on
        (what a refused bulk call had added), and rebuild the table without them."""
        for column in (self._kind, self._owner, self._trust, self._next):
            del column[identifiers:]
        del self._values[identifiers:]
        for column in (self._up, self._into, self._head, self._child, self._sibling):
            del column[customers:]
        for column in self._totals:
            del column[customers:]
        self._rehash(self._mask + 1)

    def _add_counts(self, customer: int, j: int, sign: int) -> None:
        """Count identifier ``j`` in (or out of) ``customer`` and everything it is merged
        into."""
        slot = self._limit_of[self._kind[j]]
        verified = self._trust[j] == _VERIFIED and self._is_account[self._kind[j]]
        rank = self._trust[j]
        c = customer
        while True:
            if slot != _NONE:
                self._per_kind[slot][c] += sign
            if verified:
                self._verified[c] += sign
            if self._count is not None:
                self._count[c] += sign
            if self._rank is not None:
                self._rank[c] += sign * rank
            into = self._into[c]
            if into == c:
                return
            c = into

    def _subtract_totals(self, absorbed: int, survivor: int) -> None:
        """Take ``absorbed``'s totals out of ``survivor`` and everything above it."""
        for column in self._totals:
            amount = column[absorbed]
            if amount:
                c = survivor
                while True:
                    column[c] -= amount
                    into = self._into[c]
                    if into == c:
                        break
                    c = into

    def _raise_trust(self, j: int, root: int, rank: int) -> None:
        code = self._kind[j]
        if rank == _VERIFIED and self._is_account[code]:
            total = self._verified[root] + 1
            if total > self.policy.max_verified_accounts:
                kind, scope = self._spaces[code]
                raise PolicyViolation(
                    self._verified_text(Identifier(kind, self._values[j], scope), total)
                )
        owner = self._owner[j]
        self._add_counts(owner, j, -1)
        self._trust[j] = rank
        self._add_counts(owner, j, 1)

    def _taken(self, identifier: Identifier, j: int) -> str:
        holder = self._root(self._owner[j])
        return f"{identifier} belongs to customer {holder}; merge the customers or unlink it first"

    def _limit_text(self, identifier: Identifier, trust: Trust, total: int, slot: int) -> str:
        return (
            f"linking {identifier} ({trust.value}) would give {total} {identifier.kind} "
            f"identifiers (limit {self._limits[slot]})"
        )

    def _verified_text(self, identifier: Identifier, total: int) -> str:
        return (
            f"linking {identifier} (verified) would give {total} verified account ids "
            f"(limit {self.policy.max_verified_accounts})"
        )


_RANKS: Final = {t: t.rank for t in _TRUSTS}


def _rank(trust: Trust) -> int:
    rank = _RANKS.get(trust) if isinstance(trust, Trust) else None
    if rank is None:
        raise ValidationError(f"trust must be a Trust, not {trust!r}")
    return rank


def _remove(first: array[int], following: array[int], holder: int, item: int) -> None:
    """Take ``item`` out of ``holder``'s singly linked list (``first[holder]``, then
    ``following[...]``)."""
    if first[holder] == item:
        first[holder] = following[item]
    else:
        k = first[holder]
        while following[k] != item:
            k = following[k]
        following[k] = following[item]
    following[item] = _NONE
