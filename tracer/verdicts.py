"""Verdict names, what they mean, and the remedy the seeds point to (DESIGN.md, Verdicts).

Names are stable strings: they are stored in ClickHouse and printed in JSON.
"""
from __future__ import annotations

DELIVERED = "delivered"
NEVER_SENT = "never_sent"
SEND_FAILED = "send_failed"
UNACKED = "unacked"
LOST_IN_BROKER = "lost_in_broker"
PENDING_IN_BROKER = "pending_in_broker"
LOST_IN_CONSUMER = "lost_in_consumer"
FAILED_AND_COMMITTED = "failed_and_committed"
IN_FLIGHT = "in_flight"
DEAD_LETTERED = "dead_lettered"
AUDIT_GAP = "audit_gap"
ROLLED_BACK = "rolled_back"
EXPIRED_IN_BROKER = "expired_in_broker"

#: Every verdict, in pipeline order (the order summaries print them in).
VERDICTS: tuple[str, ...] = (DELIVERED, NEVER_SENT, SEND_FAILED, UNACKED, LOST_IN_BROKER, PENDING_IN_BROKER,
                             LOST_IN_CONSUMER, FAILED_AND_COMMITTED, IN_FLIGHT, DEAD_LETTERED, AUDIT_GAP,
                             ROLLED_BACK, EXPIRED_IN_BROKER)
#: Verdicts that mean the message is lost ("lost? yes" in DESIGN.md): they make `reconcile` exit 1.
LOST: frozenset[str] = frozenset({NEVER_SENT, SEND_FAILED, LOST_IN_BROKER, LOST_IN_CONSUMER, FAILED_AND_COMMITTED,
                                EXPIRED_IN_BROKER})
#: Not lost yet: may still complete.
NOT_YET: frozenset[str] = frozenset({PENDING_IN_BROKER, IN_FLIGHT})

REDELIVERED = "redelivered"
DUPLICATE_PROCESSING = "duplicate_processing"
ACK_LOST = "ack_lost"
EMITTER_SEQ_GAP = "emitter_seq_gap"
REPLAYED = "replayed"
FLAGS: tuple[str, ...] = (REDELIVERED, DUPLICATE_PROCESSING, ACK_LOST, EMITTER_SEQ_GAP, REPLAYED)

LOST_LABEL: dict[str, str] = {
    DELIVERED: "no", NEVER_SENT: "yes", SEND_FAILED: "yes", UNACKED: "unknown", LOST_IN_BROKER: "yes",
    PENDING_IN_BROKER: "not yet", LOST_IN_CONSUMER: "yes", FAILED_AND_COMMITTED: "yes", IN_FLIGHT: "not yet",
    DEAD_LETTERED: "parked", AUDIT_GAP: "audit fault",
    ROLLED_BACK: "no (by design)", EXPIRED_IN_BROKER: "yes",
}

MEANING: dict[str, str] = {
    DELIVERED: "the business effect is done",
    NEVER_SENT: "expected by the source of truth, but the producer never handed it to the MQ client",
    SEND_FAILED: "the client reported a send failure and the broker never acknowledged it",
    UNACKED: "sent, but neither an acknowledgement nor a failure was recorded",
    LOST_IN_BROKER: "the broker acknowledged it, the group moved past it, and never received it",
    PENDING_IN_BROKER: "the broker acknowledged it; the group has not reached it yet (lag)",
    LOST_IN_CONSUMER: "received and its offset committed, but no business outcome was ever recorded",
    FAILED_AND_COMMITTED: "the handler failed, the offset was committed anyway, and it was never redone",
    IN_FLIGHT: "received but not committed and no outcome yet: it should be redelivered",
    DEAD_LETTERED: "parked in a dead-letter queue and not processed since",
    AUDIT_GAP: "a later stage was recorded without the earlier ones: the audit itself lost events",
    ROLLED_BACK: "its transaction was aborted (or its half message rolled back): by design never visible to consumers",
    EXPIRED_IN_BROKER: "the broker acknowledged it, but retention deleted it before the group reached it",
}

#: Remedies from the seeds (DESIGN.md: where / how it is lost / remedy).
REMEDY: dict[str, str] = {
    DELIVERED: "",
    NEVER_SENT: "write the message in the same transaction as the business change: transactional (half) "
                "message or an outbox table re-sent by a relay",
    SEND_FAILED: "retry the send, keep unsent messages in a local store and re-send them, check the send "
                 "callback's result instead of fire-and-forget",
    UNACKED: "use send callbacks (or wait on the future) and retry when no acknowledgement comes; "
             "keep a local store of unacknowledged messages",
    LOST_IN_BROKER: "flush synchronously and replicate: acks=all, min.insync.replicas >= 2, no unclean "
                    "leader election (Raft/DLedger in RocketMQ)",
    PENDING_IN_BROKER: "the group lags: check that its consumers are running and keeping up; judge again later",
    LOST_IN_CONSUMER: "commit the offset only after the business work is done (manual ack); do not hand "
                      "work to another thread before committing",
    FAILED_AND_COMMITTED: "do not swallow handler errors: retry, and send what still fails to a dead-letter "
                          "queue instead of committing past it",
    IN_FLIGHT: "not committed: it should be redelivered after a rebalance or restart; check the consumer",
    DEAD_LETTERED: "inspect the dead-letter queue, fix the cause and replay the message",
    AUDIT_GAP: "the audit trail is incomplete: check the emitters' spool and the collector (seq gaps, "
               "quarantine) before trusting this message's verdict",
    ROLLED_BACK: "nothing to recover: the producer aborted the transaction; check that it was meant to",
    EXPIRED_IN_BROKER: "raise the topic's retention or fix the group's lag (consumers down or too slow): "
                       "retention deleted the message before it was consumed",
}

#: Where a message stopped, in words (by the stage it stopped at).
STOPPED_WORDS: dict[str, str] = {
    "none": "before the MQ: never handed to the MQ client",
    "sent": "between producer and broker: handed to the client, no acknowledgement",
    "send_failed": "between producer and broker: the send failed",
    "broker_acked": "inside the broker: acknowledged, not received by the group",
    "received": "in the consumer: received, not committed, no outcome",
    "offset_committed": "in the consumer: offset committed, no business outcome",
    "business_done": "done: the business effect happened",
    "business_failed": "in the business handler: it failed",
    "dead_lettered": "in the dead-letter queue",
    "rolled_back": "in the producer's transaction: aborted, never visible to consumers",
}

#: The stage a verdict stops at (audit_gap and in_flight depend on the events: see reconcile).
STOPPED_AT: dict[str, str] = {
    DELIVERED: "business_done", NEVER_SENT: "none", SEND_FAILED: "send_failed", UNACKED: "sent",
    LOST_IN_BROKER: "broker_acked", PENDING_IN_BROKER: "broker_acked", LOST_IN_CONSUMER: "offset_committed",
    FAILED_AND_COMMITTED: "business_failed", IN_FLIGHT: "received", DEAD_LETTERED: "dead_lettered",
    ROLLED_BACK: "rolled_back", EXPIRED_IN_BROKER: "broker_acked",
}


def stopped_words(stage: str) -> str:
    return STOPPED_WORDS.get(stage, stage)
