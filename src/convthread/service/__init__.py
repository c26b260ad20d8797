"""The service layer: ``Conversations`` and ``AsyncConversations``, and their results."""

from convthread.service._api import AsyncConversations, Conversations
from convthread.service._erasure import (
    ErasureReport,
)
from convthread.service._feed import AsyncFollower, Follower
from convthread.service._identity import (
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
from convthread.service._import import (
    HistoryReply,
    ImportFailure,
    ImportSummary,
    history_order,
)
from convthread.service._results import (
    ContinuationToken,
    CustomerView,
    HandoffResult,
    IngestResult,
    Redemption,
    SendResult,
    StoredEvent,
    ThreadView,
)
from convthread.service._threads import (
    ApplyResult,
    MessageLocation,
    SweepResult,
    ThreadPage,
)

__all__ = [
    "ApplyResult",
    "AsyncConversations",
    "AsyncFollower",
    "ContinuationToken",
    "Conversations",
    "CustomerView",
    "Disclosure",
    "ErasureReport",
    "ExplainStep",
    "Explanation",
    "Follower",
    "HandoffResult",
    "History",
    "HistoryReply",
    "ImportFailure",
    "ImportSummary",
    "IngestResult",
    "MergeResult",
    "MergeSuggestion",
    "MessageLocation",
    "Redemption",
    "SendResult",
    "StoredEvent",
    "SweepResult",
    "ThreadPage",
    "ThreadView",
    "UnmergeResult",
    "VerificationResult",
    "VerificationStarted",
    "history_order",
]
