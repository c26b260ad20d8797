"""The identity records an erasure deletes: :func:`erasure_deletes` scans the suggestion,
verification and merge-ledger records for those naming the erased customers or their
identifiers.

It only computes deletes (with the suggestion pair keys); the erasure operation adds them
to its own batch, so nothing here writes.
"""

from __future__ import annotations

from convthread.ports import ANY, Delete
from convthread.service import _core as core
from convthread.service._core import NS_MERGE, NS_SUGGEST, NS_SUGGEST_PAIR, NS_VERIFY, Op
from convthread.service._identity._records import _mergeref, _pair_key, _suggestion, _verification


def erasure_deletes(customer_ids: set[str], identifier_keys: set[str]) -> Op[list[Delete]]:
    """The identity records to delete when ``customer_ids`` (a customer and the customers
    merged into it) are erased: merge suggestions naming them or one of their
    identifiers (and the pair keys), verifications of their identifiers or for them, and
    the merge ledger entries that name them. For the erasure operation to add to its
    batch."""
    out: list[Delete] = []
    checks = (
        (NS_SUGGEST, _suggestion_hit),
        (NS_VERIFY, _verification_hit),
        (NS_MERGE, _merge_hit),
    )
    for ns, hit in checks:
        after = ""
        while True:
            page = yield from core.scan(ns, "", after, 1000)
            for key, item in page:
                found = hit(item.value, customer_ids, identifier_keys)
                if found is None:
                    continue
                out.append(Delete(ns, key, item.version))
                if found:
                    out.append(Delete(NS_SUGGEST_PAIR, found, ANY))
            if len(page) < 1000:
                break
            after = page[-1][0]
    return out


def _suggestion_hit(data: bytes, customers: set[str], keys: set[str]) -> str | None:
    ref = _suggestion(data)
    if ref.customer_id in customers or ref.other in customers or ref.identifier.key in keys:
        return _pair_key(ref.customer_id, ref.other)
    return None


def _verification_hit(data: bytes, customers: set[str], keys: set[str]) -> str | None:
    record = _verification(data)
    if record.identifier.key in keys or record.customer_id in customers:
        return ""
    return None


def _merge_hit(data: bytes, customers: set[str], keys: set[str]) -> str | None:
    ref = _mergeref(data)
    return "" if ref.survivor in customers or ref.absorbed in customers else None
