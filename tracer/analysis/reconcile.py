"""The reconciler: one verdict per (message, consumer group), with evidence and remedy.

All heavy work is ClickHouse SQL from ``queries/``, in two passes:

1. usually ``reconcile_scan_msg.sql``: one lean GROUP BY msg_id (packed bitmasks, hashed topic and
   group) that also finds the groups expected on each topic; plainly delivered messages come back as
   one count per topic and group, every other message by its id. It needs every message's consumer
   stages to belong to one group: with fan-out (``reconcile_groups_hint.sql`` sees it in the first
   receipts, or pass 1 by message finds it), ``reconcile_topic_groups.sql`` + ``reconcile_scan*.sql``
   judge every (msg_id, group) pair instead;
2. ``reconcile_pairs.sql`` collects the facts that decide those pairs (times, partitions, offsets,
   errors, exact counts) for their messages only.

Python then handles just those pairs: it decides ``lost_in_broker`` versus ``pending_in_broker`` from
evidence that survives offset reuse, flags emitter seq gaps, writes the evidence in words, and
stores the run and its verdicts back in ClickHouse. ``never_sent`` comes from expected ids staged
in ClickHouse by a columnar insert.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator, Sequence

from tracer import verdicts as V
from tracer.errors import describe
from tracer.store import Store, check_identifier, load_sql

log = logging.getLogger("msgtrace.reconcile")

GRACE_S = 600
LOOKBACK_S = 86400
_FAR_FUTURE_US = 2**62
_CONSUMER_BITS = {"received": 8, "offset_committed": 16, "business_done": 32, "business_failed": 64,
                  "dead_lettered": 128}
_BITS = {"sent": 1, "send_failed": 2, "broker_acked": 4, **_CONSUMER_BITS}
#: Pipeline order for "the furthest stage reached" (an outcome is further than a commit).
_ORDER = ("sent", "send_failed", "broker_acked", "received", "offset_committed", "business_failed",
          "dead_lettered", "business_done")
_FRAG_WINDOW = "(msg_time >= {from_us:UInt64} AND msg_time < {to_us:UInt64}) OR expected = 1"
_FRAG_ONE_MSG = "AND msg_id = {msg_id:String}"
#: try pass 1 by message (reconcile_scan_msg.sql) first; tests switch it off to compare with the per-pair path
_MSG_SCAN = True
Progress = Callable[[str], None]


def fmt_us(ts_us: int) -> str:
    """ISO 8601 UTC with milliseconds."""
    if not ts_us:
        return "-"
    return datetime.fromtimestamp(ts_us / 1e6, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(slots=True)
class Verdict:
    """The judgement of one (msg_id, consumer group) pair."""

    msg_id: str
    consumer_group: str
    topic: str
    verdict: str
    stopped_at: str
    flags: list[str]
    evidence: str = ""
    remedy: str = ""
    decided_by: str = ""  # for lost_in_broker / pending_in_broker: which evidence decided
    count: int = 1  # > 1 only for collapsed plainly delivered pairs (msg_id == "")
    facts: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def lost(self) -> bool:
        return self.verdict in V.LOST

    def to_json(self, full: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {"msg_id": self.msg_id, "consumer_group": self.consumer_group, "topic": self.topic,
                             "verdict": self.verdict, "stopped_at": self.stopped_at, "flags": list(self.flags)}
        if full:
            d.update(evidence=self.evidence, remedy=self.remedy, trace_id=self.facts.get("trace_id") or None)
        return d


@dataclass(slots=True)
class ReconcileResult:
    run_id: str
    window_from_us: int
    window_to_us: int
    grace_s: int
    cut_us: int
    started_us: int
    finished_us: int = 0
    #: (verdict, topic, consumer_group) -> pairs
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    #: every pair that is not plainly delivered (delivered with flags included)
    rows: list[Verdict] = field(default_factory=list)
    expected_count: int = 0
    seq_gaps: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, int]:
        s: dict[str, int] = {}
        for (v, _, _), n in self.counts.items():
            s[v] = s.get(v, 0) + n
        return {v: s[v] for v in V.VERDICTS if v in s}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def lost(self) -> int:
        return sum(n for (v, _, _), n in self.counts.items() if v in V.LOST)

    @property
    def loss_rate(self) -> float:
        return self.lost / self.total if self.total else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "window": {"from": fmt_us(self.window_from_us), "to": fmt_us(self.window_to_us),
                       "grace_s": self.grace_s, "judged_until": fmt_us(self.cut_us)},
            "summary": self.summary,
            "total": self.total,
            "lost": self.lost,
            "loss_rate": round(self.loss_rate, 6),
            "by_topic_group": [{"verdict": v, "topic": t, "consumer_group": g, "count": n}
                               for (v, t, g), n in sorted(self.counts.items(), key=_count_key)],
            "messages": [r.to_json() for r in self.rows],
        }


def _count_key(item: tuple[tuple[str, str, str], int]) -> tuple[int, str, str]:
    (v, t, g), _ = item
    return (V.VERDICTS.index(v) if v in V.VERDICTS else 99, t, g)


# --- SQL -------------------------------------------------------------------------

#: reconcile_pairs.sql's receipt / outcome counts by rows (no event_id read); exact unless ``unsure1``
_FRAG_ROW_COUNTS = """countIf(stage = 'received') AS nrecv1,
                    countIf(stage = 'business_done') AS ndone1,
                    toUInt8(nrecv1 > 2 OR (nrecv1 = 2 AND minIf(ts_us, stage = 'received') = maxIf(ts_us, stage = 'received'))
                            OR ndone1 > 2 OR (ndone1 = 2 AND minIf(ts_us, stage = 'business_done')
                                                             = maxIf(ts_us, stage = 'business_done'))) AS unsure1,"""


def pairs_sql(*, one_msg: bool = False, cand_table: str | None = None, row_counts: bool = False) -> str:
    """``reconcile_pairs.sql`` (pass 2) with its fixed fragments filled in: for one message, for the
    candidate messages in a staging table, or (neither) for a whole window. ``row_counts``: count
    receipts and outcomes by rows (exact where ``unsure`` = 0: one event is one row, and two rows
    with different ts_us are two events, as a duplicated audit event repeats its ts_us)."""
    sql = load_sql("reconcile_pairs")
    if row_counts:
        a, b = sql.index("/*COUNTS*/"), sql.index("/*END_COUNTS*/") + len("/*END_COUNTS*/")
        sql = sql[:a] + _FRAG_ROW_COUNTS + sql[b:]
    if one_msg:
        filt = _FRAG_ONE_MSG
    elif cand_table:
        filt = "AND msg_id IN (SELECT msg_id FROM {db:Identifier}.`%s`)" % check_identifier(cand_table, "table name")
    else:
        filt = ""
    sql = sql.replace("/*EVENT_FILTER*/", filt)
    sql = sql.replace("/*EXPECTED_UNION*/", "")
    sql = sql.replace("/*JUDGE_FILTER*/", "1" if (one_msg or cand_table) else _FRAG_WINDOW)
    return sql


def scan_sql(single: bool, expected_table: str | None) -> str:
    """Pass 1: ``reconcile_scan_single.sql`` (at most one group per topic) or ``reconcile_scan.sql``."""
    sql = load_sql("reconcile_scan_single" if single else "reconcile_scan")
    extra = ""
    if expected_table:
        extra = "OR msg_id IN (SELECT msg_id FROM {db:Identifier}.`%s`)" % check_identifier(expected_table, "table name")
    return sql.replace("/*JUDGE_EXTRA*/", extra)


_FRAG_ONE_GROUP = ("AND (stage IN ('sent', 'send_failed', 'broker_acked') "
                   "OR ifNull(consumer_group, '') = {group:String})")


def scan_msg_sql(expected_table: str | None, one_group: bool = False) -> str:
    """Pass 1 by message (``reconcile_scan_msg.sql``), with the expected ids judged too if given, and
    only the producer stages and the named group's stages with ``one_group``."""
    extra = ""
    if expected_table:
        extra = "OR msg_id IN (SELECT msg_id FROM {db:Identifier}.`%s`)" % check_identifier(expected_table, "table name")
    sql = load_sql("reconcile_scan_msg").replace("/*JUDGE_EXTRA*/", extra)
    return sql.replace("/*GROUP_FILTER*/", _FRAG_ONE_GROUP if one_group else "")


@dataclass(slots=True)
class _MsgScan:
    """What pass 1 by message found: the groups expected per topic, plainly delivered counts per
    (topic, group), and the messages pass 2 must judge. ``fan_out``: some topic has more than one
    group, so the per-pair pass 1 (reconcile_scan.sql) must judge the window instead."""

    topics: list[str]
    groups: list[list[str]]
    counts: dict[tuple[str, str, str], int]
    cand_msgs: list[str]
    fan_out: bool


def _scan_by_message(store: Store, params: dict[str, Any], table: str | None,
                     restrict: str | None) -> _MsgScan | None:
    """Run ``reconcile_scan_msg.sql``; None when its shape does not hold (kind 4 rows): the caller then
    uses the topic-groups scan and the per-pair pass 1."""
    rows = _run(store, scan_msg_sql(table, restrict is not None), params)
    if any(r["kind"] == 4 for r in rows):
        return None
    # names of the hashes: one sample message per (topic, group) pair, read by primary key
    need = {}
    for r in rows:
        if r["kind"] == 0 or r["recvwin"]:
            need.setdefault((r["th"], r["gh"]), r["sample"])
    tname: dict[int, str] = {}
    gname: dict[int, str] = {0: ""}
    if need:
        for r in store.query_file("reconcile_names", {"ids": sorted(set(need.values())),
                                                      "scan_from": params["scan_from"], "cut": params["cut"]},
                                  small=True):
            tname.setdefault(r["th"], r["topic"])
            gname.setdefault(r["gh"], r["g"])
        if any(th not in tname or gh not in gname for th, gh in need):
            return None
    tg: dict[str, set[str]] = {}
    for r in rows:
        if r["recvwin"]:
            tg.setdefault(tname[r["th"]], set()).add(gname[r["gh"]])
    topics = sorted(tg)
    groups = [sorted(tg[t]) for t in topics]
    fan_out = restrict is None and any(len(g) > 1 for g in groups)
    counts: dict[tuple[str, str, str], int] = {}
    cand: list[str] = []
    for r in rows:
        if r["kind"] == 0:
            key = (V.DELIVERED, tname[r["th"]], restrict or gname[r["gh"]])
            counts[key] = counts.get(key, 0) + r["n"]
        elif r["kind"] == 1:
            cand.append(r["mid"])
    return _MsgScan(topics, groups, counts, cand, fan_out)


def _fan_out_hint(store: Store, from_us: int, cut: int) -> bool:
    """True if the first receipts of the window (10000, reconcile_groups_hint.sql) show a topic
    received by several groups."""
    rows = store.query_file("reconcile_groups_hint", {"from_us": from_us, "cut": cut}, small=True)
    return bool(rows and rows[0]["n"])


def _topic_groups(store: Store, from_us: int, cut: int) -> tuple[list[str], list[list[str]]]:
    rows = store.query_file("reconcile_topic_groups", {"from_us": from_us, "cut": cut})
    topics, groups = [r["t"] for r in rows], [sorted(r["gs"]) for r in rows]
    return _nonempty(topics, groups)


def _nonempty(topics: list[str], groups: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    """18.16 cannot CAST an empty [] to Array(Array(String)): add a harmless entry that adds no group."""
    return (topics, groups) if topics else ([""], [[]])


def _run(store: Store, sql: str, params: dict[str, Any], small: bool = False) -> list[dict[str, Any]]:
    return store.query(sql, params, small=small)


# --- verdict rows ----------------------------------------------------------------

def _furthest(mask: int) -> str:
    reached = [s for s in _ORDER if mask & _BITS[s]]
    return reached[-1] if reached else "none"


def _stopped_at(verdict: str, pmask: int, cmask: int) -> str:
    if verdict == V.AUDIT_GAP:
        return _furthest(pmask | cmask)
    if verdict == V.IN_FLIGHT and cmask & 64:
        return "business_failed"
    return V.STOPPED_AT.get(verdict, "none")


def _loc(r: dict[str, Any]) -> str:
    p, o = r["loc_p"], r["loc_o"]
    return f"{r['topic']}/{p}@{o}" if p is not None and p >= 0 else (r["topic"] or "?")


def _audit_gap_text(r: dict[str, Any]) -> str:
    pm, cm = r["pmask"], r["cmask"]
    have = [s for s in _ORDER if (pm | cm) & _BITS[s]]
    if not pm & 3:
        missing = "sent"
    elif pm & 4 and not pm & 1:
        missing = "sent (before broker_acked)"
    else:
        missing = "received"
    return f"recorded {', '.join(have) or 'nothing'} but no {missing}: the audit lost events"


def evidence_text(r: dict[str, Any], verdict: str) -> str:
    """The events that decide the verdict, in words."""
    v = verdict
    if v == V.DELIVERED:
        return f"business_done at {fmt_us(r['done_ts'])}" + (f" ({r['n_done']} times)" if r["n_done"] > 1 else "")
    if v == V.NEVER_SENT:
        return "expected by the source of truth; no event recorded at all"
    if v == V.SEND_FAILED:
        return f"send_failed at {fmt_us(r['sfail_ts'])}: {r['p_error'] or 'no error text'}; never broker_acked"
    if v == V.UNACKED:
        return f"sent at {fmt_us(r['sent_ts'])}; no broker_acked and no send_failed by {fmt_us(r['cut'])}"
    if v in (V.LOST_IN_BROKER, V.PENDING_IN_BROKER):
        at = f"broker_acked at {_loc(r)} at {fmt_us(r['ack_ts'])}" if r["ack_ts"] else \
            f"stored by the broker at {_loc(r)} (another group received it; the ack was lost)"
        return f"{at}; never received by this group"
    if v == V.LOST_IN_CONSUMER:
        return (f"received at {fmt_us(r['recv_ts'])}; offset_committed at {fmt_us(r['commit_ts'])} "
                f"(offset {r['commit_o']}); no business_done or business_failed")
    if v == V.FAILED_AND_COMMITTED:
        return (f"business_failed at {fmt_us(r['bfail_ts'])}: {r['c_error'] or 'no error text'}; "
                f"offset_committed at {fmt_us(r['commit_ts'])}; no later business_done")
    if v == V.IN_FLIGHT:
        failed = f"; business_failed at {fmt_us(r['bfail_ts'])}" if r["bfail_ts"] else ""
        return f"received at {fmt_us(r['recv_ts'])}{failed}; not committed, no outcome by {fmt_us(r['cut'])}"
    if v == V.DEAD_LETTERED:
        return f"dead_lettered at {fmt_us(r['dl_ts'])}; no business_done"
    if v == V.AUDIT_GAP:
        return _audit_gap_text(r)
    return ""


def make_verdict(r: dict[str, Any]) -> Verdict:
    v = r["verdict"]
    flags = list(r["flags"])
    return Verdict(msg_id=r["mid"], consumer_group=r["consumer_group"], topic=r["topic"], verdict=v,
                   stopped_at=_stopped_at(v, r["pmask"], r["cmask"]), flags=flags,
                   evidence=evidence_text(r, v), remedy=V.REMEDY.get(v, ""), count=r["n"], facts=r)


# --- lost_in_broker versus pending_in_broker ----------------------------------------

@dataclass(slots=True)
class BrokerEvidence:
    """Inputs of the broker decision: where to look and, optionally, live Kafka."""

    scan_from: int
    cut: int
    bootstrap: str | None = None
    max_partitions: int = 500
    #: messages known not to be received by their topic's group (pending_in_broker after pass 1 by
    #: message): lets the frontier be found from the latest acks (see _frontier); None: the full query
    skip: frozenset[str] | None = None
    #: (topic, group, partition) -> committed offset read live; one read each per run, shared by the
    #: broker and the consumer decisions
    _live: dict[tuple[str, str, int], int | None] = field(default_factory=dict, init=False, repr=False)

    def committed(self, topic: str, group: str, part: int) -> int | None:
        """The group's committed offset on (topic, partition), read live from ``bootstrap`` once."""
        key = (topic, group, part)
        if key not in self._live:
            self._live[key] = live_committed(self.bootstrap, group, topic, part) if self.bootstrap else None
        return self._live[key]


def _cand_ts(r: dict[str, Any]) -> int:
    return r["ack_ts"] or r["sfail_ts"] or r["sent_ts"] or r["msg_time"]


def decide_broker(store: Store, rows: list[Verdict], ev: BrokerEvidence, progress: Progress | None = None) -> None:
    """Turn ``pending_in_broker`` into ``lost_in_broker`` where evidence shows the group passed the message.

    Evidence, strongest first: (1) the group received a message acked later (by ack time) on the same
    partition -- holds even when offsets were reused after a broker lost its log; (2) the group received
    or committed an offset beyond this one in the same log epoch (between detected resets); (3) with
    ``bootstrap``, the group's committed offset read live from Kafka, used only when no reset followed.
    """
    cands = [r for r in rows if r.verdict == V.PENDING_IN_BROKER]
    for r in cands:
        if not r.consumer_group:
            r.decided_by = "no consumer group seen on the topic"
            r.evidence += "; no consumer group is known for this topic (name one with --group)"
    cands = [r for r in cands if r.consumer_group and r.facts["loc_p"] is not None and r.facts["loc_p"] >= 0]
    if not cands:
        return
    if progress:
        progress(f"checking broker evidence for {len(cands)} pairs")
    topics = sorted({r.topic for r in cands})
    groups = sorted({r.consumer_group for r in cands})
    parts = sorted({int(r.facts["loc_p"]) for r in cands})
    frontier = _frontier(store, cands, ev, topics, groups, parts)
    undecided: list[Verdict] = []
    for r in cands:
        f = frontier.get((r.topic, r.facts["loc_p"], r.consumer_group))
        ts = _cand_ts(r.facts)
        if f and f["frontier_ack_ts"] > ts:
            reused = " (its offset is not higher: the broker's log was reset and offsets reused)" \
                if f["frontier_off"] <= r.facts["loc_o"] else ""
            _mark_lost(r, "later_acked_received",
                       f"the group received {f['frontier_msg']!r}, acked later on the same partition at "
                       f"offset {f['frontier_off']} at {fmt_us(f['frontier_ack_ts'])}{reused}")
        else:
            undecided.append(r)
    by_part: dict[tuple[str, int], list[Verdict]] = {}
    for r in undecided:
        by_part.setdefault((r.topic, r.facts["loc_p"]), []).append(r)
    for topic, part, rs, resets, prog in _by_epoch(store, ev, by_part, ["received", "offset_committed"]):
        for r in rs:
            ts = _cand_ts(r.facts)
            seg = sum(1 for x in resets if x <= ts)
            p = prog.get((r.consumer_group, seg))
            if p and p["max_off"] > r.facts["loc_o"]:
                _mark_lost(r, "offset_passed_same_epoch",
                           f"the group's {p['by_stage']} reached offset {p['max_off']} on partition {part} "
                           f"({p['by_msg']!r} at {fmt_us(p['at_ts'])}) in the same log epoch")
                continue
            later_reset = seg < len(resets)
            if ev.bootstrap and not later_reset:
                c = ev.committed(topic, r.consumer_group, part)
                if c is not None and c > r.facts["loc_o"]:
                    _mark_lost(r, "live_committed_offset",
                               f"Kafka reports the group's committed offset {c} on partition {part} (live)")
                    continue
            why = "the broker's log was reset after the ack (offsets reused); no later evidence" if later_reset \
                else "the group has not reached this offset yet"
            r.decided_by = "no_evidence_of_passing"
            r.evidence += f"; {why}"


def _by_epoch(store: Store, ev: BrokerEvidence, by_part: dict[tuple[str, int], list[Verdict]],
              stages: list[str]) -> Iterator[tuple[str, int, list[Verdict], list[int], dict[tuple[str, int], Any]]]:
    """Per (topic, partition) in question (at most ``ev.max_partitions``): its log resets and how far each
    group got in each log epoch by ``stages`` (reconcile_resets.sql, reconcile_progress.sql)."""
    for n, ((topic, part), rs) in enumerate(sorted(by_part.items())):
        if n >= ev.max_partitions:
            for r in rs:
                r.decided_by = "not checked (too many partitions)"
            continue
        base = {"topic": topic, "part": part, "scan_from": ev.scan_from, "cut": ev.cut}
        resets = [int(x) for x in store.query_file("reconcile_resets", base, small=True)[0]["resets"]]
        prog = {(p["consumer_group"], p["seg"]): p for p in store.query_file(
            "reconcile_progress", {**base, "resets": resets, "groups": sorted({r.consumer_group for r in rs}),
                                   "stages": stages}, small=True)}
        yield topic, part, rs, resets, prog


def _frontier(store: Store, cands: list[Verdict], ev: BrokerEvidence, topics: list[str], groups: list[str],
              parts: list[int]) -> dict[tuple[str, int, str], dict[str, Any]]:
    """``reconcile_frontier.sql``'s answer: per (topic, partition, group), the latest ack among the
    messages the group received on the given partitions.

    With ``ev.skip`` and one group per topic, first from the latest ack per partition among the other
    messages (``reconcile_frontier_latest.sql``), checked against that message's own events: if the
    group received it on these partitions and its latest ack is that one, every message acked later
    on the partition is in ``skip`` (never received by the group), so it is the answer. Any answer
    that fails the check sends the whole question to ``reconcile_frontier.sql``.
    """
    base = {"scan_from": ev.scan_from, "cut": ev.cut, "topics": topics, "parts": parts}
    group_of: dict[str, set[str]] = {}
    for r in cands:
        group_of.setdefault(r.topic, set()).add(r.consumer_group)
    if ev.skip is not None and all(len(g) == 1 for g in group_of.values()):
        latest = store.query_file("reconcile_frontier_latest", {**base, "skip": sorted(ev.skip)}, small=True)
        ids = sorted({x["msg"] for x in latest})
        evs: dict[str, list[dict[str, Any]]] = {}
        if ids:
            for e in store.query_file("reconcile_frontier_check", {**base, "ids": ids}, small=True):
                if e["topic"] in topics and e["part"] in parts:  # reconcile_frontier.sql's row filter
                    evs.setdefault(e["msg_id"], []).append(e)
        out: dict[tuple[str, int, str], dict[str, Any]] = {}
        asked = {(r.topic, r.facts["loc_p"]) for r in cands}
        for x in latest:
            if (x["topic"], x["part"]) not in asked:  # another topic's partition: not in question
                continue
            (g,) = group_of[x["topic"]]
            f = _message_frontier(evs.get(x["msg"], []))
            if f is None or f[0] != x["topic"] or f[1] != x["part"] or f[2] != x["ack_ts"] or g not in f[4]:
                break
            out[(x["topic"], x["part"], g)] = {"topic": x["topic"], "part": x["part"], "consumer_group": g,
                                               "frontier_ack_ts": f[2], "frontier_msg": x["msg"],
                                               "frontier_off": f[3]}
        else:
            return out
    return {(f["topic"], f["part"], f["consumer_group"]): f for f in store.query_file(
        "reconcile_frontier", {**base, "groups": groups}, small=True)}


def _message_frontier(events: list[dict[str, Any]]) -> tuple[str, int, int, int, set[str]] | None:
    """(topic, partition, ack time, ack offset, groups that received it) of one message as
    reconcile_frontier.sql sees it; None when it has no ack or the SQL's pick would be arbitrary."""
    acks = [e for e in events if e["stage"] == "broker_acked"]
    if not acks:
        return None
    ack = max(e["ts_us"] for e in acks)
    top = {(e["part"], e["off"]) for e in acks if e["ts_us"] == ack}
    named = {e["topic"] for e in events if e["topic"] != ""}
    if len(top) != 1 or len(named) > 1:
        return None
    (part, off), = top
    return (next(iter(named), ""), part, ack, off, {e["g"] for e in events if e["stage"] == "received"})


def _mark_lost(r: Verdict, by: str, text: str) -> None:
    r.verdict = V.LOST_IN_BROKER
    r.remedy = V.REMEDY[V.LOST_IN_BROKER]
    r.decided_by = by
    r.evidence += f"; decided by {by}: {text}"


def decide_consumer(store: Store, rows: list[Verdict], ev: BrokerEvidence, progress: Progress | None = None) -> None:
    """Turn ``in_flight`` into ``lost_in_consumer`` (``failed_and_committed`` after a business_failed)
    where the group's committed offset passed the message after it was received: the group moved on
    and will not redeliver it, though no ``offset_committed`` names this message. That is a consumer
    killed after its commit reached the broker but before it read the answer, or another member that
    took over past it. Evidence: (1) an ``offset_committed`` of the group on the partition beyond the
    message's offset, later than its receipt, in the same log epoch; (2) with ``bootstrap`` and no
    log reset since, the group's committed offset read live from Kafka.
    """
    def known(v: Any) -> bool:
        return v is not None and v >= 0

    cands = [r for r in rows if r.verdict == V.IN_FLIGHT and r.consumer_group
             and known(r.facts.get("loc_p")) and known(r.facts.get("loc_o"))]
    if not cands:
        return
    if progress:
        progress(f"checking the committed offsets of {len(cands)} pairs in flight")
    by_part: dict[tuple[str, int], list[Verdict]] = {}
    for r in cands:
        by_part.setdefault((r.topic, int(r.facts["loc_p"])), []).append(r)
    for topic, part, rs, resets, prog in _by_epoch(store, ev, by_part, ["offset_committed"]):
        for r in rs:
            recv_ts = r.facts.get("recv_ts") or _cand_ts(r.facts)
            seg = sum(1 for x in resets if x <= recv_ts)
            p = prog.get((r.consumer_group, seg))
            if p and p["max_off"] > r.facts["loc_o"] and p["at_ts"] >= recv_ts:
                _mark_consumer_lost(r, "committed_offset_passed",
                                    f"the group committed offset {p['max_off']} on partition {part} "
                                    f"({p['by_msg']!r} at {fmt_us(p['at_ts'])}) in the same log epoch")
                continue
            if ev.bootstrap and seg == len(resets):
                c = ev.committed(topic, r.consumer_group, part)
                if c is not None and c > r.facts["loc_o"]:
                    _mark_consumer_lost(r, "live_committed_offset",
                                        f"Kafka reports the group's committed offset {c} on partition {part} (live)")


def _mark_consumer_lost(r: Verdict, by: str, text: str) -> None:
    f = r.facts
    failed = bool(f.get("bfail_ts"))
    r.verdict = V.FAILED_AND_COMMITTED if failed else V.LOST_IN_CONSUMER
    r.remedy = V.REMEDY[r.verdict]
    r.stopped_at = V.STOPPED_AT[r.verdict]
    r.decided_by = by
    outcome = (f"business_failed at {fmt_us(f['bfail_ts'])}: {f.get('c_error') or 'no error text'}; no later "
               "business_done") if failed else "no business_done or business_failed"
    r.evidence = (f"received at {fmt_us(f['recv_ts'])}; {outcome}; no offset_committed names it, but decided by "
                  f"{by}: {text}")


def live_committed(bootstrap: str, group: str, topic: str, part: int, timeout_s: float = 10.0) -> int | None:
    """The group's committed offset on (topic, partition), asked live from Kafka; None if unknown."""
    try:
        from kafka import KafkaConsumer, TopicPartition

        c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                          request_timeout_ms=int(timeout_s * 1000))
        try:
            return c.committed(TopicPartition(topic, part))
        finally:
            c.close()
    except Exception as e:  # live evidence is optional: without it the verdict stays as the audit says
        log.warning("cannot read the committed offset of group %s on %s/%s from %s: %s", group, topic, part,
                    bootstrap, describe(e))
        return None


# --- emitter seq gaps -----------------------------------------------------------------

def flag_seq_gaps(store: Store, rows: list[Verdict], scan_from: int, cut: int) -> list[dict[str, Any]]:
    """Flag non-delivered verdicts of messages whose emitters show seq gaps in the window."""
    sql = load_sql("reconcile_seq_gaps")
    if store.engine == "chdb":  # an exact distinct count ~2x cheaper than uniqExact; not on 18.16
        sql = sql.replace("uniqExact(seq)", "groupBitmap(seq)")
    gaps = _run(store, sql, {"scan_from": scan_from, "cut": cut}, small=True)
    if not gaps:
        return []
    msgs = {r["msg_id"] for r in store.query_file(
        "reconcile_gap_msgs", {"scan_from": scan_from, "cut": cut, "emitters": [g["emitter_id"] for g in gaps]})}
    for r in rows:
        if r.verdict != V.DELIVERED and r.msg_id in msgs and V.EMITTER_SEQ_GAP not in r.flags:
            r.flags.append(V.EMITTER_SEQ_GAP)
            r.evidence += "; an emitter of this message shows seq gaps in the window (audit events lost)"
    return gaps


# --- the run ------------------------------------------------------------------------

def reconcile(store: Store, window_from_us: int, window_to_us: int, grace_s: int = GRACE_S, *,
              groups: Sequence[str] | None = None, expected: Any = None, bootstrap: str | None = None,
              lookback_s: int = LOOKBACK_S, now_us: int | None = None, write: bool = True,
              progress: Progress | None = None) -> ReconcileResult:
    """Judge every (msg_id, consumer group) pair of the window [from, to).

    ``groups`` names the consumer groups to judge (default: those seen receiving from each topic in the
    window). ``expected`` is an :class:`tracer.expected.ExpectedSource` (ids that should have been sent).
    Events up to ``to + grace`` (or now, if earlier) count; events from ``lookback_s`` before the window
    are read so that a message sent earlier is not mistaken for one without ``sent``.
    """
    if window_to_us <= window_from_us:
        from tracer.errors import ConfigError

        raise ConfigError(f"empty window: --to ({fmt_us(window_to_us)}) must be after --from "
                          f"({fmt_us(window_from_us)})")
    now = now_us if now_us is not None else time.time_ns() // 1000
    cut = min(window_to_us + grace_s * 1_000_000, max(now, window_from_us + 1))
    scan_from = max(0, window_from_us - lookback_s * 1_000_000)
    res = ReconcileResult(run_id=uuid.uuid4().hex, window_from_us=window_from_us, window_to_us=window_to_us,
                          grace_s=grace_s, cut_us=cut, started_us=now)
    res.params = {"groups": list(groups or []), "lookback_s": lookback_s,
                  "expected": getattr(expected, "describe", lambda: None)() if expected is not None else None,
                  "bootstrap": bool(bootstrap)}
    with store.session():
        tables: list[str] = []
        try:
            table = None
            if expected is not None:
                if progress:
                    progress("loading expected ids")
                from tracer.analysis.expected import load_expected

                table, res.expected_count = load_expected(store, expected, res.run_id)
                tables.append(table)
            if progress:
                progress("judging every message and group (pass 1)")
            params = {"scan_from": scan_from, "cut": cut, "from_us": window_from_us, "to_us": window_to_us,
                      "restrict_groups": 1 if groups else 0, "groups": list(groups or []),
                      "group": groups[0] if groups else "", "collapse": 0}
            # usual case first: one GROUP BY msg_id that also finds the groups expected per topic,
            # unless a quick look at the first receipts shows fan-out (several groups on a topic)
            try_msg = _MSG_SCAN and (len(groups) == 1 if groups else not _fan_out_hint(store, window_from_us, cut))
            ms = _scan_by_message(store, params, table, groups[0] if groups else None) if try_msg else None
            cand: set[tuple[str, str]] = set()
            cand_msgs: set[str] = set()
            by_msg = ms is not None and not ms.fan_out
            if by_msg:
                topics, tgroups = _nonempty(ms.topics, ms.groups) if not groups else _nonempty([], [])
                res.counts.update(ms.counts)
                cand_msgs = set(ms.cand_msgs)
            else:
                if groups:
                    topics, tgroups = _nonempty([], [])
                elif ms is not None:  # fan-out: the groups per topic are known already
                    topics, tgroups = _nonempty(ms.topics, ms.groups)
                else:
                    topics, tgroups = _topic_groups(store, window_from_us, cut)
                single = len(groups) == 1 if groups else all(len(g) <= 1 for g in tgroups)
                params.update(topics=topics, topic_groups=tgroups,
                              first_groups=[g[0] if g else "" for g in tgroups])
                scanned = _run(store, scan_sql(single, table), params)
                for r in scanned:
                    if r["mid"]:
                        cand.add((r["mid"], r["consumer_group"]))
                    else:
                        key = (V.VERDICTS[r["vcode"]], r["topic"], r["consumer_group"])
                        res.counts[key] = res.counts.get(key, 0) + r["n"]
                cand_msgs = {m for m, _ in cand}
            params.update(topics=topics, topic_groups=tgroups, first_groups=[g[0] if g else "" for g in tgroups])
            details: list[dict[str, Any]] = []
            others: list[dict[str, Any]] = []  # pass 2's pairs of candidate messages that pass 1 did not name
            if cand_msgs:
                if progress:
                    progress(f"collecting evidence for {len(cand_msgs)} messages (pass 2)")
                from tracer.analysis.expected import load_expected

                ctable, _ = load_expected(store, _IdList(sorted(cand_msgs)), "c" + res.run_id)
                tables.append(ctable)
                # pass 1 by message hands over whole messages: every pair of them is judged here,
                # counted by rows first; messages whose counts duplicated rows may inflate again exactly
                details = []
                for r in _run(store, pairs_sql(cand_table=ctable, row_counts=by_msg), params):
                    (details if not cand or (r["mid"], r["consumer_group"]) in cand else others).append(r)
                unsure = sorted({r["mid"] for r in details if r["unsure"]})
                if unsure:
                    utable, _ = load_expected(store, _IdList(unsure), "u" + res.run_id)
                    tables.append(utable)
                    again = set(unsure)
                    details = [r for r in details if r["mid"] not in again] + \
                        _run(store, pairs_sql(cand_table=utable), params)
            never = []
            if table:
                never = [r["msg_id"] for r in store.query(
                    load_sql("reconcile_never_sent").replace("__TABLE__", table), {"scan_from": scan_from, "cut": cut})]
        finally:
            if tables:
                from tracer.analysis.expected import drop_expected

                for t in tables:
                    drop_expected(store, t)
        for r in details:
            r["cut"] = cut
        found = {(r["mid"], r["consumer_group"]) for r in details}
        res.rows = [make_verdict(r) for r in details]
        missing = sorted(cand - found) if cand else [(m, "") for m in sorted(cand_msgs - {m for m, _ in found})]
        if missing and cand:
            # Pass 1 by pair names a message's groups by its topic's receipts in [from, cut); pass 2 by
            # the message's own events. When its consumer events lie outside [from, cut) (clock skew at
            # the window's edge, a quiet topic) the two can differ. A pair pass 1 named and pass 2 did
            # not is then a naming artifact, not a gap: the message is judged by pass 2's pairs (those
            # pass 1 did not name are added, except plainly delivered ones, which pass 1 may have counted).
            lost_names = {m for m, _ in missing}
            for r in others:
                if r["mid"] in lost_names:
                    r["cut"] = cut
                    v = make_verdict(r)
                    if not (v.verdict == V.DELIVERED and not v.flags):
                        res.rows.append(v)
            judged = {r["mid"] for r in details} | {r["mid"] for r in others}
            missing = [(m, g) for m, g in missing if m not in judged]
        for m, g in missing:  # cannot happen unless events changed between the passes
            res.rows.append(Verdict(m, g, "", V.AUDIT_GAP, "none", [], evidence="events changed during the run"))
        for m in never:
            for g in (groups or [""]):
                res.rows.append(Verdict(m, g, "", V.NEVER_SENT, "none", [], evidence=evidence_text({}, V.NEVER_SENT),
                                        remedy=V.REMEDY[V.NEVER_SENT], facts={"msg_time": 0}))
        plain = [v for v in res.rows if v.verdict == V.DELIVERED and not v.flags]
        res.rows = [v for v in res.rows if not (v.verdict == V.DELIVERED and not v.flags)]
        for v in plain:
            key = (v.verdict, v.topic, v.consumer_group)
            res.counts[key] = res.counts.get(key, 0) + 1
        if res.rows:
            skip = frozenset(v.msg_id for v in res.rows if v.verdict == V.PENDING_IN_BROKER) if by_msg else None
            ev = BrokerEvidence(scan_from, cut, bootstrap, skip=skip)
            decide_broker(store, res.rows, ev, progress)
            decide_consumer(store, res.rows, ev, progress)
            if progress:
                progress("checking emitter seq gaps")
            res.seq_gaps = flag_seq_gaps(store, res.rows, scan_from, cut)
        for v in res.rows:
            key = (v.verdict, v.topic, v.consumer_group)
            res.counts[key] = res.counts.get(key, 0) + 1
        res.rows.sort(key=lambda v: (V.VERDICTS.index(v.verdict), v.topic, v.consumer_group, v.msg_id))
        res.finished_us = time.time_ns() // 1000
        if write:
            if progress:
                progress(f"writing {len(res.rows)} verdicts")
            write_result(store, res)
    return res


def write_result(store: Store, res: ReconcileResult) -> None:
    """The run row (reconcile_runs) and one verdict row per pair not plainly delivered (verdicts)."""
    import orjson

    judged = res.finished_us or time.time_ns() // 1000
    rows = res.rows
    if rows:
        store.insert("verdicts", {
            "run_id": [res.run_id] * len(rows), "judged_us": [judged] * len(rows),
            "msg_id": [r.msg_id for r in rows], "consumer_group": [r.consumer_group for r in rows],
            "topic": [r.topic for r in rows], "verdict": [r.verdict for r in rows],
            "stopped_at": [r.stopped_at for r in rows], "flags": [list(r.flags) for r in rows],
            "evidence": [r.evidence for r in rows]})
    summary = res.summary
    store.command(load_sql("reconcile_write_run"), {
        "run_id": res.run_id, "started_us": res.started_us, "finished_us": judged,
        "window_from_us": res.window_from_us, "window_to_us": res.window_to_us, "grace_s": res.grace_s,
        "params": orjson.dumps(res.params).decode(), "verdict_names": list(summary),
        "verdict_counts": list(summary.values())})


# --- one message (trace-msg) ---------------------------------------------------------

_PRODUCER = frozenset({"sent", "send_failed", "broker_acked"})


def _group_facts(events: Sequence[Any]) -> dict[str, Any]:
    """Level 1 of reconcile_pairs.sql for one (msg_id, g), in Python."""
    def mx(stage: str) -> int:
        return max((e.ts_us for e in events if e.stage == stage), default=0)

    def arg(stage: str, pick: Callable) -> Any:
        es = [e for e in events if e.stage == stage]
        return pick(es, key=lambda e: e.ts_us) if es else None

    ack, recv = arg("broker_acked", max), arg("received", min)
    errs = [e for e in events if e.error]
    commits = [e.offset if e.offset is not None else -1 for e in events if e.stage == "offset_committed"]
    return {
        "mask": _mask(e.stage for e in events),
        "n_recv": len({e.event_id for e in events if e.stage == "received"}),
        "n_done": len({e.event_id for e in events if e.stage == "business_done"}),
        "sent_ts": min((e.ts_us for e in events if e.stage == "sent"), default=0),
        "sfail_ts": mx("send_failed"),
        "first_ts": min(e.ts_us for e in events), "last_ts": max(e.ts_us for e in events),
        "ack_ts": mx("broker_acked"),
        "ack_p": _int(ack.partition) if ack else 0, "ack_o": _int(ack.offset) if ack else 0,
        "recv_ts": recv.ts_us if recv else 0,
        "recv_p": _int(recv.partition) if recv else 0, "recv_o": _int(recv.offset) if recv else 0,
        "commit_ts": mx("offset_committed"), "commit_o": max(commits, default=0),
        "done_ts": mx("business_done"), "bfail_ts": mx("business_failed"), "dl_ts": mx("dead_lettered"),
        "error": max(errs, key=lambda e: e.ts_us).error if errs else "",
        "topic": next((e.topic for e in events if e.topic), ""),
        "trace_id": next((e.trace_id for e in events if e.trace_id), ""),
    }


def _int(v: int | None) -> int:
    return -1 if v is None else v


def _mask(stages: Iterable[str]) -> int:
    m = 0
    for s in stages:
        m |= _BITS.get(s, 0)
    return m


def judge_events(msg_id: str, events: Sequence[Any], groups: Iterable[str] = (), now_us: int = 0) -> list[dict]:
    """The rows reconcile_pairs.sql returns for one message (no window), computed from its few events.

    trace-msg uses this: ClickHouse needs ~0.15 s just to analyse the big query, more than a whole
    trace-msg may take. tests/test_tracemsg.py checks it gives the SQL's verdicts on every scenario.
    """
    by_g: dict[str, list[Any]] = {}
    for e in events:
        g = "" if e.stage in _PRODUCER else (e.consumer_group or "(no group)")
        by_g.setdefault(g, []).append(e)
    facts = {g: _group_facts(es) for g, es in by_g.items()}
    p = facts.get("") or {k: 0 for k in ("mask", "sent_ts", "sfail_ts", "ack_ts", "ack_p", "ack_o", "last_ts")}
    p.setdefault("error", "")
    seen = sorted(g for g in facts if g)
    any_cmask = _mask(e.stage for e in events if e.stage not in _PRODUCER)
    recv_g = next((facts[g] for g in seen if facts[g]["recv_ts"] > 0), None)
    pmask = p["mask"]
    sent_ts = p["sent_ts"]
    msg_time = sent_ts or min((f["first_ts"] for f in facts.values()), default=0)
    rows = []
    for grp in list(dict.fromkeys(seen + sorted(set(groups)))) or [""]:
        f = facts.get(grp) if grp else None
        cm = f["mask"] if f else 0
        n_recv, n_done = (f["n_recv"], f["n_done"]) if f else (0, 0)
        stored = bool(pmask & 4) or bool(any_cmask & 248)
        if pmask == 0 and any_cmask == 0:
            verdict = "never_sent"
        elif not pmask & 3 or (pmask & 4 and not pmask & 1) or (cm and not cm & 8):
            verdict = "audit_gap"
        elif n_done > 0:
            verdict = "delivered"
        elif cm & 128:
            verdict = "dead_lettered"
        elif cm & 64 and cm & 16:
            verdict = "failed_and_committed"
        elif cm & 16:
            verdict = "lost_in_consumer"
        elif cm & 8:
            verdict = "in_flight"
        elif stored:
            verdict = "pending_in_broker"
        elif pmask & 2:
            verdict = "send_failed"
        else:
            verdict = "unacked"
        flags = [name for name, on in (("redelivered", n_recv > 1), ("duplicate_processing", n_done > 1),
                                       ("ack_lost", bool(pmask & 2 and not pmask & 4 and any_cmask & 248))) if on]
        ack_ts = p["ack_ts"]
        rows.append({
            "verdict": verdict, "topic": next((e.topic for e in events if e.topic), ""), "consumer_group": grp,
            "mid": msg_id, "n": 1, "flags": flags, "msg_time": msg_time, "pmask": pmask, "cmask": cm,
            "any_cmask": any_cmask, "n_recv": n_recv, "n_done": n_done, "sent_ts": sent_ts,
            "sfail_ts": p["sfail_ts"], "ack_ts": ack_ts, "ack_p": p["ack_p"], "ack_o": p["ack_o"],
            "loc_p": p["ack_p"] if ack_ts else (recv_g["recv_p"] if recv_g else 0),
            "loc_o": p["ack_o"] if ack_ts else (recv_g["recv_o"] if recv_g else 0),
            "recv_ts": f["recv_ts"] if f else 0, "commit_ts": f["commit_ts"] if f else 0,
            "commit_o": f["commit_o"] if f else -1, "done_ts": f["done_ts"] if f else 0,
            "bfail_ts": f["bfail_ts"] if f else 0, "dl_ts": f["dl_ts"] if f else 0,
            "last_ts": f["last_ts"] if f else p["last_ts"], "p_error": p["error"],
            "c_error": f["error"] if f else "", "trace_id": next((e.trace_id for e in events if e.trace_id), ""),
            "expected": 0, "cut": now_us})
    return rows


def _groups_around(store: Store, events: Sequence[Any], window_s: int) -> set[str]:
    """Groups seen receiving from the message's topic within ``window_s`` of it (the expected ones)."""
    topic = next((e.topic for e in events if e.topic), "")
    if not topic:
        return set()
    t = min(e.ts_us for e in events)
    rows = store.query_file("trace_msg_topic_groups", {"topic": topic, "lo": max(0, t - window_s * 1_000_000),
                                                       "hi": t + window_s * 1_000_000}, small=True)
    return set(rows[0]["gs"]) if rows else set()


def judge_message(store: Store, msg_id: str, groups: Iterable[str] = (), bootstrap: str | None = None,
                  now_us: int | None = None, events: Sequence[Any] | None = None,
                  topic_groups_window_s: int = 0) -> list[Verdict]:
    """Verdicts of one message for every group seen for it, every group a reconcile run judged it
    for, ``groups``, and (``topic_groups_window_s`` > 0; a scan, slower on big stores) every group
    receiving from its topic within that many seconds of it. No window, no grace."""
    now = now_us if now_us is not None else time.time_ns() // 1000
    if events is None:
        events = store.select_events(msg_id)
    if not events:
        return []
    groups = set(groups) | {r["consumer_group"] for r in store.query_file(
        "trace_msg_stored_groups", {"msg_id": msg_id}, small=True)}
    if topic_groups_window_s:
        groups |= _groups_around(store, events, topic_groups_window_s)
    out = [make_verdict(r) for r in judge_events(msg_id, events, groups, now)]
    pend = [v for v in out if v.verdict == V.PENDING_IN_BROKER]
    if pend:
        ts = min(_cand_ts(v.facts) for v in pend)
        decide_broker(store, out, BrokerEvidence(max(0, ts - LOOKBACK_S * 1_000_000), now + 1, bootstrap))
    flight = [v for v in out if v.verdict == V.IN_FLIGHT]
    if flight:
        ts = min(v.facts.get("recv_ts") or _cand_ts(v.facts) for v in flight)
        decide_consumer(store, out, BrokerEvidence(max(0, ts - LOOKBACK_S * 1_000_000), now + 1, bootstrap))
    if any(v.verdict != V.DELIVERED for v in out):
        flag_seq_gaps(store, out, max(0, min(v.facts["msg_time"] for v in out) - 3600 * 1_000_000), now + 1)
    out.sort(key=lambda v: v.consumer_group)
    return out


def judge_message_sql(store: Store, msg_id: str, groups: Iterable[str] = (), now_us: int | None = None) -> list[dict]:
    """The same rows as :func:`judge_events`, from reconcile_pairs.sql (the reference; slower to plan)."""
    now = now_us if now_us is not None else time.time_ns() // 1000
    params = {"scan_from": 0, "cut": _FAR_FUTURE_US, "from_us": 0, "to_us": _FAR_FUTURE_US,
              "restrict_groups": 0, "groups": sorted(set(groups)), "topics": [""], "topic_groups": [[]],
              "msg_id": msg_id, "collapse": 0}
    rows = store.query(pairs_sql(one_msg=True), params)
    for r in rows:
        r["cut"] = now
        r["mid"] = msg_id
    return rows


# --- incident: where losses cluster ------------------------------------------------------

_PRODUCER_SIDE = frozenset({V.NEVER_SENT, V.SEND_FAILED, V.UNACKED, V.LOST_IN_BROKER, V.PENDING_IN_BROKER})
HOPS = ("sent_acked", "acked_received", "received_done", "sent_done")


@dataclass(slots=True)
class IncidentReport:
    result: ReconcileResult
    #: (verdict, stopped_at, topic, partition, host, minute_us) -> pairs, most first
    clusters: list[tuple[tuple[str, str, str, int, str, int], int]]
    #: per (topic, group): messages reaching each stage and hop latency quantiles (µs)
    funnel: list[dict[str, Any]]

    def to_json(self, top: int | None = None) -> dict[str, Any]:
        cl = self.clusters if top is None else self.clusters[:top]
        return {
            "run_id": self.result.run_id,
            "window": self.result.to_json()["window"],
            "summary": self.result.summary,
            "lost": self.result.lost,
            "loss_rate": round(self.result.loss_rate, 6),
            "clusters": [{"verdict": v, "stopped_at": s, "topic": t, "partition": p, "host": h,
                          "minute": fmt_us(m)[:16] + "Z", "pairs": n} for (v, s, t, p, h, m), n in cl],
            "funnel": self.funnel,
        }


def analyse_incident(store: Store, window_from_us: int, window_to_us: int, grace_s: int = GRACE_S, *,
                     groups: Sequence[str] | None = None, lookback_s: int = LOOKBACK_S,
                     now_us: int | None = None, progress: Progress | None = None) -> IncidentReport:
    """Judge the window (without storing), cluster what was not delivered, and measure the funnel."""
    with store.session():
        res = reconcile(store, window_from_us, window_to_us, grace_s, groups=groups, lookback_s=lookback_s,
                        now_us=now_us, write=False, progress=progress)
        bad = [r for r in res.rows if r.verdict != V.DELIVERED]
        hosts: dict[tuple[str, str], str] = {}
        if bad:
            if progress:
                progress("locating hosts")
            hosts = _last_hosts(store, sorted({r.msg_id for r in bad}), res)
        clusters: dict[tuple[str, str, str, int, str, int], int] = {}
        for r in bad:
            side = "" if r.verdict in _PRODUCER_SIDE else r.consumer_group
            host = hosts.get((r.msg_id, side)) or hosts.get((r.msg_id, "")) or "?"
            f = r.facts
            part = f.get("loc_p", -1) if f.get("loc_p") is not None else -1
            t = f.get("last_ts") or f.get("msg_time") or res.window_from_us
            key = (r.verdict, r.stopped_at, r.topic, int(part), host, t - t % 60_000_000)
            clusters[key] = clusters.get(key, 0) + 1
        if progress:
            progress("measuring the stage funnel and hop latencies")
        scan_from = max(0, window_from_us - lookback_s * 1_000_000)
        funnel = store.query_file("incident_funnel", {"scan_from": scan_from, "cut": res.cut_us,
                                                      "from_us": window_from_us, "to_us": window_to_us})
    for row in funnel:
        for hop in HOPS:
            q = row.pop(f"lat_{hop}")
            row[f"latency_{hop}_us"] = {k: (None if v != v else round(v)) for k, v in zip(("p50", "p90", "p99"), q)}
    ordered = sorted(clusters.items(), key=lambda kv: (-kv[1], kv[0]))
    return IncidentReport(res, ordered, funnel)


def _last_hosts(store: Store, msg_ids: list[str], res: ReconcileResult) -> dict[tuple[str, str], str]:
    from tracer.analysis.expected import drop_expected, load_expected

    table = None
    try:
        table, _ = load_expected(store, _IdList(msg_ids), res.run_id)
        sql = load_sql("incident_hosts").replace("__TABLE__", table)
        rows = store.query(sql, {"scan_from": max(0, res.window_from_us - LOOKBACK_S * 1_000_000),
                                 "cut": res.cut_us})
    finally:
        if table:
            drop_expected(store, table)
    return {(r["msg_id"], r["g"]): f"{r['last_host']}/{r['last_pid']}" for r in rows}


class _IdList:
    """An in-memory id list with the ExpectedSource interface load_expected needs."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids

    def batches(self):
        from tracer.analysis.expected import BATCH

        for i in range(0, len(self.ids), BATCH):
            yield self.ids[i:i + BATCH]
