"""Identity operations as store-call generators: link, unlink, merge, unmerge, explain,
merge suggestions, verification by one-time code, and reads on a session's behalf under
the disclosure policy.

Randomness (one-time codes, salts) and the clock live here, in the service layer; the
domain (:mod:`convthread.domain.merge`, :mod:`convthread.domain.identity`) is pure. One
module per concern: ``_records`` (stored records and shared reads), ``_results`` (public
results), ``_merge``, ``_unmerge``, ``_suggest``, ``_resolve`` (ingest), ``_links``,
``_explain``, ``_verify``, ``_disclose`` and ``_erase``. Each imports only modules listed
before it, never the reverse; this package re-exports what the rest of the service uses.
"""

from convthread.service._identity._disclose import disclosure, history_for
from convthread.service._identity._erase import erasure_deletes
from convthread.service._identity._explain import explain
from convthread.service._identity._links import link, unlink
from convthread.service._identity._merge import merge
from convthread.service._identity._resolve import resolution_writes, resolve_sender
from convthread.service._identity._results import (
    Disclosure,
    ExplainStep,
    Explanation,
    History,
    MergeResult,
    MergeSuggestion,
    UnmergeResult,
    VerificationResult,
    VerificationStarted,
)
from convthread.service._identity._suggest import accept_suggestion, reject_suggestion, suggestions
from convthread.service._identity._unmerge import unmerge
from convthread.service._identity._verify import confirm_verification, start_verification

__all__ = [
    "Disclosure",
    "ExplainStep",
    "Explanation",
    "History",
    "MergeResult",
    "MergeSuggestion",
    "UnmergeResult",
    "VerificationResult",
    "VerificationStarted",
    "accept_suggestion",
    "confirm_verification",
    "disclosure",
    "erasure_deletes",
    "explain",
    "history_for",
    "link",
    "merge",
    "reject_suggestion",
    "resolution_writes",
    "resolve_sender",
    "start_verification",
    "suggestions",
    "unlink",
    "unmerge",
]
