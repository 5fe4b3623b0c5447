"""The two passes over a window's events.

Pass 1 sorts the window's messages into plainly delivered ones, counted per (topic, group) and
never read again, and candidates for pass 2. Usually one lean ``GROUP BY msg_id``
(``reconcile_scan_msg.sql``) that also finds the groups expected on each topic; when the consumer
stages of a message belong to several groups (fan-out, seen in the first receipts by
``reconcile_groups_hint.sql`` or by pass 1 itself) or the window has another shape it cannot
judge, ``reconcile_topic_groups.sql`` + ``reconcile_scan.sql`` judge every (message, group) pair.

Pass 2 (``reconcile_pairs.sql``) computes the :class:`~tracer.analysis.facts.PairFacts` of every
pair of the candidate messages, staged in a table, counting receipts and outcomes by rows first
(no read of ``event_id``, the widest column) and again exactly for the few messages where a
duplicated audit event could inflate a count.

Every decision expression in these queries is generated from :mod:`tracer.analysis.rules`.
Their results come back as JSONCompact (``small=True``), not Arrow: a few thousand rows of 36
columns cost ~0.1-0.2 s less CPU that way on chDB (benchmarks/results/reconcile.md), and the
typed JSON path gives the same values (the store's tests compare both).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache
from typing import Any, Protocol

from tracer import verdicts as V
from tracer.analysis import rules as R
from tracer.analysis.facts import NO_TXN_ID, PairFacts
from tracer.analysis.sql import Ident, in_table, render
from tracer.analysis.window import FAR_FUTURE_US, Window
from tracer.store import Store

#: try pass 1 by message first; tests switch it off to compare with the per-pair path
MSG_SCAN = True

#: pass 2's column for each fact the rules read
PAIR_NAMES: dict[str, str] = {"pmask": "pmask", "cmask": "cm", "any_cmask": "any_cmask", "n_recv": "n_recv",
                              "n_done": "n_done", "rb_open": "rb_open", "replay_mask": "replay_mask"}
#: pass 1 per pair: rollbacks and replays are left to pass 2 (never plain: see reconcile_scan.sql)
_SCAN_NAMES: dict[str, str] = {**PAIR_NAMES, "rb_open": "0", "replay_mask": "0"}
#: pass 1 by message, where each stage occurs once (n = its bit) and the group is the message's only one; a
#: replay event (its bit in masks) counts as every stage of the message replayed: never plain
_MSG_NAMES: dict[str, str] = {
    "pmask": "pm", "cmask": "cm", "any_cmask": "cm", "rb_open": "0",
    "replay_mask": f"if(bitAnd(masks, {R.REPLAY_BIT}) != 0, bitAnd(masks, {R.ALL_STAGES_MASK}), 0)",
    "n_recv": f"toUInt8(bitAnd(cm, {R.RECEIVED}) != 0)", "n_done": f"toUInt8(bitAnd(cm, {R.BUSINESS_DONE}) != 0)"}

_EXACT_COUNTS = ("uniqExactIf(event_id, st = 'received') AS nrecv1, "
                 "uniqExactIf(event_id, st = 'business_done') AS ndone1, toUInt8(0) AS unsure1")
#: by rows: exact unless a count could include a duplicated audit event (more than two rows, or two
#: rows with one ts_us: a duplicate repeats its ts_us)
_ROW_COUNTS = ("countIf(st = 'received') AS nrecv1, countIf(st = 'business_done') AS ndone1, "
               "toUInt8(nrecv1 > 2 OR (nrecv1 = 2 AND minIf(ts_us, st = 'received') = maxIf(ts_us, st = 'received')) "
               "OR ndone1 > 2 "
               "OR (ndone1 = 2 AND minIf(ts_us, st = 'business_done') = maxIf(ts_us, st = 'business_done'))"
               ") AS unsure1")
_GROUP_FILTER = (f"AND (stage IN {R.stage_list_sql(R.PRODUCER_STAGES)} "
                 "OR has({groups:Array(String)}, ifNull(consumer_group, '')))")


def _stage_parts() -> dict[str, str]:
    return {"stage_bit": R.stage_bit_sql(), "producer_mask": str(R.PRODUCER_MASK),
            "consumer_mask": str(R.CONSUMER_MASK), "replay_bit": str(R.REPLAY_BIT),
            "received_bit": str(R.RECEIVED), "sent_bit": str(R.SENT)}


@lru_cache(maxsize=16)
def pairs_sql(events: str, exact: bool = True) -> str:
    """Pass 2 (``reconcile_pairs.sql``) for the events ``events`` selects (a generated fragment)."""
    return render("reconcile_pairs", events=events, counts=_EXACT_COUNTS if exact else _ROW_COUNTS,
                  verdict=R.verdict_sql(PAIR_NAMES), flags=R.flags_sql(PAIR_NAMES), stage_bit=R.stage_bit_sql(),
                  producer_stages=R.stage_list_sql(R.PRODUCER_STAGES))


def _judge_extra(expected: Ident | None, hashed: bool = False) -> str:
    if not expected:
        return ""
    if hashed:  # pass 1 by message groups by cityHash64(msg_id)
        return f"OR h IN (SELECT cityHash64(msg_id) FROM {{db:Identifier}}.`{expected.name}`)"
    return f"OR {in_table('msg_id', expected)}"


@lru_cache(maxsize=16)
def scan_msg_sql(expected: Ident | None, one_group: bool) -> str:
    parts = _stage_parts()
    plain = R.plain_sql(_MSG_NAMES)
    return render("reconcile_scan_msg", judge_extra=_judge_extra(expected, hashed=True),
                  group_filter=_GROUP_FILTER if one_group else "", plain=plain,
                  once=R.popcount_sql("masks", R.ALL_STAGES_MASK), **parts)


@lru_cache(maxsize=16)
def scan_pairs_sql(expected: Ident | None) -> str:
    return render("reconcile_scan", judge_extra=_judge_extra(expected), plain=R.plain_sql(_SCAN_NAMES),
                  done_bit=str(R.BUSINESS_DONE), **_stage_parts())


# --- pass 1 ---------------------------------------------------------------------------------

class Kind(IntEnum):
    """Row kinds of reconcile_scan_msg.sql."""

    PLAIN = 0
    CANDIDATE = 1
    OUTSIDE = 3
    SHAPE = 4


@dataclass(slots=True)
class TopicGroups:
    """The consumer groups expected on each topic (those seen receiving from it in the window)."""

    topics: list[str] = field(default_factory=list)
    groups: list[list[str]] = field(default_factory=list)

    def params(self) -> dict[str, Any]:
        # 18.16 cannot CAST an empty [] to Array(Array(String)): a harmless entry that adds no group
        return {"topics": self.topics or [""], "topic_groups": self.groups or [[]]}

    @property
    def fan_out(self) -> bool:
        return any(len(g) > 1 for g in self.groups)


@dataclass(slots=True)
class Pass1:
    """What pass 1 found: plainly delivered counts per (topic, group) and the candidates: whole
    messages (by message: pass 2 judges all their pairs) or named pairs (per pair)."""

    by_message: bool
    topic_groups: TopicGroups
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    messages: set[str] = field(default_factory=set)
    hashes: set[int] = field(default_factory=set)  # by message: cityHash64 of the candidates' msg_id
    pairs: set[tuple[str, str]] = field(default_factory=set)

    @property
    def candidates(self) -> int:
        return len(self.messages) + len(self.hashes)


@dataclass(frozen=True, slots=True)
class Scope:
    """Which pairs a run judges: the window, the groups named (None: those seen), the expected ids."""

    window: Window
    groups: tuple[str, ...] | None = None
    expected: Ident | None = None

    def params(self) -> dict[str, Any]:
        gs = list(self.groups or ())
        return {**self.window.params(), "restrict_groups": 1 if self.groups else 0, "groups": gs}


Progress = Callable[[str], None]


@dataclass(slots=True)
class Hint:
    """What the first receipts of the window (reconcile_groups_hint.sql) show: the (topic, group)
    names behind pass 1's hashes, and whether some topic has several groups (fan-out)."""

    topics: dict[int, str] = field(default_factory=dict)
    groups: dict[int, str] = field(default_factory=dict)
    fan_out: bool = False

    def add(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            self.topics.setdefault(r["th"], r["topic"])
            self.groups.setdefault(r["gh"], r["consumer_group"])


def hint(store: Store, window: Window) -> Hint:
    rows = store.query(render("reconcile_groups_hint"), {"from_us": window.from_us, "cut": window.cut_us},
                       small=True)
    h = Hint()
    h.add(rows)
    seen: dict[str, set[str]] = {}
    for r in rows:
        seen.setdefault(r["topic"], set()).add(r["consumer_group"])
    h.fan_out = any(len(g) > 1 for g in seen.values())
    return h


def fan_out_hint(store: Store, window: Window) -> bool:
    """True if the first receipts of the window show a topic received by several groups."""
    return hint(store, window).fan_out


def topic_groups(store: Store, window: Window) -> TopicGroups:
    rows = store.query(render("reconcile_topic_groups"), {"from_us": window.from_us, "cut": window.cut_us}, small=True)
    return TopicGroups([r["t"] for r in rows], [sorted(r["gs"]) for r in rows])


def _by_message(store: Store, scope: Scope, names: Hint) -> Pass1 | None:
    """reconcile_scan_msg.sql; None when the window has a shape it cannot judge (Kind.SHAPE)."""
    rows = store.query(scan_msg_sql(scope.expected, scope.groups is not None), scope.params(), small=True)
    if any(r["kind"] == Kind.SHAPE for r in rows):
        return None
    need = {(r["th"], r["gh"]) for r in rows if r["kind"] == Kind.PLAIN or r["recvwin"]}
    names.groups.setdefault(0, "")
    missing = sorted({th for th, gh in need if th not in names.topics or gh not in names.groups})
    if missing:
        names.add(store.query(render("reconcile_names"), {"from_us": scope.window.from_us,
                                                          "cut": scope.window.cut_us, "ths": missing}, small=True))
        if any(th not in names.topics or gh not in names.groups for th, gh in need):
            return None
    tname, gname = names.topics, names.groups
    tg: dict[str, set[str]] = {}
    for r in rows:
        if r["recvwin"]:
            tg.setdefault(tname[r["th"]], set()).add(gname[r["gh"]])
    topics = sorted(tg)
    out = Pass1(True, TopicGroups(topics, [sorted(tg[t]) for t in topics]))
    only = scope.groups[0] if scope.groups else None
    for r in rows:
        if r["kind"] == Kind.PLAIN:
            key = (tname[r["th"]], only or gname[r["gh"]])
            out.counts[key] = out.counts.get(key, 0) + r["n"]
        elif r["kind"] == Kind.CANDIDATE:
            out.hashes.add(r["mid"])
    return out


def _by_pair(store: Store, scope: Scope, tg: TopicGroups) -> Pass1:
    rows = store.query(scan_pairs_sql(scope.expected), {**scope.params(), **tg.params()}, small=True)
    out = Pass1(False, tg)
    for r in rows:
        if r["mid"]:
            out.pairs.add((r["mid"], r["consumer_group"]))
        else:
            key = (r["topic"], r["consumer_group"])
            out.counts[key] = out.counts.get(key, 0) + r["n"]
    out.messages = {m for m, _ in out.pairs}
    return out


def pass1(store: Store, scope: Scope) -> Pass1:
    """Plainly delivered counts and the candidates of the window (see the module docstring)."""
    groups = scope.groups
    first = hint(store, scope.window) if MSG_SCAN and (not groups or len(groups) == 1) else None
    try_msg = first is not None and (len(groups) == 1 if groups else not first.fan_out)
    found = _by_message(store, scope, first) if first is not None and try_msg else None
    if found is not None and (groups or not found.topic_groups.fan_out):
        if groups:
            found.topic_groups = TopicGroups()
        return found
    if groups:
        tg = TopicGroups()
    elif found is not None:  # fan-out: the groups per topic are known already
        tg = found.topic_groups
    else:
        tg = topic_groups(store, scope.window)
    return _by_pair(store, scope, tg)


# --- pass 2 ----------------------------------------------------------------------------------

#: above this many candidate messages, pass 2 selects their events by hash directly (their events
#: are then in nearly every granule anyway) instead of resolving the ids first and reading by key
RESOLVE_MAX = 1000


class Stager(Protocol):
    def ids(self, ids: Sequence[str], tag: str) -> Ident: ...

    def hashes(self, hashes: Sequence[int], tag: str) -> Ident: ...


@dataclass(slots=True)
class Decided:
    """A pair as pass 2 returns it: its facts and the verdict and flags the generated SQL named."""

    facts: PairFacts
    verdict: str
    flags: list[str]

    @classmethod
    def from_row(cls, row: dict[str, Any], cut: int) -> Decided:
        return cls(PairFacts.from_row(row, cut), row["verdict"], list(row["flags"]))


def pass2(store: Store, scope: Scope, first: Pass1, stage: Stager) -> list[Decided]:
    """The facts of every pair of the candidate messages (staged in tables by ``stage``)."""
    if not first.candidates:
        return []
    params = {**scope.params(), **first.topic_groups.params()}
    cut = scope.window.cut_us
    if first.hashes and len(first.hashes) > RESOLVE_MAX:
        table = stage.hashes(sorted(first.hashes), "k")
        events = f"cityHash64(msg_id) IN (SELECT h FROM {{db:Identifier}}.`{table.name}`)"
    else:
        ids = set(first.messages)
        if first.hashes:
            table = stage.hashes(sorted(first.hashes), "k")
            ids |= {r["msg_id"] for r in store.query(render("reconcile_resolve", hashes=table), scope.window.scan(),
                                                       small=True)}
        if not ids:
            return []
        events = in_table("msg_id", stage.ids(sorted(ids), "c"))
    # by message: counted by rows first; messages whose counts may include duplicates again exactly
    rows = store.query(pairs_sql(events, exact=not first.by_message), params, small=True)
    unsure = sorted({r["msg_id"] for r in rows if r["unsure"]})
    if unsure:
        again = set(unsure)
        rows = [r for r in rows if r["msg_id"] not in again] + \
            store.query(pairs_sql(in_table("msg_id", stage.ids(unsure, "u")), exact=True), params, small=True)
    return _with_half_messages(store, _with_replay_runs(store, [Decided.from_row(r, cut) for r in rows],
                                                        scope.window.scan()), scope.window.scan())


def _with_half_messages(store: Store, decided: list[Decided], scan: dict[str, Any]) -> list[Decided]:
    """Fill in the transaction of the unacked pairs' half messages (RocketMQ; few; read by key,
    reconcile_half_sends.sql): their evidence names the transaction in doubt."""
    ids = sorted({d.facts.msg_id for d in decided if d.verdict == V.UNACKED})
    if ids:
        txn = {r["msg_id"]: r["txn_id"] or NO_TXN_ID for r in store.query(render("reconcile_half_sends"),
                                                                         {**scan, "ids": ids}, small=True)}
        for d in decided:
            if d.verdict == V.UNACKED:
                d.facts.txn_id = txn.get(d.facts.msg_id, "")
    return decided


def _with_replay_runs(store: Store, decided: list[Decided], scan: dict[str, Any]) -> list[Decided]:
    """Fill in the replay run of the replayed messages (few; read by key, reconcile_replay_runs.sql)."""
    ids = sorted({d.facts.msg_id for d in decided if d.facts.replay_mask})
    if ids:
        runs = {r["msg_id"]: r["replay_run"] for r in store.query(render("reconcile_replay_runs"),
                                                                   {**scan, "ids": ids}, small=True)}
        for d in decided:
            d.facts.replay_run = runs.get(d.facts.msg_id, "") if d.facts.replay_mask else ""
    return decided


def one_message(store: Store, msg_id: str, groups: Sequence[str], cut: int) -> list[Decided]:
    """Pass 2 for one message and no window: the reference of the Python judge (slower to plan)."""
    params = {"scan_from": 0, "cut": FAR_FUTURE_US, "restrict_groups": 0, "groups": sorted(set(groups)),
              "topics": [""], "topic_groups": [[]], "msg_id": msg_id}
    rows = store.query(pairs_sql("msg_id = {msg_id:String}"), params, small=True)
    scan = {"scan_from": 0, "cut": FAR_FUTURE_US}
    return _with_half_messages(store, _with_replay_runs(store, [Decided.from_row(r, cut) for r in rows], scan), scan)


def never_sent(store: Store, window: Window, expected: Ident) -> list[tuple[str, int]]:
    """Expected ids with no event in the scanned range, each with its expected time (µs; 0: none given)."""
    return [(r["msg_id"], int(r["ts_us"])) for r in
            store.query(render("reconcile_never_sent", expected=expected), window.scan())]


