"""``msgtrace replay``: re-publish lost messages from where they can still be had.

The last seed's remedies, applied per message: re-deliver what the consumer dropped (the business
topic still holds it at its offset), recover what went to the dead-letter queue, re-send from the
producer's local store (the source of truth, e.g. an outbox table) what the broker never had.

* :mod:`tracer.replay.plan`: which messages, from where, why not;
* :mod:`tracer.replay.sources`: the business Kafka (read-only), the DLQ, the source of truth;
* :mod:`tracer.replay.fetch`: which source supplies each message;
* :mod:`tracer.replay.publish`: re-publish with ``msgtrace-id`` and ``msgtrace-replay``, rate limited;
* :mod:`tracer.replay.runs`: the replay run stored in ClickHouse;
* :mod:`tracer.replay.core`: :func:`replay`, all of it in order.
"""
from tracer.replay.core import ReplayOptions, ReplayResult, Selection, plan, replay
from tracer.replay.plan import (
           REPLAY_ATTR,
           REPLAY_HEADER,
           REPLAYABLE,
           Item,
           Result,
           Source,
           Why,
)
from tracer.replay.runs import ensure_schema
from tracer.replay.sources import SourceOfTruth

__all__ = [
           "REPLAYABLE",
           "REPLAY_ATTR",
           "REPLAY_HEADER",
           "Item",
           "ReplayOptions",
           "ReplayResult",
           "Result",
           "Selection",
           "Source",
           "SourceOfTruth",
           "Why",
           "ensure_schema",
           "plan",
           "replay",
]
