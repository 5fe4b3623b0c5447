"""``msgtrace ship``: drain the spools that dead processes left behind; ``--repair``: close audit gaps.

A process killed before its shipper caught up leaves its spool directory; the next traced process
adopts it on its own, and this command does it from outside (cron, a sidecar, after an incident).
Live owners are left alone. Shipped spools are retained (``--retention``, default 24 h) so that
``--repair`` can re-send what the audit lost afterwards: it asks the store which seq numbers of the
emitters in this spool dir are missing (the holes ``msgtrace audit-health`` shows, and events shipped
but never stored) and re-sends exactly those from the retained segments (:mod:`tracer.sdk.repair`).
"""
from __future__ import annotations

import json
import time

import click

from tracer.cli.util import (
    EXIT_ERROR,
    audit_topic_option,
    bootstrap_option,
    handle_errors,
    json_option,
    out,
    store_option,
)
from tracer.errors import ConfigError, MsgtraceError, describe


@click.command("ship")
@click.option("--spool", "spool_dir", envvar="MSGTRACE_SPOOL_DIR", metavar="DIR",
              help="Spool directory to drain (default: the user's data dir). Env: MSGTRACE_SPOOL_DIR.")
@bootstrap_option
@audit_topic_option
@store_option
@click.option("--timeout", type=float, default=None, metavar="SECONDS", help="Stop after this long.")
@click.option("--retention", metavar="DURATION", envvar="MSGTRACE_SPOOL_RETENTION",
              help="Keep shipped spools this long (e.g. 24h, 30m, 0 = remove once shipped; default 24h). "
                   "Env: MSGTRACE_SPOOL_RETENTION.")
@click.option("--repair", is_flag=True,
              help="Re-send the seq ranges the store misses (audit-health's gaps, and events shipped but never "
                   "stored) from the retained segments of every emitter in the spool dir, live or dead.")
@click.option("--emitter", "emitters", multiple=True, metavar="ID",
              help="With --repair: only this emitter (repeatable).")
@click.option("--since", default=None, metavar="DURATION",
              help="With --repair: look for gaps this far back (default: the retention plus an hour).")
@click.option("--dry-run", is_flag=True, help="With --repair: show what would be re-sent, send nothing.")
@json_option
@handle_errors
def ship(spool_dir: str | None, bootstrap: str | None, audit_topic: str, store_url: str | None,
         timeout: float | None, retention: str | None, repair: bool, emitters: tuple[str, ...], since: str | None,
         dry_run: bool, as_json: bool) -> None:
    """Ship the audit events in dead processes' spools: to the audit topic with --bootstrap,
    else straight into the store. With --repair, re-send what the store misses instead.

    Exit status: 0 done (--repair: every missing event of the emitters found here was re-sent);
    2 error, or (--repair) missing events that are not retained here (the gap stays: expired,
    evicted, dropped when the spool was full, or recorded on another host).
    """
    import os

    from tracer.sdk.emitter import KafkaSink, StoreSink, default_spool_dir, drain_spools
    from tracer.sdk.spool import default_retention, parse_seconds

    spool_dir = spool_dir or default_spool_dir()
    if not os.path.isdir(spool_dir):
        raise ConfigError(f"--spool: no such directory: {spool_dir}")
    retention_s = parse_seconds(retention, "--retention") if retention else default_retention()
    if (emitters or since or dry_run) and not repair:
        raise ConfigError("--emitter, --since and --dry-run go with --repair")
    if repair:
        _repair(spool_dir, bootstrap, audit_topic, store_url, retention_s, emitters, since, dry_run, as_json)
        return
    sink = KafkaSink(bootstrap, audit_topic) if bootstrap else StoreSink(store_url)
    try:
        try:
            stats = drain_spools(spool_dir, sink, timeout, retention_s)
        except MsgtraceError:
            raise
        except Exception as e:  # a sink that is down: one line, exit 2, spools kept
            raise MsgtraceError(f"shipping to {sink.name} failed, spools kept: {describe(e)}") from None
    finally:
        sink.close()
    stats["sink"] = sink.name  # type: ignore[assignment]
    if as_json:
        click.echo(json.dumps(stats))
    else:
        out.print(f"shipped {stats['events']} events from {stats['spools']} dead spool(s) to {sink.name}"
                  + (f"; {stats['torn']} torn line(s) skipped" if stats["torn"] else "")
                  + (f"; {stats['left']} spool(s) not finished" if stats["left"] else ""))


def _repair(spool_dir: str, bootstrap: str | None, audit_topic: str, store_url: str | None, retention_s: float,
            only: tuple[str, ...], since: str | None, dry_run: bool, as_json: bool) -> None:
    from tracer.analysis.gaps import emitters as stored_emitters
    from tracer.sdk.emitter import KafkaSink, StoreSink
    from tracer.sdk.repair import repair, spool_states
    from tracer.sdk.spool import parse_seconds
    from tracer.store import Store

    states = {s.emitter_id: s for s in spool_states(spool_dir)}
    names = sorted(set(only) if only else set(states))
    back_s = parse_seconds(since, "--since") if since else max(retention_s, 86400.0) + 3600.0
    now_us = time.time_ns() // 1000
    wanted: dict[str, list[tuple[int, int]]] = {}
    if names:
        with Store(store_url) as store:
            stored = {e.emitter_id: e for e in stored_emitters(store, max(0, now_us - int(back_s * 1e6)),
                                                                 now_us + 60_000_000, names)}
        for name in names:
            ranges = [(h.lo, h.hi) for h in stored[name].holes] if name in stored else []
            st = states.get(name)
            if st is not None and st.shipped:  # shipped but never stored (after the last stored event)
                lo = max(stored[name].hi + 1 if name in stored else 1, st.retained_from or 1)
                if st.shipped >= lo:
                    ranges.append((lo, st.shipped))
            if ranges or name in only:
                wanted[name] = ranges
    sink = None if dry_run else (KafkaSink(bootstrap, audit_topic) if bootstrap else StoreSink(store_url))
    try:
        try:
            done = repair(spool_dir, wanted, sink, dry_run)
        except MsgtraceError:
            raise
        except Exception as e:
            raise MsgtraceError(f"re-sending to {sink.name if sink else 'nowhere'} failed: {describe(e)}") from None
    finally:
        if sink is not None:
            sink.close()
    incomplete = [r for r in done if r.wanted and (not r.complete)]
    if as_json:
        click.echo(json.dumps({"dry_run": dry_run, "sink": sink.name if sink else None,
                               "sent": sum(r.sent for r in done), "complete": not incomplete,
                               "emitters": [r.to_json() for r in done]}))
    else:
        if not done:
            out.print(f"nothing to repair: no emitter of {spool_dir} misses events in the store")
        for r in done:
            what = "would re-send" if dry_run else "re-sent"
            line = (f"{r.service or '?'} emitter {r.emitter_id}: {r.wanted} missing event(s) in "
                    f"{len(r.ranges)} range(s); {what} {r.sent}")
            if not r.found:
                line += "; its spool is not in this spool dir (run this on its host)"
            elif r.not_retained:
                miss = ", ".join(f"{lo}-{hi}" for lo, hi in r.not_retained[:5])
                line += f"; not retained here: seq {miss}" + (" ..." if len(r.not_retained) > 5 else "")
            out.print(line)
    if incomplete:
        raise SystemExit(EXIT_ERROR)
