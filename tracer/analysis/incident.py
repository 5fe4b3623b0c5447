"""``msgtrace incident``: where a window's losses cluster (verdict x stopped at x topic x partition
x host x minute), the stage funnel and the hop latencies per (topic, group)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from tracer import verdicts as V
from tracer.analysis import rules as R
from tracer.analysis.evidence import fmt_us
from tracer.analysis.expected import Staging
from tracer.analysis.reconcile import reconcile
from tracer.analysis.result import ReconcileResult
from tracer.analysis.sql import render
from tracer.analysis.window import GRACE_S, LOOKBACK_S
from tracer.events import Stage
from tracer.store import Store

_PRODUCER_SIDE = frozenset({V.NEVER_SENT, V.SEND_FAILED, V.UNACKED, V.LOST_IN_BROKER, V.PENDING_IN_BROKER,
                            V.EXPIRED_IN_BROKER, V.ROLLED_BACK})
HOPS = ("sent_acked", "acked_received", "received_done", "sent_done")
Cluster = tuple[str, str, str, int, str, int]  # verdict, stopped_at, topic, partition, host, minute (µs)
Progress = Callable[[str], None]


@dataclass(slots=True)
class IncidentReport:
    result: ReconcileResult
    #: (verdict, stopped_at, topic, partition, host, minute_us) -> pairs, most first
    clusters: list[tuple[Cluster, int]]
    #: per (topic, group): messages reaching each stage and hop latency quantiles (µs)
    funnel: list[dict[str, Any]]

    def to_json(self, top: int | None = None) -> dict[str, Any]:
        cl = self.clusters if top is None else self.clusters[:top]
        return {
            "run_id": self.result.run_id,
            "window": self.result.window_json(),
            "summary": self.result.summary,
            "lost": self.result.lost,
            "loss_rate": round(self.result.loss_rate, 6),
            "clusters": [{"verdict": v, "stopped_at": s, "topic": t, "partition": p, "host": h,
                          "minute": fmt_us(m)[:16] + "Z", "pairs": n} for (v, s, t, p, h, m), n in cl],
            "funnel": self.funnel,
        }


def funnel_sql() -> str:
    counts = ", ".join(f"countIf(bitAnd({'pmask' if s in R.PRODUCER_STAGES else 'cm'}, {R.bit(s)}) != 0) AS {s.value}"
                       for s in Stage)
    return render("incident_funnel", stage_counts=counts, stage_bit=R.stage_bit_sql(),
                  producer_stages=R.stage_list_sql(R.PRODUCER_STAGES))


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
            hosts = last_hosts(store, sorted({r.msg_id for r in bad}), res)
        clusters: dict[Cluster, int] = {}
        for r in bad:
            side = "" if r.verdict in _PRODUCER_SIDE else r.consumer_group
            host = hosts.get((r.msg_id, side)) or hosts.get((r.msg_id, "")) or "?"
            f = r.facts
            part = f.loc_p if f is not None else -1
            t = ((f.last_ts or f.msg_time) if f is not None else 0) or res.window_from_us
            key = (r.verdict, r.stopped_at, r.topic, int(part), host, t - t % 60_000_000)
            clusters[key] = clusters.get(key, 0) + 1
        if progress:
            progress("measuring the stage funnel and hop latencies")
        funnel = store.query(funnel_sql(), res.window.params())
    for row in funnel:
        for hop in HOPS:
            q = row.pop(f"lat_{hop}")
            row[f"latency_{hop}_us"] = {k: (None if v != v else round(v)) for k, v in zip(("p50", "p90", "p99"), q)}
    ordered = sorted(clusters.items(), key=lambda kv: (-kv[1], kv[0]))
    return IncidentReport(res, ordered, funnel)


def last_hosts(store: Store, msg_ids: list[str], res: ReconcileResult) -> dict[tuple[str, str], str]:
    """host/pid where each message's stages last ran, per side, over the run's scanned range."""
    with Staging(store, "h" + res.run_id) as staging:
        table = staging.ids(msg_ids, "")
        rows = store.query(render("incident_hosts", ids=table, producer_stages=R.stage_list_sql(R.PRODUCER_STAGES)),
                           res.window.scan())
    return {(r["msg_id"], r["g"]): f"{r['last_host']}/{r['last_pid']}" for r in rows}
