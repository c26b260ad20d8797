"""The service layer: ``Conversations`` and ``AsyncConversations``."""

from convthread.service._api import AsyncConversations, Conversations
from convthread.service._results import (
    CustomerView,
    IngestResult,
    SendResult,
    StoredEvent,
    ThreadView,
)

__all__ = [
    "AsyncConversations",
    "Conversations",
    "CustomerView",
    "IngestResult",
    "SendResult",
    "StoredEvent",
    "ThreadView",
]
