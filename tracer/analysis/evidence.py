"""The evidence of a verdict in words: which events decided it, with their times and places.

One function per verdict, keyed by name; :func:`evidence_text` adds the replay attempt (a replay
that did not deliver keeps the original verdict, with the attempt here).
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from tracer import verdicts as V
from tracer.analysis import rules as R
from tracer.analysis.facts import PairFacts


def fmt_us(ts_us: int) -> str:
    """ISO 8601 UTC with milliseconds ("-" for no time)."""
    if not ts_us:
        return "-"
    return datetime.fromtimestamp(ts_us / 1e6, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def location(f: PairFacts) -> str:
    return f"{f.topic}/{f.loc_p}@{f.loc_o}" if f.loc_p >= 0 else (f.topic or "?")


def _audit_gap(f: PairFacts) -> str:
    pm = f.pmask
    have = R.stages_of(pm | f.cmask)
    if not pm & (R.SENT | R.SEND_FAILED):
        missing = "sent"
    elif pm & R.BROKER_ACKED and not pm & R.SENT:
        missing = "sent (before broker_acked)"
    else:
        missing = "received"
    return f"recorded {', '.join(have) or 'nothing'} but no {missing}: the audit lost events"


def _delivered(f: PairFacts) -> str:
    if not f.n_done and f.replay_done_ts:
        return f"business_done at {fmt_us(f.replay_done_ts)} after the replay"
    return f"business_done at {fmt_us(f.done_ts)}" + (f" ({f.n_done} times)" if f.n_done > 1 else "")


def _broker(f: PairFacts) -> str:
    at = f"broker_acked at {location(f)} at {fmt_us(f.ack_ts)}" if f.ack_ts else \
        f"stored by the broker at {location(f)} (another group received it; the ack was lost)"
    return f"{at}; never received by this group"


def _unacked(f: PairFacts) -> str:
    if f.txn_id:  # RocketMQ: a half message whose transaction never ended
        return (f"half message of transaction {f.txn_id} sent at {fmt_us(f.sent_ts)}; no commit or rollback "
                f"(EndTransaction) by {fmt_us(f.cut)}: the local transaction is in doubt (producer died after the "
                "half message, or its check-back answered UNKNOW)")
    return f"sent at {fmt_us(f.sent_ts)}; no broker_acked and no send_failed by {fmt_us(f.cut)}"


#: the remedy of an unacked half message (instead of verdicts.REMEDY's send callbacks)
HALF_MESSAGE_REMEDY = ("implement the producer's transaction checker (RocketMQ's TransactionChecker / "
                       "checkLocalTransaction) so the broker's check-back commits or rolls back from the local "
                       "transaction's state (the order row), never UNKNOW for good; alert on half messages older "
                       "than the check-back limit, and re-send from the outbox (msgtrace replay) when the order "
                       "committed")


def remedy(f: PairFacts, verdict: str) -> str:
    """The remedy of a verdict (tracer.verdicts.REMEDY), or one the evidence calls for."""
    if verdict == V.UNACKED and f.txn_id:
        return HALF_MESSAGE_REMEDY
    return V.REMEDY.get(verdict, "")


def _in_flight(f: PairFacts) -> str:
    failed = f"; business_failed at {fmt_us(f.bfail_ts)}" if f.bfail_ts else ""
    return f"received at {fmt_us(f.recv_ts)}{failed}; not committed, no outcome by {fmt_us(f.cut)}"


TEXT: dict[str, Callable[[PairFacts], str]] = {
    V.DELIVERED: _delivered,
    V.NEVER_SENT: lambda f: "expected by the source of truth; no event recorded at all",
    V.SEND_FAILED: lambda f: (f"send_failed at {fmt_us(f.sfail_ts)}: {f.p_error or 'no error text'}; "
                              "never broker_acked"),
    V.UNACKED: _unacked,
    V.LOST_IN_BROKER: _broker,
    V.PENDING_IN_BROKER: _broker,
    V.EXPIRED_IN_BROKER: _broker,
    V.LOST_IN_CONSUMER: lambda f: (f"received at {fmt_us(f.recv_ts)}; offset_committed at {fmt_us(f.commit_ts)}"
                                   + (f" (offset {f.commit_o})" if f.commit_o >= 0 else "")  # RabbitMQ, RocketMQ: none
                                   + "; no business_done or business_failed"),
    V.FAILED_AND_COMMITTED: lambda f: (f"business_failed at {fmt_us(f.bfail_ts)}: {f.c_error or 'no error text'}; "
                                       f"offset_committed at {fmt_us(f.commit_ts)}; no later business_done"),
    V.IN_FLIGHT: _in_flight,
    V.DEAD_LETTERED: lambda f: f"dead_lettered at {fmt_us(f.dl_ts)}; no business_done",
    V.AUDIT_GAP: _audit_gap,
    V.ROLLED_BACK: lambda f: (f"rolled_back at {fmt_us(f.rb_ts)}; no later sent was acked: never visible to "
                              "consumers"),
}
assert set(TEXT) == set(V.VERDICTS), "evidence words for every verdict"


def replay_text(f: PairFacts) -> str:
    """The replay attempt of a message, in words ("" without one)."""
    if not f.replay_mask:
        return ""
    reached = ", ".join(R.stages_of(f.replay_mask))
    err = f" ({f.replay_error})" if f.replay_error else ""
    to = f" to {f.replay_topic}" if f.replay_topic else ""
    return f"replayed by run {f.replay_run or '?'} at {fmt_us(f.replay_ts)}{to}: {reached}{err}"


def evidence_text(f: PairFacts, verdict: str) -> str:
    text = TEXT[verdict](f)
    replay = replay_text(f)
    return f"{text}; {replay}" if replay else text


def consumer_loss_text(f: PairFacts, by: str, found: str) -> str:
    """Evidence of an in_flight pair refined to a consumer loss."""
    outcome = (f"business_failed at {fmt_us(f.bfail_ts)}: {f.c_error or 'no error text'}; no later business_done"
               if f.bfail_ts else "no business_done or business_failed")
    return (f"received at {fmt_us(f.recv_ts)}; {outcome}; no offset_committed names it, but decided by {by}: "
            f"{found}")
