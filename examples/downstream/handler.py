"""A downstream project's webhook handler, tested with convthread's testing kit.

The provider (an SMS gateway, WhatsApp, a mail relay...) POSTs each message as JSON to
``SupportWebhook.handle``, and retries when it does not get a 200 in time, so the same
payload can arrive twice. The handler stores the message with convthread and routes it
to a work queue: a thread stays in the queue it was first routed to, and a retry must not
put the same message in a queue twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from convthread import Conversations, Inbound, IngestResult, Trust


@dataclass(frozen=True)
class Routed:
    """A message handed to a queue."""

    queue: str
    thread_id: str
    customer_id: str
    provider_message_id: str


@dataclass
class SupportWebhook:
    """Ingests webhook payloads and routes each new message to a queue."""

    convs: Conversations
    routed: list[Routed] = field(default_factory=list)
    assignments: dict[str, str] = field(default_factory=dict)  # thread id -> queue

    def handle(self, body: bytes) -> IngestResult:
        inbound = msgspec.json.decode(body, type=Inbound)
        result = self.convs.ingest(inbound)
        if result.duplicate:  # the provider retried: already stored and routed
            return result
        queue = self.assignments.setdefault(result.thread_id, self.queue_for(inbound))
        self.routed.append(
            Routed(queue, result.thread_id, result.customer_id, inbound.provider_message_id)
        )
        return result

    @staticmethod
    def queue_for(inbound: Inbound) -> str:
        if inbound.channel == "voice":
            return "callbacks"
        if any(s.trust is Trust.VERIFIED for s in inbound.sender):
            return "members"
        return "general"
