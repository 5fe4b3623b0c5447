"""The facts that decide one (message, consumer group) pair, as one typed value.

Pass 2 (``queries/reconcile_pairs.sql``) computes them in ClickHouse for a window's candidate
messages; :func:`pairs_from_events` computes the same from one message's few events in Python
(``trace-msg``: ClickHouse needs ~0.15 s just to plan the big query). Both feed
:func:`tracer.analysis.rules.decide`; tests check that they agree on generated histories.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from tracer import verdicts as V
from tracer.analysis import rules as R
from tracer.events import STAGE_BITS, Event

NO_GROUP = "(no group)"
_PRODUCER = frozenset(s.value for s in R.PRODUCER_STAGES)


@dataclass(slots=True)
class PairFacts:
    """Everything the rules and the evidence text read about one pair. Times are µs (0: none);
    partitions and offsets -1 where unknown. Replay facts are of events carrying ``replay_run``;
    every other fact is of the original events only, except for a message with no sent or
    send_failed of its own (rebuilt from the source of truth, then replayed): its replay's producer
    events are its own. ``topic`` is the business topic (the original's), ``replay_topic`` where the
    replay was published (a retry topic)."""

    msg_id: str
    consumer_group: str
    topic: str = ""
    msg_time: int = 0
    pmask: int = 0  # producer stages of the message
    cmask: int = 0  # this group's consumer stages
    any_cmask: int = 0  # any group's consumer stages
    n_recv: int = 0
    n_done: int = 0
    sent_ts: int = 0
    sfail_ts: int = 0
    ack_ts: int = 0
    ack_p: int = -1
    ack_o: int = -1
    loc_p: int = -1  # where the broker stored it: the ack, else where a group received it
    loc_o: int = -1
    recv_ts: int = 0
    commit_ts: int = 0
    commit_o: int = -1
    done_ts: int = 0
    bfail_ts: int = 0
    dl_ts: int = 0
    last_ts: int = 0
    rb_ts: int = 0  # latest rolled_back
    rb_open: bool = False  # rolled back, and no later sent that was acked
    replay_mask: int = 0  # stages reached by replay events (producer side and this group)
    replay_run: str = ""
    replay_ts: int = 0
    replay_done_ts: int = 0
    replay_error: str = ""
    replay_topic: str = ""
    txn_id: str = ""  # RocketMQ: the transaction of its half message, for an unacked pair (evidence only)
    p_error: str = ""
    c_error: str = ""
    trace_id: str = ""
    unsure: bool = False  # counts by rows could be inflated by duplicated audit events
    cut: int = 0  # events after this were not considered

    @classmethod
    def from_row(cls, row: Mapping[str, Any], cut: int) -> PairFacts:
        """From a reconcile_pairs.sql row (its columns are named as these fields)."""
        kw = {f: row[f] for f in _ROW_FIELDS if f in row}
        kw["rb_open"] = bool(kw.get("rb_open"))
        kw["unsure"] = bool(kw.get("unsure"))
        for k in ("trace_id", "p_error", "c_error", "replay_error", "replay_run", "topic", "replay_topic", "txn_id"):
            kw[k] = kw.get(k) or ""
        return cls(cut=cut, **kw)

    @property
    def cand_ts(self) -> int:
        """The time the broker question is about: the ack, else the failure, the send, the message."""
        return self.ack_ts or self.sfail_ts or self.sent_ts or self.msg_time

    @property
    def located(self) -> bool:
        return self.loc_p >= 0


_ROW_FIELDS = tuple(f.name for f in fields(PairFacts) if f.name != "cut")
_OWN_SEND = frozenset({"sent", "send_failed"})
#: a message's business topic is named by these of its own events first (reconcile_pairs.sql's t1)
_TOPIC_STAGES = frozenset({"sent", "send_failed", "broker_acked", "received"})
#: a RocketMQ half message's ``sent`` (tracer.ingest's trace import, tracer.sdk.rocketmq); the same
#: names are in queries/reconcile_half_sends.sql
HALF_ATTR, TXN_ATTR = "rocketmq.half", "rocketmq.transaction_id"
NO_TXN_ID = "(id not recorded)"


def half_txn(events: Iterable[Event]) -> str:
    """The transaction id of the latest half message ``sent`` among ``events`` ("" if none was half)."""
    half = [e for e in events if e.stage == "sent" and e.attrs
            and (e.attrs.get(HALF_ATTR) == "true" or TXN_ATTR in e.attrs)]
    if not half:
        return ""
    return max(half, key=lambda e: e.ts_us).attrs.get(TXN_ATTR) or NO_TXN_ID


# --- the same facts from one message's events (trace-msg) ------------------------------------------

def _is_replay(e: Event) -> bool:
    return R.REPLAY_ATTR in (e.attrs or {})


def _side(e: Event) -> str:
    return "" if e.stage in _PRODUCER else (e.consumer_group or NO_GROUP)


def _mask(events: Iterable[Event]) -> int:
    m = 0
    for e in events:
        m |= STAGE_BITS.get(e.stage, 0)
    return m


def _pos(v: int | None) -> int:
    return -1 if v is None else v


@dataclass(slots=True)
class _Side:
    """Level 1 of reconcile_pairs.sql for one (message, side), in Python."""

    mask: int
    rmask: int
    n_recv: int
    n_done: int
    sent_ts: int
    last_sent_ts: int
    sfail_ts: int
    first_ts: int
    last_ts: int
    ack_ts: int
    ack_p: int
    ack_o: int
    rb_ts: int
    recv_ts: int
    recv_p: int
    recv_o: int
    commit_ts: int
    commit_o: int
    done_ts: int
    bfail_ts: int
    dl_ts: int
    error: str
    replay_ts: int
    replay_done_ts: int
    replay_error: str

    @classmethod
    def of(cls, events: Sequence[Event], producer: bool = False) -> _Side:
        orig = [e for e in events if not _is_replay(e)]
        rep = [e for e in events if _is_replay(e)]
        if producer and not any(e.stage in _OWN_SEND for e in orig) and any(e.stage == "sent" for e in rep):
            orig = list(events)  # no send of its own: the replay's producer events are the message's (adopt1)

        def at(stage: str) -> list[Event]:
            return [e for e in orig if e.stage == stage]

        acks, recvs = at("broker_acked"), at("received")
        ack = max(acks, key=lambda e: e.ts_us) if acks else None
        recv = min(recvs, key=lambda e: e.ts_us) if recvs else None
        errs = [e for e in orig if e.error]
        rerrs = [e for e in rep if e.error]
        known = [e for e in orig if e.stage in STAGE_BITS]
        return cls(
            mask=_mask(orig), rmask=_mask(rep),
            n_recv=len({e.event_id for e in recvs}), n_done=len({e.event_id for e in at("business_done")}),
            sent_ts=min((e.ts_us for e in at("sent")), default=0),
            last_sent_ts=max((e.ts_us for e in at("sent")), default=0),
            sfail_ts=max((e.ts_us for e in at("send_failed")), default=0),
            first_ts=min((e.ts_us for e in known), default=0), last_ts=max((e.ts_us for e in known), default=0),
            ack_ts=ack.ts_us if ack else 0, ack_p=_pos(ack.partition) if ack else -1,
            ack_o=_pos(ack.offset) if ack else -1,
            rb_ts=max((e.ts_us for e in at("rolled_back")), default=0),
            recv_ts=recv.ts_us if recv else 0, recv_p=_pos(recv.partition) if recv else -1,
            recv_o=_pos(recv.offset) if recv else -1,
            commit_ts=max((e.ts_us for e in at("offset_committed")), default=0),
            commit_o=max((_pos(e.offset) for e in at("offset_committed")), default=-1),
            done_ts=max((e.ts_us for e in at("business_done")), default=0),
            bfail_ts=max((e.ts_us for e in at("business_failed")), default=0),
            dl_ts=max((e.ts_us for e in at("dead_lettered")), default=0),
            error=(max(errs, key=lambda e: e.ts_us).error or "") if errs else "",
            replay_ts=min((e.ts_us for e in rep), default=0),
            replay_done_ts=max((e.ts_us for e in rep if e.stage == "business_done"), default=0),
            replay_error=(max(rerrs, key=lambda e: e.ts_us).error or "") if rerrs else "")


def pairs_from_events(msg_id: str, events: Sequence[Event], groups: Iterable[str] = (),
                      cut: int = 0) -> list[PairFacts]:
    """The pairs reconcile_pairs.sql returns for one message (no window), from its events: one per
    group seen for it and per group in ``groups`` (or one with no group)."""
    by_side: dict[str, list[Event]] = {}
    for e in events:
        by_side.setdefault(_side(e), []).append(e)
    sides = {g: _Side.of(es, producer=not g) for g, es in by_side.items()}
    p = sides.get("")
    seen = sorted(g for g in sides if g)
    any_cmask = 0
    for g in seen:
        any_cmask |= sides[g].mask
    recv_g = next((sides[g] for g in seen if sides[g].recv_ts > 0), None)
    pmask = p.mask if p else 0
    sent_ts = p.sent_ts if p else 0
    firsts = [s.first_ts for s in sides.values() if s.first_ts > 0]
    msg_time = sent_ts or min(firsts, default=0)
    own = [e for e in events if e.topic and not _is_replay(e)]
    topic = (next((e.topic for e in own if e.stage in _TOPIC_STAGES and e.stage in _PRODUCER), "")
             or next((e.topic for e in own if e.stage == "received"), "")
             or next((e.topic for e in own), "")
             or next((e.topic for e in events if e.topic), ""))
    replay_topic = next((e.topic for e in events if e.topic and _is_replay(e)), "")
    trace_id = next((e.trace_id for e in events if e.trace_id), "") or ""
    ack_ts = p.ack_ts if p else 0
    rb_ts = p.rb_ts if p else 0
    rb_open = rb_ts > 0 and not ((p.last_sent_ts if p else 0) > rb_ts and ack_ts > rb_ts)
    replayed = [e for e in events if _is_replay(e)]  # the latest replay run, as reconcile_replay_runs.sql
    replay_run = max(replayed, key=lambda e: e.ts_us).attrs[R.REPLAY_ATTR] if replayed else ""
    replay_ts = min((s.replay_ts for s in sides.values() if s.replay_ts), default=0)
    out: list[PairFacts] = []
    for grp in list(dict.fromkeys(seen + sorted(set(groups)))) or [""]:
        f = sides.get(grp) if grp else None
        out.append(PairFacts(
            msg_id=msg_id, consumer_group=grp, topic=topic, msg_time=msg_time, pmask=pmask,
            cmask=f.mask if f else 0, any_cmask=any_cmask, n_recv=f.n_recv if f else 0,
            n_done=f.n_done if f else 0, sent_ts=sent_ts, sfail_ts=p.sfail_ts if p else 0, ack_ts=ack_ts,
            ack_p=p.ack_p if p else -1, ack_o=p.ack_o if p else -1,
            loc_p=(p.ack_p if p else -1) if ack_ts else (recv_g.recv_p if recv_g else -1),
            loc_o=(p.ack_o if p else -1) if ack_ts else (recv_g.recv_o if recv_g else -1),
            recv_ts=f.recv_ts if f else 0, commit_ts=f.commit_ts if f else 0,
            commit_o=f.commit_o if f else -1, done_ts=f.done_ts if f else 0,
            bfail_ts=f.bfail_ts if f else 0, dl_ts=f.dl_ts if f else 0,
            last_ts=f.last_ts if f else (p.last_ts if p else 0), rb_ts=rb_ts, rb_open=rb_open,
            replay_mask=(p.rmask if p else 0) | (f.rmask if f else 0),
            replay_run=replay_run if (p.rmask if p else 0) | (f.rmask if f else 0) else "",
            replay_ts=replay_ts, replay_done_ts=f.replay_done_ts if f else 0,
            replay_error=(p.replay_error if p else "") or (f.replay_error if f else ""), replay_topic=replay_topic,
            p_error=p.error if p else "", c_error=f.error if f else "", trace_id=trace_id, cut=cut))
    txn = half_txn(by_side.get("", ()))
    if txn:  # read for the pairs the rules leave unacked only, as passes.pass2 does
        for pf in out:
            if R.decide(pf)[0] == V.UNACKED:
                pf.txn_id = txn
    return out
