"""``msgtrace audit-health``: is the audit itself whole? Per service and emitter, from the store and
(``--spool``) the local spool dir.

The store tells, per emitter, how many of its seq numbers it holds, the holes among them with their
time ranges (:mod:`tracer.analysis.gaps`, ``queries/audit_*.sql``) and its last event (an emitter
that went silent); the spool tells what each emitter recorded, shipped, dropped (spool or disk
full), evicted and re-shipped, and how much it retains (:func:`tracer.sdk.repair.spool_states`).
Events shipped but not stored after an emitter's last stored one are shown as in transit or lost.
Holes are closed with ``msgtrace ship --repair`` on the emitter's host.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import click

from tracer.cli.util import EXIT_ERROR, EXIT_OK, handle_errors, json_option, out, store_option


@dataclass(slots=True)
class Row:
    """One emitter, store and spool side by side."""

    emitter_id: str
    service: str = ""
    host: str = ""
    pid: int = 0
    stored: Any = None   # tracer.analysis.gaps.EmitterAudit
    spool: Any = None    # tracer.sdk.repair.SpoolState
    silent: bool = False

    @property
    def holes(self) -> list[Any]:
        return list(self.stored.holes) if self.stored is not None else []

    @property
    def missing(self) -> int:
        return sum(h.missing for h in self.holes)

    @property
    def unstored_tail(self) -> tuple[int, int] | None:
        """Seq numbers shipped (per the spool) after the last stored one: in transit, or lost."""
        if self.spool is None or not self.spool.shipped:
            return None
        lo = (self.stored.hi + 1) if self.stored is not None else 1
        return (lo, self.spool.shipped) if self.spool.shipped >= lo else None

    def to_json(self) -> dict[str, Any]:
        from tracer.analysis.evidence import fmt_us

        s = self.stored
        sp = self.spool.to_json() if self.spool is not None else None
        tail = self.unstored_tail
        return {"emitter_id": self.emitter_id, "service": self.service, "host": self.host, "pid": self.pid,
                "recorded": max(self.spool.recorded if self.spool is not None else 0, s.hi if s is not None else 0),
                "shipped": self.spool.shipped if self.spool is not None else None,
                "stored": s.n if s is not None else 0,
                "dropped": (self.spool.counters.get("dropped", 0) if self.spool is not None else None),
                "spool_bytes": self.spool.bytes if self.spool is not None else None,
                "missing": self.missing,
                "gaps": [{"lo": h.lo, "hi": h.hi, "missing": h.missing, "after": fmt_us(h.after_ts),
                          "before": fmt_us(h.before_ts)} for h in self.holes],
                "shipped_not_stored": list(tail) if tail else None,
                "last_event": fmt_us(s.last_ts) if s is not None else None, "silent": self.silent,
                "spool": sp, "store": s.to_json() if s is not None else None}


@dataclass(slots=True)
class Health:
    from_us: int
    to_us: int
    rows: list[Row] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not any(r.holes for r in self.rows)

    def services(self) -> list[dict[str, Any]]:
        by: dict[str, list[Row]] = {}
        for r in self.rows:
            by.setdefault(r.service, []).append(r)
        out = []
        for svc in sorted(by):
            rows = by[svc]
            out.append({"service": svc, "emitters": len(rows),
                        "stored": sum(r.stored.n for r in rows if r.stored is not None),
                        "recorded": sum(r.to_json()["recorded"] for r in rows),
                        "dropped": sum(r.spool.counters.get("dropped", 0) for r in rows if r.spool is not None),
                        "missing": sum(r.missing for r in rows),
                        "emitters_with_gaps": sum(1 for r in rows if r.holes),
                        "silent": sum(1 for r in rows if r.silent)})
        return out

    def to_json(self) -> dict[str, Any]:
        from tracer.analysis.evidence import fmt_us

        return {"window": {"from": fmt_us(self.from_us), "to": fmt_us(self.to_us)}, "complete": self.complete,
                "services": self.services(), "emitters": [r.to_json() for r in self.rows]}


def audit_health(store_url: str | None, spool_dir: str | None, from_us: int, to_us: int, silent_s: float,
                 use_store: bool = True, now_us: int | None = None) -> Health:
    """The audit's health over [from_us, to_us): the library behind ``msgtrace audit-health``.
    An emitter is silent when its last event is more than ``silent_s`` before ``now_us`` (default
    ``to_us``)."""
    from tracer.analysis.gaps import emitters
    from tracer.sdk.repair import spool_states

    h = Health(from_us, to_us)
    stored = []
    if use_store:
        from tracer.store import Store

        with Store(store_url) as store:
            stored = emitters(store, from_us, to_us)
    rows: dict[str, Row] = {}
    for e in stored:
        rows[e.emitter_id] = Row(e.emitter_id, e.service, e.host, e.pid, stored=e)
    for st in (spool_states(spool_dir) if spool_dir else []):
        r = rows.get(st.emitter_id)
        if r is None:
            r = rows[st.emitter_id] = Row(st.emitter_id, st.service, st.host, st.pid)
        r.spool = st
    silent_before = (now_us if now_us is not None else to_us) - int(silent_s * 1e6)
    for r in rows.values():
        r.silent = r.stored is not None and silent_s > 0 and r.stored.last_ts < silent_before
    h.rows = sorted(rows.values(), key=lambda r: (r.service, r.emitter_id))
    return h


def _print(h: Health) -> None:
    from rich.markup import escape
    from rich.table import Table

    w = h.to_json()["window"]
    out.print(f"[bold]audit health[/] {w['from']} .. {w['to']}")
    t = Table(title="per service")
    for c in ("service", "emitters", "recorded", "stored", "dropped", "missing", "with gaps", "silent"):
        t.add_column(c, justify="left" if c == "service" else "right")
    for s in h.services():
        t.add_row(escape(s["service"] or "?"), str(s["emitters"]), str(s["recorded"]), str(s["stored"]),
                  str(s["dropped"]), str(s["missing"]), str(s["emitters_with_gaps"]), str(s["silent"]))
    out.print(t)
    t = Table(title="per emitter")
    for c in ("service", "emitter", "host/pid", "spool", "recorded", "shipped", "stored", "dropped", "spool MiB",
              "last event", "gaps (seq: time range)"):
        t.add_column(c, overflow="fold")
    for r in h.rows:
        j = r.to_json()
        gaps = "; ".join(f"{g['lo']}-{g['hi']}: {g['after']} .. {g['before']}" for g in j["gaps"][:3])
        if len(j["gaps"]) > 3:
            gaps += f"; +{len(j['gaps']) - 3} more"
        tail = j["shipped_not_stored"]
        if tail:
            gaps += (("; " if gaps else "") + f"shipped, not stored: {tail[0]}-{tail[1]} (in transit or lost)")
        last = j["last_event"] or "-"
        t.add_row(escape(r.service or "?"), r.emitter_id[:8], f"{escape(r.host)}/{r.pid}",
                  r.spool.state if r.spool is not None else "-", str(j["recorded"]),
                  "-" if j["shipped"] is None else str(j["shipped"]), str(j["stored"]),
                  "-" if j["dropped"] is None else str(j["dropped"]),
                  "-" if j["spool_bytes"] is None else f"{j['spool_bytes'] / (1 << 20):.1f}",
                  ("[yellow]silent since " + last + "[/]") if r.silent else last, escape(gaps) or "-")
    out.print(t)
    if h.complete:
        out.print("[green]audit complete: no emitter has a seq gap in the window[/]")
    else:
        bad = [r for r in h.rows if r.holes]
        out.print(f"[yellow]audit incomplete: {len(bad)} emitter(s) with seq gaps, "
                  f"{sum(r.missing for r in bad)} events missing[/]")
        for r in bad:
            out.print(f"  repair: {escape(r.stored.repair_command())}")


@click.command("audit-health")
@store_option
@click.option("--spool", "spool_dir", envvar="MSGTRACE_SPOOL_DIR", metavar="DIR",
              help="Also read this spool dir (recorded, shipped, dropped, retained per emitter). "
                   "Env: MSGTRACE_SPOOL_DIR.")
@click.option("--since", default="1d", show_default=True, metavar="DURATION",
              help="Look at the events of this long before --to (e.g. 30m, 6h, 1d).")
@click.option("--to", "t_to", metavar="TIME", help="End of the range (ISO 8601; default now).")
@click.option("--silent-after", default="10m", show_default=True, metavar="DURATION",
              help="An emitter whose last event is older than this before --to is shown as silent.")
@click.option("--no-store", is_flag=True, help="Only the spool dir (e.g. on a host without access to the store).")
@json_option
@handle_errors
def audit_health_cmd(store_url: str | None, spool_dir: str | None, since: str, t_to: str | None,
                     silent_after: str, no_store: bool, as_json: bool) -> None:
    """How complete the audit trail is, per service and emitter: events recorded, shipped, stored,
    dropped, spool size, seq gaps with their time ranges, last event seen.

    Exit status: 0 the audit is complete in the range; 2 emitters have seq gaps (repair them with
    `msgtrace ship --repair` on their hosts) or an error.
    """

    from tracer.cli.reconcile import parse_duration, parse_time, to_us
    from tracer.errors import ConfigError

    if no_store and not spool_dir:
        raise ConfigError("--no-store needs --spool DIR")
    end = to_us(parse_time(t_to, UTC, "--to")[0]) if t_to else time.time_ns() // 1000
    start = max(0, end - parse_duration(since, "--since") * 1_000_000)
    # without --to, events stamped a little ahead of this host's clock count too
    h = audit_health(store_url, spool_dir, start, end + (0 if t_to else 60_000_000),
                     parse_duration(silent_after, "--silent-after"), use_store=not no_store, now_us=end)
    if as_json:
        import orjson

        sys.stdout.write(orjson.dumps(h.to_json()).decode() + "\n")
    else:
        _print(h)
    sys.exit(EXIT_OK if h.complete else EXIT_ERROR)
