"""What a run produces: one :class:`Verdict` per pair not plainly delivered, counts of the rest,
and how both are stored (``reconcile_runs``, ``verdicts``) and printed as JSON."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tracer import verdicts as V
from tracer.analysis import rules as R
from tracer.analysis.evidence import evidence_text, fmt_us, remedy
from tracer.analysis.facts import PairFacts
from tracer.analysis.sql import render
from tracer.analysis.window import Window
from tracer.store import Store


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
    decided_by: str = ""  # for a refined verdict: which evidence decided (rules.Evidence)
    facts: PairFacts | None = field(default=None, repr=False)

    @classmethod
    def judge(cls, f: PairFacts, decided: tuple[str, list[str]] | None = None) -> Verdict:
        """The verdict of one pair with its evidence in words: as the SQL decided it (``decided``,
        generated from the rules), else by the rules in Python."""
        verdict, flags = R.checked(*decided) if decided is not None else R.decide(f)
        return cls(f.msg_id, f.consumer_group, f.topic, verdict, R.stopped_at(verdict, f), flags,
                   evidence=evidence_text(f, verdict), remedy=remedy(f, verdict), facts=f)

    @property
    def lost(self) -> bool:
        return self.verdict in V.LOST

    def refine(self, verdict: str, by: str, evidence: str) -> None:
        """Another verdict, decided by outside evidence (rules.REFINEMENTS)."""
        self.verdict = verdict
        self.remedy = V.REMEDY[verdict]
        self.stopped_at = V.STOPPED_AT.get(verdict, self.stopped_at)  # audit_gap: where the events stop
        self.decided_by = by
        self.evidence = evidence

    def to_json(self, full: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {"msg_id": self.msg_id, "consumer_group": self.consumer_group, "topic": self.topic,
                             "verdict": self.verdict, "stopped_at": self.stopped_at, "flags": list(self.flags)}
        if full:
            d.update(evidence=self.evidence, remedy=self.remedy,
                     trace_id=(self.facts.trace_id if self.facts else "") or None)
        return d


@dataclass(slots=True)
class SeqGap:
    """An emitter whose seq numbers in the scanned range have holes: the audit lost its events."""

    emitter_id: str
    lo: int
    hi: int
    n: int
    missing: int


Key = tuple[str, str, str]  # (verdict, topic, consumer group)


@dataclass(slots=True)
class ReconcileResult:
    run_id: str
    window: Window
    started_us: int
    finished_us: int = 0
    #: (verdict, topic, consumer_group) -> pairs
    counts: dict[Key, int] = field(default_factory=dict)
    #: every pair that is not plainly delivered (delivered with flags included)
    rows: list[Verdict] = field(default_factory=list)
    expected_count: int = 0
    seq_gaps: list[SeqGap] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def window_from_us(self) -> int:
        return self.window.from_us

    @property
    def window_to_us(self) -> int:
        return self.window.to_us

    @property
    def grace_s(self) -> int:
        return self.window.grace_s

    @property
    def cut_us(self) -> int:
        return self.window.cut_us

    def count(self, verdict: str, topic: str, group: str, n: int = 1) -> None:
        key = (verdict, topic, group)
        self.counts[key] = self.counts.get(key, 0) + n

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

    @property
    def audit_gaps(self) -> int:
        """Pairs judged ``audit_gap``: the audit lost their events (never counted as lost)."""
        return sum(n for (v, _, _), n in self.counts.items() if v == V.AUDIT_GAP)

    @property
    def audit_complete(self) -> bool:
        """No audit_gap verdict and no emitter with seq gaps: every verdict rests on a whole audit."""
        return not self.audit_gaps and not self.seq_gaps

    def audit_json(self) -> dict[str, Any]:
        return {"complete": self.audit_complete, "audit_gap_pairs": self.audit_gaps,
                "emitters_with_seq_gaps": len(self.seq_gaps),
                "events_missing": sum(g.missing for g in self.seq_gaps),
                "seq_gaps": [{"emitter_id": g.emitter_id, "lo": g.lo, "hi": g.hi, "missing": g.missing}
                             for g in self.seq_gaps],
                "repair": "msgtrace audit-health; msgtrace ship --repair (on each emitter's host)"
                          if not self.audit_complete else None}

    def window_json(self) -> dict[str, Any]:
        w = self.window
        return {"from": fmt_us(w.from_us), "to": fmt_us(w.to_us), "grace_s": w.grace_s,
                "judged_until": fmt_us(w.cut_us)}

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "window": self.window_json(),
            "summary": self.summary,
            "total": self.total,
            "lost": self.lost,
            "loss_rate": round(self.loss_rate, 6),
            "audit_gaps": self.audit_gaps,
            "audit": self.audit_json(),
            "by_topic_group": [{"verdict": v, "topic": t, "consumer_group": g, "count": n}
                               for (v, t, g), n in sorted(self.counts.items(), key=_count_key)],
            "messages": [r.to_json() for r in self.rows],
        }


def _count_key(item: tuple[Key, int]) -> tuple[int, str, str]:
    (v, t, g), _ = item
    return (V.VERDICTS.index(v) if v in V.VERDICTS else 99, t, g)


def verdict_order(v: Verdict) -> tuple[int, str, str, str]:
    return (V.VERDICTS.index(v.verdict), v.topic, v.consumer_group, v.msg_id)


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
    w = res.window
    store.command(render("reconcile_write_run"), {
        "run_id": res.run_id, "started_us": res.started_us, "finished_us": judged,
        "window_from_us": w.from_us, "window_to_us": w.to_us, "grace_s": w.grace_s,
        "params": orjson.dumps(res.params).decode(), "verdict_names": list(summary),
        "verdict_counts": list(summary.values())})
