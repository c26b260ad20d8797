"""A deliberately wrong variant of ``handler.py``: it forgets that providers retry.

It routes every delivery, so a webhook retry puts the same message in a queue twice.
``test_handler.py`` catches it (run with ``DOWNSTREAM_HANDLER=broken_handler``) and
Hypothesis shrinks the failure to a two-step journey: a message and its redelivery.
"""

from __future__ import annotations

import handler
import msgspec
from handler import Routed

from convthread import Inbound, IngestResult


class SupportWebhook(handler.SupportWebhook):
    def handle(self, body: bytes) -> IngestResult:
        inbound = msgspec.json.decode(body, type=Inbound)
        result = self.convs.ingest(inbound)
        # BUG: no ``if result.duplicate: return result`` here
        queue = self.assignments.setdefault(result.thread_id, self.queue_for(inbound))
        self.routed.append(
            Routed(queue, result.thread_id, result.customer_id, inbound.provider_message_id)
        )
        return result
