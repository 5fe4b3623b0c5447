"""Benchmark: msgtrace incident over 10M events, the lookups without a msg_id, the lookup views' cost
on inserts, and the HTML report's weight for a day with 10k losses. chDB (embedded), one process.

* incident: the whole library call (reconcile without writing, locate, instances, the funnel over
  time) and each of its queries, beside the bare per-message aggregation over the same rows (the
  floor any per-message answer pays), alternating, ratio per repeat (wall and process CPU);
* lookups (--at, --key, --topic --from/--to): the query on the lookup tables vs the same question on
  trace_events (what a lookup without them costs: a scan), alternating, many random questions;
* inserts with and without the lookup views (1M events per insert, generated inside ClickHouse),
  alternating fresh stores, ratio per repeat;
* report: a day of 1M messages, 1 % lost (10k losses), rendered to HTML: size and render time.

Data is generated inside ClickHouse with benchmarks/bench_reconcile.py's GEN_SQL (2M messages x 5
stages = 10M events, 12 partitions, 4 producer and 4 consumer hosts, 0.2 % lost, spread over every
partition).

    python benchmarks/bench_incident.py [--events 10000000] [--repeats 5] [--lookups 200]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_reconcile import BARE_SQL, GEN_SQL, STEP_US, T0, _cpu, _step
from tracer.analysis import lookup as L
from tracer.analysis.incident import analyse_incident
from tracer.store import Store

S = 1_000_000
#: the same question on trace_events without lookup tables (the plain way: a scan)
PLAIN = {
    "at": "SELECT DISTINCT msg_id FROM {db:Identifier}.trace_events WHERE topic = {topic:String} "
          "AND partition = {partition:Int32} AND offset = {offset:Int64} AND stage IN ('broker_acked', 'received')",
    "key": "SELECT DISTINCT msg_id FROM {db:Identifier}.trace_events WHERE key = {key:String} AND stage IN "
           "('sent', 'received')",
    "time": "SELECT msg_id, min(ts_us) AS t FROM {db:Identifier}.trace_events WHERE topic = {topic:String} AND "
            "stage = 'sent' AND ts_us >= {from_us:UInt64} AND ts_us < {to_us:UInt64} GROUP BY msg_id ORDER BY t "
            "LIMIT 20",
}


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float], unit: float = 1.0, fmt: str = "{:.3f}") -> str:
    s = sorted(x * unit for x in xs)
    q1, q3 = s[len(s) // 4], s[(3 * len(s)) // 4]
    return f"{fmt.format(med(s))} (IQR {fmt.format(q1)}-{fmt.format(q3)}, min {fmt.format(s[0])}, max " \
           f"{fmt.format(s[-1])}, n={len(s)})"


def generate(store: Store, messages: int, step_us: int = STEP_US, mod: int = 1000, chunk: int = 1_000_000) -> float:
    """bench_reconcile's generator; ``mod``: one message in ``mod`` lost in the consumer, one in the broker."""
    sql = GEN_SQL.replace("n % 1000", "n % {mod:UInt64}")
    t = time.perf_counter()
    for base in range(0, messages, chunk):
        n = min(chunk, messages - base)
        store.command(sql, {"t0": T0, "step": step_us, "base": base, "rows": n * 5, "lossy": 1, "broken": 3,
                            "mod": mod})
    store.command("OPTIMIZE TABLE {db:Identifier}.trace_events FINAL")
    return time.perf_counter() - t


def bench_incident(store: Store, messages: int, repeats: int) -> dict[str, Any]:
    lo, hi = T0, T0 + messages * STEP_US + 60 * S
    now = hi + 3600 * S
    steps: dict[str, list[float]] = {}
    orig = store.query

    def timed(sql: str, params: Any = None, **kw: Any) -> Any:
        c, t = _cpu(), time.perf_counter()
        try:
            return orig(sql, params, **kw)
        finally:
            steps.setdefault(_step(sql), []).append(time.perf_counter() - t)
            steps.setdefault("cpu:" + _step(sql), []).append(_cpu() - c)

    bare, inc, ratios, cpu_ratios = [], [], [], []
    rep = None
    with store.session():
        store.query(BARE_SQL, {"lo": lo, "hi": hi})  # warm-up, not timed
        analyse_incident(store, lo, hi, 600, now_us=now)
        for _ in range(repeats):
            c, t = _cpu(), time.perf_counter()
            store.query(BARE_SQL, {"lo": lo, "hi": hi})
            tb, cb = time.perf_counter() - t, _cpu() - c
            store.query = timed  # type: ignore[method-assign]
            c, t = _cpu(), time.perf_counter()
            rep = analyse_incident(store, lo, hi, 600, now_us=now)
            ti, ci = time.perf_counter() - t, _cpu() - c
            store.query = orig  # type: ignore[method-assign]
            bare.append(tb)
            inc.append(ti)
            ratios.append(ti / tb)
            cpu_ratios.append(ci / cb)
    assert rep is not None
    return {"bare": bare, "incident": inc, "ratios": ratios, "cpu_ratios": cpu_ratios, "steps": steps,
            "summary": rep.result.summary, "bursts": len(rep.bursts), "rows": len(rep.result.rows),
            "buckets": len(rep.funnel.buckets)}


def bench_lookups(store: Store, messages: int, n: int) -> dict[str, Any]:
    t = time.perf_counter()
    built = L.ensure_lookup(store)
    build_s = time.perf_counter() - t
    store.command("OPTIMIZE TABLE {db:Identifier}.lookup_offsets FINAL")
    store.command("OPTIMIZE TABLE {db:Identifier}.lookup_keys FINAL")
    store.command("OPTIMIZE TABLE {db:Identifier}.lookup_times FINAL")
    rnd = random.Random(7)
    out: dict[str, dict[str, list[float]]] = {k: {"lookup": [], "plain": []} for k in PLAIN}
    plain_n = max(5, n // 20)  # the scans are slow: fewer of them, interleaved with the first lookups

    def question(kind: str) -> tuple[Callable[[], Any], dict[str, Any]]:
        m = rnd.randrange(messages)
        if kind == "at":
            p, o = m % 12, m // 12
            return (lambda: L.by_offset(store, "orders.paid", p, o)), {"topic": "orders.paid", "partition": p,
                                                                        "offset": o}
        if kind == "key":
            return (lambda: L.by_key(store, str(m))), {"key": str(m)}
        a = T0 + m * STEP_US
        return (lambda: L.by_time(store, "orders.paid", a, a + 60 * S)), {"topic": "orders.paid", "from_us": a,
                                                                          "to_us": a + 60 * S}

    with store.session():
        for kind in out:  # warm-up
            question(kind)[0]()
        for i in range(n):
            for kind, sql in PLAIN.items():
                fn, params = question(kind)
                t = time.perf_counter()
                found = fn()
                out[kind]["lookup"].append(time.perf_counter() - t)
                assert found, (kind, params)
                if i < plain_n:
                    t = time.perf_counter()
                    store.query(sql, params)
                    out[kind]["plain"].append(time.perf_counter() - t)
    sizes = {r["table"]: (r["rows"], r["bytes"]) for r in store.query(
        "SELECT table, sum(rows) AS rows, sum(bytes_on_disk) AS bytes FROM system.parts WHERE database = "
        "{db:String} AND active GROUP BY table", {"db": store.database})}
    return {"built": built, "build_s": build_s, "times": out, "sizes": sizes}


def bench_views_on_insert(root: str, events: int, repeats: int) -> dict[str, list[float]]:
    """Insert ``events`` (generated inside ClickHouse) into a fresh store with and without the lookup
    views, alternating; wall seconds per insert."""
    res: dict[str, list[float]] = {"plain": [], "views": [], "ratio": []}
    for r in range(repeats):
        pair = {}
        for variant in (("plain", "views") if r % 2 == 0 else ("views", "plain")):
            path = f"{root}/ins-{variant}-{r}"
            st = Store(f"chdb://{path}")
            with st.session():
                st.init_schema()
                if variant == "views":
                    L.ensure_lookup(st)
                t = time.perf_counter()
                st.command(GEN_SQL, {"t0": T0, "step": STEP_US, "base": 0, "rows": events, "lossy": 1, "broken": 3})
                pair[variant] = time.perf_counter() - t
            st.close()
            shutil.rmtree(path, ignore_errors=True)
        res["plain"].append(pair["plain"])
        res["views"].append(pair["views"])
        res["ratio"].append(pair["views"] / pair["plain"])
    return res


def bench_views_on_columnar_insert(root: str, events: int, repeats: int, batch: int = 10_000) -> dict[str, list[float]]:
    """The collector's path: columnar inserts of ``batch`` events (Store.insert_events), into a fresh
    store with and without the lookup views, alternating; wall seconds for ``events`` events."""
    from tests.test_incident_bursts import Story

    story = Story()
    i = 0
    while len(story.events) < events:
        for p in range(4):
            story.message(i, p)
        i += 1
    evs = story.events[:events]
    res: dict[str, list[float]] = {"plain": [], "views": [], "ratio": []}
    for r in range(repeats):
        pair = {}
        for variant in (("plain", "views") if r % 2 == 0 else ("views", "plain")):
            path = f"{root}/col-{variant}-{r}"
            st = Store(f"chdb://{path}")
            with st.session():
                st.init_schema()
                if variant == "views":
                    L.ensure_lookup(st)
                st.insert_events(evs[:batch])  # warm-up (types, first insert)
                t = time.perf_counter()
                for k in range(0, len(evs), batch):
                    st.insert_events(evs[k:k + batch])
                pair[variant] = time.perf_counter() - t
            st.close()
            shutil.rmtree(path, ignore_errors=True)
        res["plain"].append(pair["plain"])
        res["views"].append(pair["views"])
        res["ratio"].append(pair["views"] / pair["plain"])
    return res


def bench_report(root: str, messages: int) -> dict[str, Any]:
    """A day of ``messages`` messages with 1 % lost, as an incident HTML report."""
    from tracer.report import incident_html

    store = Store(f"chdb://{root}/day")
    step = 86_400 * S // messages
    with store.session():
        store.init_schema()
        generate(store, messages, step_us=step, mod=200)
        lo, hi = T0, T0 + 86_400 * S
        t = time.perf_counter()
        rep = analyse_incident(store, lo, hi, 600, now_us=hi + 3600 * S)
        analyse_s = time.perf_counter() - t
    t = time.perf_counter()
    page = incident_html(rep)
    render_s = time.perf_counter() - t
    store.close()
    import gzip

    data = page.encode()
    svg = sum(len(x) for x in page.split("<svg")[1:])  # roughly: everything from each chart on
    return {"losses": rep.result.lost, "rows": len(rep.result.rows), "bursts": len(rep.bursts), "bytes": len(data),
            "gzip": len(gzip.compress(data)), "analyse_s": analyse_s, "render_s": render_s,
            "charts": page.count("<svg"), "svg_share": svg / len(data)}


def _nothing() -> Any:
    import contextlib

    return contextlib.nullcontext()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--lookups", type=int, default=200)
    ap.add_argument("--insert-events", type=int, default=1_000_000)
    ap.add_argument("--day-messages", type=int, default=1_000_000)
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    ap.add_argument("--skip", action="append", default=[], choices=["incident", "lookups", "inserts", "report"])
    a = ap.parse_args()
    root = a.keep or tempfile.mkdtemp(prefix="msgtrace-bench-incident-")
    os.makedirs(root, exist_ok=True)
    messages = a.events // 5
    print(f"# {' '.join(sys.argv)}  (load average at start {os.getloadavg()[0]:.1f})")
    try:
        store = Store(f"chdb://{root}/ten")
        with store.session() if not {"incident", "lookups"} <= set(a.skip) else _nothing():
            store.init_schema()
            if {"incident", "lookups"} <= set(a.skip):
                pass
            elif not store.query("SELECT count() AS n FROM {db:Identifier}.trace_events")[0]["n"]:
                print(f"generated {a.events} events in {generate(store, messages):.1f} s")
            if "incident" not in a.skip:
                r = bench_incident(store, messages, a.repeats)
                print(f"== incident over {a.events} events ({r['rows']} pairs listed, {r['bursts']} bursts, "
                      f"{r['buckets']} funnel rows; {r['summary']})")
                print(f"bare GROUP BY msg_id: {spread(r['bare'])} s")
                print(f"incident (library):   {spread(r['incident'])} s")
                print(f"ratio incident/bare:  wall {spread(r['ratios'], fmt='{:.2f}')}, CPU "
                      f"{spread(r['cpu_ratios'], fmt='{:.2f}')}")
                for k, xs in r["steps"].items():
                    if not k.startswith("cpu:"):
                        print(f"  step {k}: median {med(xs):.3f} s wall, {med(r['steps']['cpu:' + k]):.3f} s CPU "
                              f"(n={len(xs)})")
            if "lookups" not in a.skip:
                r2 = bench_lookups(store, messages, a.lookups)
                print(f"== lookups on {a.events} events; lookup tables {'built' if r2['built'] else 'present'} in "
                      f"{r2['build_s']:.1f} s")
                for t, (rows, size) in sorted(r2["sizes"].items()):
                    print(f"  table {t}: {rows} rows, {size / 1e6:.1f} MB")
                for kind, d in r2["times"].items():
                    lk, pl = d["lookup"], d["plain"]
                    print(f"  --{kind}: lookup {spread(lk, 1000, '{:.1f}')} ms; without lookup tables (scan) "
                          f"{spread(pl, 1000, '{:.0f}')} ms; ratio of medians {med(pl) / med(lk):.0f}x")
        store.close()
        if "inserts" not in a.skip:
            r3 = bench_views_on_insert(root, a.insert_events, a.repeats)
            print(f"== insert of {a.insert_events} events (INSERT ... SELECT): plain {spread(r3['plain'])} s, with "
                  f"the lookup views {spread(r3['views'])} s; ratio {spread(r3['ratio'], fmt='{:.2f}')}")
            r5 = bench_views_on_columnar_insert(root, a.insert_events // 5, a.repeats)
            print(f"== columnar inserts (the collector's path) of {a.insert_events // 5} events in batches of 10k: "
                  f"plain {spread(r5['plain'])} s, with the lookup views {spread(r5['views'])} s; ratio "
                  f"{spread(r5['ratio'], fmt='{:.2f}')}")
        if "report" not in a.skip:
            r4 = bench_report(root, a.day_messages)
            print(f"== report: a day of {a.day_messages} messages, {r4['losses']} lost pairs ({r4['rows']} listed, "
                  f"{r4['bursts']} bursts): {r4['bytes'] / 1e6:.2f} MB ({r4['gzip'] / 1e6:.2f} MB gzipped), "
                  f"{r4['charts']} charts; analysed in {r4['analyse_s']:.1f} s, rendered in {r4['render_s']:.2f} s")
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
