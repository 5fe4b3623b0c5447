"""``msgtrace incident``: what happened in a window, for the people on call.

:func:`analyse_incident` judges the window as the reconciler does (without storing the run), then:

1. locates the non-delivered messages (where each side ran; ``incident_locate.sql``, by key);
2. reads the window's instances (``incident_instances.sql``) and derives the consumer-side and audit
   signals (:mod:`tracer.analysis.signals`);
3. merges the non-delivered pairs into bursts with a cause in words (:mod:`tracer.analysis.bursts`);
4. measures the stage funnel over time and the hop latencies (:mod:`tracer.analysis.funnel`).

Every step is ClickHouse SQL from ``queries/``; Python holds only the reconcile's listed pairs and
aggregated rows. The older terminal "clusters" (verdict x stopped at x topic x partition x host x
minute) stay in the JSON for scripts that read them.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tracer import verdicts as V
from tracer.analysis import bursts as B
from tracer.analysis import funnel as F
from tracer.analysis import rules as R
from tracer.analysis import signals as S
from tracer.analysis.evidence import fmt_us
from tracer.analysis.expected import Staging
from tracer.analysis.reconcile import reconcile
from tracer.analysis.result import ReconcileResult
from tracer.analysis.sql import render
from tracer.analysis.window import GRACE_S, LOOKBACK_S
from tracer.store import Store

HOPS = tuple(F.HOPS)
Cluster = tuple[str, str, str, int, str, int]  # verdict, stopped_at, topic, partition, host, minute (µs)
Progress = Callable[[str], None]


@dataclass(slots=True)
class IncidentReport:
    result: ReconcileResult
    bursts: list[B.Burst] = field(default_factory=list)
    funnel: F.Funnel = field(default_factory=lambda: F.Funnel(60))
    signals: S.Signals = field(default_factory=S.Signals)
    where: dict[str, B.Located] = field(default_factory=dict, repr=False)

    @property
    def clusters(self) -> list[tuple[Cluster, int]]:
        """(verdict, stopped_at, topic, partition, host/pid, minute) -> pairs, most first (the older view)."""
        out: dict[Cluster, int] = {}
        res = self.result
        for r in res.rows:
            if r.verdict == V.DELIVERED:
                continue
            side, _ = B.KIND[r.verdict]
            loc = self.where.get(r.msg_id)
            key = "" if side is B.Side.PRODUCER or side is B.Side.BROKER else r.consumer_group
            host = (loc.instance.get(key) or loc.instance.get("")) if loc else None
            f = r.facts
            t = ((f.last_ts or f.msg_time) if f is not None else 0) or res.window_from_us
            k = (r.verdict, r.stopped_at, r.topic, f.loc_p if f is not None else -1, host or "?",
                 t - t % 60_000_000)
            out[k] = out.get(k, 0) + 1
        return sorted(out.items(), key=lambda kv: (-kv[1], kv[0]))

    def to_json(self, top: int | None = None) -> dict[str, Any]:
        cl = self.clusters
        cl = cl if top is None else cl[:top]
        res = self.result
        return {
            "run_id": res.run_id,
            "window": res.window_json(),
            "summary": res.summary,
            "total": res.total,
            "lost": res.lost,
            "loss_rate": round(res.loss_rate, 6),
            "bursts": [b.to_json() for b in self.bursts],
            "signals": self.signals.to_json(),
            "funnel": [r.to_json() for r in self.funnel.totals],
            "timeline": self.funnel.to_json(),
            "clusters": [{"verdict": v, "stopped_at": s, "topic": t, "partition": p, "host": h,
                          "minute": fmt_us(m)[:16] + "Z", "pairs": n} for (v, s, t, p, h, m), n in cl],
        }


def analyse_incident(store: Store, window_from_us: int, window_to_us: int, grace_s: int = GRACE_S, *,
                     groups: Sequence[str] | None = None, lookback_s: int = LOOKBACK_S,
                     now_us: int | None = None, progress: Progress | None = None, expected: Any = None,
                     bootstrap: str | None = None, broker: Any = None, gap_s: int = B.GAP_S,
                     bucket_s: int = 60) -> IncidentReport:
    """Judge the window (without storing), find its bursts and signals, and measure the funnel."""
    with store.session():
        res = reconcile(store, window_from_us, window_to_us, grace_s, groups=groups, lookback_s=lookback_s,
                        now_us=now_us, write=False, progress=progress, expected=expected, bootstrap=bootstrap,
                        broker=broker)
        return explain(store, res, progress=progress, gap_s=gap_s, bucket_s=bucket_s, groups=groups)


def explain(store: Store, res: ReconcileResult, *, progress: Progress | None = None, gap_s: int = B.GAP_S,
            bucket_s: int = 60, groups: Sequence[str] | None = None, funnel: bool = True) -> IncidentReport:
    """Bursts, signals and the funnel of a reconcile result (``reconcile --out x.html`` uses it too)."""
    rep = IncidentReport(res)
    with store.session():
        if res.rows:
            _say(progress, f"locating {len({r.msg_id for r in res.rows})} messages")
            rep.where = locate(store, sorted({r.msg_id for r in res.rows}), res)
        _say(progress, "reading the instances of the window")
        inst = S.instances(store, res.window)
        rep.signals = S.collect(inst, res.rows, rep.where, res.seq_gaps)
        rep.bursts = B.make_bursts(res.rows, rep.where, gap_s)
        _link(rep)
        if funnel:
            _say(progress, "measuring the stage funnel over time")
            w = res.window
            rep.funnel = F.measure(store, w, _topic_groups(res, groups),
                                   F.bucket_seconds((w.to_us - w.from_us) / 1e6, bucket_s))
    return rep


def locate(store: Store, msg_ids: list[str], res: ReconcileResult) -> dict[str, B.Located]:
    """Where each side of the listed messages ran, over the run's scanned range (by key)."""
    with Staging(store, "l" + res.run_id) as staging:
        table = staging.ids(msg_ids, "")
        rows = store.query(render("incident_locate", ids=table, producer_stages=R.stage_list_sql(R.PRODUCER_STAGES)),
                           res.window.scan())
    return B.located(rows)


def _topic_groups(res: ReconcileResult, groups: Sequence[str] | None) -> dict[str, set[str]]:
    """The groups judged on each topic (the funnel counts every message for each of them)."""
    tg: dict[str, set[str]] = {}
    for _, topic, group in res.counts:
        if topic:
            tg.setdefault(topic, set())
            if group:
                tg[topic].add(group)
    if groups:
        for t in tg:
            tg[t] = set(groups)
    return tg


#: causes that an instance stopping right after its last pair explains (it held the work)
_CRASH_EXPLAINS = frozenset({B.Cause.COMMITTED_BEFORE_DONE, B.Cause.AWAITING_REDELIVERY, B.Cause.NO_BROKER_ANSWER})


def _link(rep: IncidentReport) -> None:
    """Put the stopped instances into the words of the bursts they explain."""
    stopped = {i.name: i for i in rep.signals.stopped}
    producers = [f"{i.service} {i.name} at {fmt_us(i.last_us)[11:23]}" for i in rep.signals.stopped if not i.groups]
    for b in rep.bursts:
        if b.cause in _CRASH_EXPLAINS:
            for name in sorted(b.instances):
                i = stopped.get(name)
                if i is not None and b.end_us and 0 <= i.last_us - b.end_us <= B.GAP_S * 1_000_000:
                    b.stopped_instances.append(f"{name} (last event {fmt_us(i.last_us)[11:23]})")
        b.text = B.describe(b, producers if b.cause is B.Cause.PRODUCER_SKIPPED_SEND else None)


def _say(progress: Progress | None, text: str) -> None:
    if progress:
        progress(text)
