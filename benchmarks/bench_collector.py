"""Collector throughput: audit topic -> chDB and -> ClickHouse 18.16, beside the raw
kafka-python consume rate of the same topic in the same run (the transport ceiling).

    python benchmarks/bench_collector.py [--events 200000] [--per-record 500] [--repeats 3]
        [--baseline DIR]   # e.g. DIR = `git archive <commit> collectors tracer queries | tar -x -C DIR`

Each repeat drains the same pre-filled topic: a plain assigned KafkaConsumer (no
group, no decoding), then the collector into a fresh chDB dir and into a fresh
database on a throwaway 18.16 server -- once with this checkout and, with
``--baseline``, once with the other checkout (before/after in one run; the order
alternates between repeats). Every collector runs in its own process (as
``msgtrace collect`` does). Collector rates are "sustained": inserted events /
(last commit - first record), so the ~3 s group join and the idle check at the
end are not counted. A decode profile (strict per-event validator vs the
collector's columnar decoder) follows. Figures go to benchmarks/results/collector.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__" and "--run-one" in sys.argv:  # child: import the collector of --repo
    sys.path.insert(0, sys.argv[sys.argv.index("--repo") + 1])
else:
    sys.path.insert(0, str(ROOT))

from collectors import CollectorConfig, run_collector  # noqa: E402
from collectors.testing import create_topic, make_events, produce_events  # noqa: E402
from tracer.events import decode_batch, encode_batch, record_headers, to_columns  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "collector.md"


def raw_consume(bootstrap: str, topic: str, partitions: int, n_records: int, per_record: int) -> float:
    """events/s of a bare kafka-python consumer reading every record's bytes."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=500,
                      fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=32 * 1024 * 1024)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    seen = nbytes = 0
    t0 = None
    try:
        while seen < n_records:
            recs = c.poll(timeout_ms=1000)
            for lst in recs.values():
                if t0 is None:
                    t0 = time.perf_counter()
                for r in lst:
                    nbytes += len(r.value)
                seen += len(lst)
        dt = time.perf_counter() - (t0 or time.perf_counter())
    finally:
        c.close()
    return seen * per_record / dt if dt > 0 else 0.0


def run_one(bootstrap: str, topic: str, url: str, options: dict) -> None:
    """Child process: one collector run; prints its rate as JSON."""
    import logging

    logging.disable(logging.WARNING)
    cfg = CollectorConfig(startup_timeout_s=60, status_interval_s=0.02, **options)
    # CPU of the process (all threads) sampled every 20 ms: the part between the first record and the
    # last commit is the collecting (no start-up, group join or idle check)
    marks: dict[str, float] = {}

    def on_status(st: Any, state: str) -> None:
        now = time.process_time()
        if st.first_record_at is None:
            marks["before_first"] = now
        if st.last_commit_at is not None and st.last_commit_at != marks.get("commit_at"):
            marks["commit_at"], marks["after_commit"] = st.last_commit_at, now

    stats = run_collector(bootstrap, topic, url, f"bench-{uuid.uuid4().hex[:8]}", until_idle=True, config=cfg,
                          on_status=on_status)
    cpu = marks.get("after_commit", 0.0) - marks.get("before_first", 0.0)
    import resource

    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt  # whole process: page faults (memory churn)
    print(json.dumps({"rate": stats.sustained_rate, "stored": stats.stored, "cpu_s": cpu, "minflt": faults}))


def cpu_seconds(pid: int | None) -> float:
    """user + system CPU seconds of process ``pid`` so far (0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def collect_once(bootstrap: str, topic: str, url: str, repo: Path = ROOT,
                 **options) -> tuple[float, int, float, int]:
    """One collector run of the checkout ``repo`` in a fresh process: (events/s, stored, CPU seconds,
    minor page faults of the whole process)."""
    out = subprocess.run([sys.executable, __file__, "--run-one", "--repo", str(repo), "--bootstrap", bootstrap,
                          "--topic", topic, "--url", url, "--options", json.dumps(options)],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"collector run failed: {out.stderr[-2000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return r["rate"], r["stored"], r["cpu_s"], int(r.get("minflt", 0))


def decode_profile(per_record: int, n: int = 50_000, server_url: str | None = None) -> dict[str, float]:
    """Per-event cost of each part of the decode path, in events/s (one thread, this checkout)."""
    import orjson

    from collectors.decode import decode_record, fast_columns, store_columns
    from tracer.store import Store

    events = make_events(n)
    recs = [encode_batch(events[i:i + per_record]) for i in range(0, n, per_record)]
    h = record_headers()
    out: dict[str, float] = {}

    def rate(fn) -> float:
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        return n / best

    out["orjson.loads per line (parse only)"] = rate(lambda: [orjson.loads(ln) for r in recs for ln in r.split(b"\n")])
    out["orjson.loads once per record (parse only)"] = rate(
        lambda: [orjson.loads(b"[" + r.replace(b"\n", b",\n") + b"]") for r in recs])
    objs = [orjson.loads(b"[" + r.replace(b"\n", b",\n") + b"]") for r in recs]
    out["fast_columns (transpose + column checks)"] = rate(lambda: [fast_columns(o) for o in objs])
    out["tracer.events.decode_batch (strict, per event)"] = rate(lambda: [decode_batch(r, h) for r in recs])
    out["collectors.decode.decode_record (columnar Python)"] = rate(
        lambda: [decode_record(r, h, use_c=False) for r in recs])
    evs = [e for r in recs for e in decode_batch(r, h).events]
    out["to_columns (Event objects -> columns)"] = rate(lambda: to_columns(evs))
    from collectors import _fastjson
    from collectors.decode import arrow_batch, batch_store_columns

    out["C decoder: collectors._fastjson.decode (parse + checks)"] = rate(lambda: [_fastjson.decode(r) for r in recs])
    raw_cols = [_fastjson.decode(r) for r in recs]
    out["C decoder: Arrow record batches over its buffers"] = rate(lambda: [arrow_batch(*c) for c in raw_cols])
    out["collectors.decode.decode_record (C decoder)"] = rate(lambda: [decode_record(r, h) for r in recs])
    batches = [decode_record(r, h).arrow for r in recs]
    cols: list[list] = [[] for _ in range(len(objs[0][0]))]
    for r in recs:
        for c, add in zip(cols, decode_record(r, h, use_c=False).columns):
            c.extend(add)
    out["store_columns, attrs as lists of lists (server)"] = rate(lambda: store_columns(cols))
    out["store_columns, attrs as Arrow list arrays (chDB)"] = rate(lambda: store_columns(cols, arrow=True))
    d = tempfile.mkdtemp(prefix="bench-chdb-")
    s = Store(f"chdb://{d}")
    s.init_schema()
    with s.session():
        s.insert("trace_events", store_columns(cols, arrow=True))  # warm
        out["chDB insert (Python columns -> arrow -> trace_events)"] = rate(
            lambda: s.insert("trace_events", store_columns(cols, arrow=True)))
        out["chDB insert (C-decoded batches -> one table -> trace_events)"] = rate(
            lambda: s.insert("trace_events", batch_store_columns([], batches, arrow=True)[0]))
    s.close()
    if server_url:
        from tracer.store.core import _pylist
        from tracer.store.native import _as_array, column_bytes, wire_type

        srv = Store(server_url)
        srv.init_schema()
        table = batch_store_columns([], batches, arrow=True)[0]
        types = srv.column_types("trace_events")
        out["server: Native columns from the Arrow buffers (serialize only)"] = rate(
            lambda: [column_bytes(_as_array(table[c]), wire_type(types[c])) for c in table])
        out["server insert: Native block from Arrow (this checkout)"] = rate(
            lambda: srv.insert("trace_events", table))
        out["server insert: Arrow -> Python lists -> clickhouse-driver (before)"] = rate(
            lambda: srv.insert("trace_events", {c: _pylist(v) for c, v in table.items()}))
        srv.close()
    return out


def fmt(vals: list[float]) -> str:
    med = statistics.median(vals)
    return f"{med:,.0f} (min {min(vals):,.0f}, max {max(vals):,.0f}, spread {(max(vals) - min(vals)) / med:.0%})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--per-record", type=int, default=500)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline", type=Path, help="Another checkout's root: its collector runs beside this one.")
    ap.add_argument("--baseline-engines", default="chDB,18.16",
                    help="Engines the --baseline checkout runs on (comma-separated: chDB, 18.16).")
    ap.add_argument("--no-python-decoder", action="store_true", help="Leave out the Python-decoder-only row.")
    ap.add_argument("--no-write", action="store_true", help="Do not write benchmarks/results/collector.md.")
    ap.add_argument("--ablation", action="append", default=[], metavar="LABEL=JSON",
                    help="One more row into 18.16: this checkout with these CollectorConfig options, e.g. "
                         "'no malloc tuning={\"malloc_top_pad\": null}' (repeatable).")
    ap.add_argument("--run-one", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--repo", "--bootstrap", "--topic", "--url", "--options"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.run_one:
        run_one(a.bootstrap, a.topic, a.url, json.loads(a.options))
        return
    from tracer.localsvc import ClickHouseServer, TansuBroker

    # (label, checkout, collector options, engines)
    variants: list[tuple[str, Path, dict, set[str]]] = [("this checkout", ROOT, {}, {"chDB", "18.16"})]
    baseline_engines = {e.strip() for e in a.baseline_engines.split(",")}
    if a.baseline:
        variants.append((f"baseline {a.baseline.name}", a.baseline.resolve(), {}, baseline_engines))
    if not a.no_python_decoder:
        variants.append(("this checkout, Python decoder only (c_decoder=False)", ROOT, {"c_decoder": False}, {"chDB"}))
    for spec in a.ablation:
        label, _, options = spec.partition("=")
        variants.append((f"this checkout, {label.strip()}", ROOT, json.loads(options), {"18.16"}))
    broker = TansuBroker().start()
    server = ClickHouseServer().start()
    rows: dict[str, list[float]] = {"raw": []}
    cpus: dict[str, list[tuple[float, ...]]] = {}  # per collector run: (collector, broker[, server]) CPU s
    faults: dict[str, list[int]] = {}  # per collector run: minor page faults of the collector process
    try:
        topic = f"bench-audit-{uuid.uuid4().hex[:6]}"
        create_topic(broker.bootstrap, topic, a.partitions)
        t = time.perf_counter()
        n_records = produce_events(broker.bootstrap, topic, make_events(a.events), a.per_record, a.partitions)
        print(f"pre-filled {a.events:,} events in {n_records} records in {time.perf_counter() - t:.1f} s")
        for i in range(a.repeats):
            rows["raw"].append(raw_consume(broker.bootstrap, topic, a.partitions, n_records, a.per_record))
            order = variants if i % 2 == 0 else variants[::-1]
            for engine in ("chDB", "18.16"):
                for label, repo, opts, engines in order:
                    if engine not in engines:
                        continue
                    with tempfile.TemporaryDirectory(prefix="bench-chdb-") as d:
                        url = f"chdb://{d}" if engine == "chDB" else server.url(f"bench_{uuid.uuid4().hex[:8]}")
                        pids = [broker.proc.pid if broker.proc else None]
                        if engine != "chDB":
                            pids.append(server.proc.pid if server.proc else None)
                        before = [cpu_seconds(p) for p in pids]
                        r, n, cpu, flt = collect_once(broker.bootstrap, topic, url, repo, **opts)
                        others = [cpu_seconds(p) - b for p, b in zip(pids, before)]
                    assert n == a.events, n
                    key = f"collector -> {engine}, {label}"
                    rows.setdefault(key, []).append(r)
                    cpus.setdefault(key, []).append((cpu, *others))
                    faults.setdefault(key, []).append(flt)
            print(f"repeat {i + 1}: " + "  ".join(f"{k}: {v[-1]:,.0f}" for k, v in rows.items()), flush=True)
    finally:
        server.stop()
        broker.stop()
    server = ClickHouseServer().start()
    try:
        prof = decode_profile(a.per_record, server_url=server.url(f"bench_prof_{uuid.uuid4().hex[:6]}"))
    finally:
        server.stop()
    lines = [
        "# Collector throughput",
        "",
        f"`python benchmarks/bench_collector.py {' '.join(sys.argv[1:])}` on {platform.node()} "
        f"({os.cpu_count()} cores, shared with other work; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        "",
        f"Pre-filled audit topic on a local Tansu broker: {a.events:,} events in {n_records} records "
        f"({a.per_record} events per record, {a.partitions} partitions). One collector process per run, default "
        "config (batches of up to 100,000 events / 1 s). Collector rates are sustained: events / (last commit - first "
        "record). All rows come from the same run, interleaved repeat by repeat.",
        "",
        "| path | events/s, median of repeats (min, max, spread) | median ratio to raw consume |",
        "|---|---|---|",
        f"| raw kafka-python consume (the ceiling) | {fmt(rows['raw'])} | 100% |",
    ]
    for k, v in rows.items():
        if k != "raw":
            ratio = statistics.median(c / r for c, r in zip(v, rows["raw"]))
            lines.append(f"| {k} | {fmt(v)} | {ratio:.0%} |")
    this = {e: rows.get(f"collector -> {e}, this checkout") for e in ("chDB", "18.16")}
    pairs = [("collector -> 18.16 / collector -> chDB (this checkout)", this["18.16"], this["chDB"])]
    for k, v in rows.items():
        if "baseline" in k:
            engine = k.split(" -> ", 1)[1].split(",", 1)[0]
            pairs.append((f"{engine}: this checkout / {k.split(', ', 1)[1]}", this[engine], v))
    lines += ["", "Paired ratios (the two runs of the same repeat, then the median over repeats):", "",
              "| pair | median (min, max) |", "|---|---|"]
    for label, x, y in pairs:
        if x and y:
            r = [p / q for p, q in zip(x, y)]
            lines.append(f"| {label} | {statistics.median(r):.2f}x ({min(r):.2f}x, {max(r):.2f}x) |")
    lines += ["", "CPU per run (medians over repeats; contention-free figures: events per CPU-second of the "
              "collector process, all its threads; the broker's and the server's CPU in the same run):", "",
              "| path | collector CPU s / 1M events | events per collector CPU-second (min, max) | broker CPU s | "
              "ClickHouse server CPU s | collector page faults / 1M events |", "|---|---|---|---|---|---|"]
    for k, v in cpus.items():
        col = statistics.median(c[0] for c in v)
        brk = statistics.median(c[1] for c in v)
        srv = f"{statistics.median(c[2] for c in v):.2f}" if len(v[0]) > 2 else "- (in process)"
        per_cpu = [a.events / c[0] for c in v if c[0] > 0]
        flt = statistics.median(faults[k]) * 1e6 / a.events
        lines.append(f"| {k} | {col * 1e6 / a.events:.2f} | {a.events / col:,.0f} ({min(per_cpu):,.0f}, "
                     f"{max(per_cpu):,.0f}) | {brk:.2f} | {srv} | {flt:,.0f} |")
    lines += ["", "Every repeat, in order (events/s):", ""]
    lines += [f"- {k}: " + ", ".join(f"{x:,.0f}" for x in v) for k, v in rows.items()]
    lines += ["", "## Decode path profile (one thread, same records, best of 3)", "",
              "| part | events/s | us/event |", "|---|---|---|"]
    lines += [f"| {k} | {v:,.0f} | {1e6 / v:.1f} |" for k, v in prof.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if not a.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        # the reading below the figures is written by hand: kept from the file as it is
        old = RESULTS.read_text() if RESULTS.exists() else ""
        notes = old[old.index("\n## Reading"):] if "\n## Reading" in old else ""
        RESULTS.write_text(text + notes)
        print(f"wrote {RESULTS}")




if __name__ == "__main__":
    main()
