"""Sizing from measurements: bytes per event on disk, events per business message, collector CPU
per event, reconcile seconds per 100M events; on ClickHouse 18.16 and chDB, per schema variant.

    python benchmarks/bench_sizing.py [--events 10000000] [--repeats 3] [--template chdb:///dir]
                                      [--collector-events 1000000]

* The mix: the events of a real `msgtrace demo` run (its chDB store; one is run when --template is
  not given): two consumer groups, every loss of the seeds, real ids, keys, trace ids and attrs.
  Those rows are replicated inside ClickHouse (INSERT ... SELECT ... ARRAY JOIN) until --events:
  each copy gets new message ids (order-<n>:paid), the emitter's event-id scheme (an instance
  prefix + a counter), per-instance seq numbers, offsets, hosts, trace and span ids derived from
  the new message id, and a time in one day (one day partition, as in production).
* Bytes per event: after OPTIMIZE FINAL (the merged state a day partition reaches), from
  system.parts (bytes_on_disk: data, marks, primary index) and system.columns; per schema variant
  (baseline = the 18.16 schema; lowcardinality; codecs; both = `db init` on a modern server).
* Reconcile: `msgtrace reconcile --json --no-write` (the whole command, as the nightly job runs
  it) over windows of 6, 12 and 24 h of that day, so each run judges a different number of
  events; variants interleaved, repeat by repeat. Seconds per 100M events: a least-squares line
  through the medians (the slope is the cost per event, the intercept the fixed cost), evaluated
  at 100M.
* Collector: `msgtrace collect --until-idle` of a Tansu audit topic holding --collector-events of
  the mix, into chDB and into 18.16; the collector process's CPU seconds (getrusage of the child)
  and, for 18.16, the server's CPU seconds (/proc/<pid>/stat) per event.
* Memory: the 18.16 server's peak resident memory during one reconcile, per message scanned.

The hand-written "## Reading" section of the results file (and what follows it) is kept when the
file is rewritten; a phase left out with --skip keeps its figures from the last run's JSON.

Results go to benchmarks/results/sizing.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tracer.store import Store
from tracer.store.schema import Feature

RESULTS = Path(__file__).resolve().parent / "results" / "sizing.md"
DAY0 = "2026-11-21"
T0 = 1_795_219_200_000_000  # 2026-11-21T00:00:00Z
DAY_US = 86_400_000_000
EPOCH = 2000  # copies of the demo per emitter instance (one process lifetime)

#: store variants: (engine, features, server-like). "server-like" = on chDB with a server's default
#: compression (LZ4) spelled out on every column without a codec: no modern server runs here, and
#: chDB's own default compression is ZSTD-class, which would hide what codecs do on a server.
VARIANTS: dict[str, tuple[str, Feature, bool]] = {
    "18.16 baseline": ("server", Feature.NONE, False),
    "chDB baseline": ("chdb", Feature.NONE, False),
    "chDB lowcardinality (auto on chDB)": ("chdb", Feature.LOW_CARDINALITY, False),
    "chDB codecs": ("chdb", Feature.CODECS, False),
    "server-like baseline (LZ4)": ("chdb", Feature.NONE, True),
    "server-like lowcardinality": ("chdb", Feature.LOW_CARDINALITY, True),
    "server-like lowcardinality+codecs (auto on >= 20.3)": ("chdb", Feature.LOW_CARDINALITY | Feature.CODECS, True),
}
TIMED = ["18.16 baseline", "chDB lowcardinality (auto on chDB)", "server-like baseline (LZ4)",
         "server-like lowcardinality+codecs (auto on >= 20.3)"]


def server_like(stmt: str) -> str:
    """A CREATE TABLE of trace_events with CODEC(LZ4) on every column that has no codec."""
    import re

    out = []
    for line in stmt.splitlines():
        m = re.match(r"^(\s+[a-z_]+ [A-Za-z0-9()]+(?:\([A-Za-z0-9()]+\))?)(,?)$", line)
        if m and "CODEC" not in line:
            line = f"{m.group(1)} CODEC(LZ4){m.group(2)}"
        out.append(line)
    return "\n".join(out)


def init_variant(store: Store, features: Feature, like_server: bool) -> None:
    from tracer.store.schema import SchemaOptions, render_schema

    for stmt in render_schema(store.database, SchemaOptions(features)):
        if like_server and ".trace_events" in stmt:
            stmt = server_like(stmt)
            assert stmt.count("CODEC(") >= 20, stmt
        store.backend.execute(stmt, None)

TEMPLATE_DDL = """
CREATE TABLE IF NOT EXISTS {db:Identifier}.sizing_tmpl
(
    t_stage String, t_service String, t_mq String, t_pid UInt32, t_topic String,
    t_partition Nullable(Int32), t_offset Nullable(Int64), t_group Nullable(String),
    t_has_key UInt8, t_error Nullable(String), t_has_trace UInt8, t_has_span UInt8,
    t_seq UInt64, t_attr_keys Array(String), t_attr_values Array(String),
    m UInt32, e UInt32, rel_us UInt64, ctr UInt64, ecount UInt64, plain UInt8
)
ENGINE = MergeTree() ORDER BY m
"""

# One copy r of the demo: message m becomes order-<1e8 + r * n_msgs + m>:paid; emitter e's instance
# is (e, r div EPOCH): its event ids are the instance's 24-character prefix and a 12-digit counter,
# as tracer.sdk.emitter makes them; seq and offsets continue copy after copy.
GEN_SQL = """
INSERT INTO {db:Identifier}.trace_events
SELECT
    concat(substring(ih, 1, 8), '-', substring(ih, 9, 4), '-', substring(ih, 13, 4), '-', substring(ih, 17, 4), '-',
           substring(toString(1000000000000 + ctr + (r % {epoch:UInt64}) * ecount), 2)) AS event_id,
    concat('order-', toString(100000000 + r * {n_msgs:UInt64} + m), ':paid') AS msg_id,
    t_stage AS stage,
    {t0:UInt64} + r * {rep_us:UInt64} + rel_us AS ts_us,
    t_service AS service,
    concat('host-', toString((e * 7 + intDiv(r, {epoch:UInt64})) % 24)) AS host,
    t_mq AS mq,
    t_pid AS pid,
    t_topic AS topic,
    t_partition AS partition,
    if(isNull(t_offset), CAST(NULL AS Nullable(Int64)), toNullable(assumeNotNull(t_offset) + toInt64(r) * {n_msgs:UInt64})) AS offset,
    t_group AS consumer_group,
    if(t_has_key = 1, toNullable(concat('order-', toString(100000000 + r * {n_msgs:UInt64} + m))), CAST(NULL AS Nullable(String))) AS key,
    t_error AS error,
    if(t_has_trace = 1, toNullable(lower(hex(MD5(msg_id)))), CAST(NULL AS Nullable(String))) AS trace_id,
    if(t_has_span = 1, toNullable(substring(lower(hex(MD5(concat(msg_id, '/', toString(e))))), 1, 16)), CAST(NULL AS Nullable(String))) AS span_id,
    concat(substring(ih, 1, 8), '-', substring(ih, 9, 4), '-', substring(ih, 13, 4), '-', substring(ih, 17, 4), '-',
           substring(ih, 21, 12)) AS emitter_id,
    t_seq + (r % {epoch:UInt64}) * ecount AS seq,
    t_attr_keys AS attr_keys,
    t_attr_values AS attr_values
FROM
(
    SELECT *, r, lower(hex(MD5(concat(toString(e), '/', toString(intDiv(r, {epoch:UInt64})))))) AS ih
    FROM {db:Identifier}.sizing_tmpl
    ARRAY JOIN arrayMap(x -> x + {start:UInt64}, range({count:UInt64})) AS r
    WHERE plain = 1 OR r % {lossy_every:UInt64} = 0
)
"""


@dataclass(slots=True)
class Template:
    rows: list[dict]
    n_msgs: int
    duration_us: int
    n_plain: int = 0

    @property
    def events_per_message(self) -> float:
        return len(self.rows) / self.n_msgs


def load_template(url: str) -> Template:
    """The demo's events, with message and emitter indexes, times relative to the demo's start and
    each event's counter within its emitter (the emitter numbers its event ids)."""
    with Store(url) as s:
        rows = s.query("SELECT * FROM {db:Identifier}.trace_events ORDER BY ts_us, seq LIMIT 1 BY event_id")
    if not rows:
        raise SystemExit(f"no events in {url}: run `msgtrace demo --workdir DIR` first")
    msgs = {m: i for i, m in enumerate(sorted({r["msg_id"] for r in rows}))}
    emitters = {e: i for i, e in enumerate(sorted({r["emitter_id"] for r in rows}))}
    t_min = min(r["ts_us"] for r in rows)
    per_emitter: dict[str, int] = {}
    for r in rows:
        per_emitter[r["emitter_id"]] = max(per_emitter.get(r["emitter_id"], 0), int(r["seq"]))
    # plainly delivered in both groups: sent, broker_acked, and once each received, business_done,
    # offset_committed per group, no failure (the other messages carry the demo's losses)
    stages: dict[str, list[tuple[str, str]]] = {}
    for r in rows:
        stages.setdefault(r["msg_id"], []).append((r["stage"], r["consumer_group"] or ""))
    groups = sorted({g for v in stages.values() for _, g in v if g})
    want = sorted([("broker_acked", ""), ("sent", "")] + [(st, g) for g in groups
                                                          for st in ("business_done", "offset_committed", "received")])
    plain = {m for m, v in stages.items() if sorted(v) == want}
    out = []
    for r in rows:
        tail = r["event_id"].rsplit("-", 1)[-1]
        ctr = int(tail) if tail.isdigit() else int(r["seq"])
        out.append({
            "t_stage": r["stage"], "t_service": r["service"], "t_mq": r["mq"], "t_pid": r["pid"], "t_topic": r["topic"],
            "t_partition": r["partition"], "t_offset": r["offset"], "t_group": r["consumer_group"],
            "t_has_key": int(r["key"] is not None), "t_error": r["error"], "t_has_trace": int(r["trace_id"] is not None),
            "t_has_span": int(r["span_id"] is not None), "t_seq": int(r["seq"]), "t_attr_keys": r["attr_keys"],
            "t_attr_values": r["attr_values"], "m": msgs[r["msg_id"]], "e": emitters[r["emitter_id"]],
            "rel_us": int(r["ts_us"] - t_min), "ctr": ctr, "ecount": per_emitter[r["emitter_id"]],
            "plain": int(r["msg_id"] in plain)})
    return Template(out, len(msgs), max(r["ts_us"] for r in rows) - t_min, len(plain))


def run_demo(workdir: str) -> str:
    print(f"running `msgtrace demo` in {workdir} for the event mix ...", flush=True)
    subprocess.run([sys.executable, "-m", "tracer", "demo", "--workdir", workdir, "--json"], check=True,
                   stdout=subprocess.DEVNULL, cwd=ROOT, timeout=900)
    return f"chdb://{workdir}/store"


def generate(store: Store, tmpl: Template, events: int, chunk_events: int = 2_000_000,
             lossy_every: int = 1) -> tuple[int, float]:
    """Fill trace_events with about ``events`` events of the mix, spread over one day; with
    ``lossy_every`` K > 1 only every K-th copy of the demo keeps its lossy messages (the others
    have the plainly delivered ones only): a production-like loss rate."""
    store.command(TEMPLATE_DDL)
    store.command("TRUNCATE TABLE {db:Identifier}.sizing_tmpl")
    store.insert("sizing_tmpl", {k: [r[k] for r in tmpl.rows] for k in tmpl.rows[0]})
    n_plain_rows = sum(r["plain"] for r in tmpl.rows)
    per_copy = len(tmpl.rows) if lossy_every == 1 else n_plain_rows + (len(tmpl.rows) - n_plain_rows) / lossy_every
    copies = max(1, int(events // per_copy))
    rep_us = max(1, (DAY_US - tmpl.duration_us - 1) // copies)
    per = max(1, chunk_events // len(tmpl.rows))
    t = time.perf_counter()
    with store.session():
        for start in range(0, copies, per):
            store.command(GEN_SQL, {"epoch": EPOCH, "n_msgs": tmpl.n_msgs, "t0": T0, "rep_us": rep_us,
                                    "start": start, "count": min(per, copies - start), "lossy_every": lossy_every})
    n = int(store.query("SELECT count() AS n FROM {db:Identifier}.trace_events")[0]["n"])
    return n, time.perf_counter() - t


@dataclass(slots=True)
class Footprint:
    rows: int
    bytes_on_disk: int
    compressed: int
    uncompressed: int
    columns: dict[str, int] = field(default_factory=dict)

    @property
    def per_event(self) -> float:
        return self.bytes_on_disk / self.rows if self.rows else 0.0


def footprint(store: Store, table: str = "trace_events") -> Footprint:
    p = store.query("SELECT sum(rows) AS rows, sum(bytes_on_disk) AS b, sum(data_compressed_bytes) AS c, "
                    "sum(data_uncompressed_bytes) AS u FROM system.parts WHERE database = {db:String} "
                    "AND table = {t:String} AND active", {"db": store.database, "t": table})[0]
    cols = store.query("SELECT name, data_compressed_bytes AS c FROM system.columns WHERE database = {db:String} "
                       "AND table = {t:String} ORDER BY c DESC", {"db": store.database, "t": table})
    return Footprint(int(p["rows"]), int(p["b"]), int(p["c"]), int(p["u"]), {r["name"]: int(r["c"]) for r in cols})


def reconcile_seconds(url: str, hours: int) -> float:
    end = time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(T0 / 1e6 + hours * 3600))
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "tracer", "reconcile", "--from", f"{DAY0}T00:00:00Z", "--to", end,
                        "--json", "--no-write", "--store", url], capture_output=True, text=True, cwd=ROOT, timeout=3600)
    dt = time.perf_counter() - t
    if r.returncode not in (0, 1):
        raise RuntimeError(f"reconcile failed on {url.split('@')[-1]}: {r.stderr[-1500:]}")
    return dt


def events_in_window(store: Store, hours: int) -> int:
    return int(store.query("SELECT count() AS n FROM {db:Identifier}.trace_events WHERE ts_us < {hi:UInt64}",
                           {"hi": T0 + hours * 3_600_000_000 + 600_000_000})[0]["n"])


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of seconds over events."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - slope * mx, slope


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def collector_cpu(tmpl: Template, n_events: int, server) -> dict[str, dict]:
    """Collector CPU seconds per event (and the 18.16 server's), audit topic -> store."""
    from collectors.testing import create_topic, produce_events
    from tracer.events import Event
    from tracer.localsvc import TansuBroker

    evs: list[Event] = []
    copies = n_events // len(tmpl.rows) + 1
    for r in range(copies):
        for t in tmpl.rows:
            m = f"order-{100000000 + r * tmpl.n_msgs + t['m']}:paid"
            evs.append(Event(msg_id=m, stage=t["t_stage"], ts_us=T0 + r * 2_000_000 + t["rel_us"],
                             service=t["t_service"], host=f"host-{t['e']}", pid=t["t_pid"], topic=t["t_topic"],
                             partition=t["t_partition"], offset=t["t_offset"], consumer_group=t["t_group"],
                             key=m[:15] if t["t_has_key"] else None, error=t["t_error"],
                             trace_id=uuid.uuid5(uuid.NAMESPACE_OID, m).hex if t["t_has_trace"] else None,
                             emitter_id=f"em-{t['e']}", seq=t["t_seq"] + r * t["ecount"],
                             attrs=dict(zip(t["t_attr_keys"], t["t_attr_values"]))))
            if len(evs) >= n_events:
                break
        if len(evs) >= n_events:
            break
    out: dict[str, dict] = {}
    with TansuBroker() as broker:
        topic = f"sizing-{uuid.uuid4().hex[:8]}"
        create_topic(broker.bootstrap, topic, 2)
        produce_events(broker.bootstrap, topic, evs, per_record=500, partitions=2)
        tmp = tempfile.mkdtemp(prefix="sizing-collect-")
        targets = {"chdb": f"chdb://{tmp}/store"}
        if server is not None:
            targets["18.16"] = server.url(f"sz_{uuid.uuid4().hex[:8]}")
        for name, url in targets.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            srv0 = _proc_cpu(server.proc.pid) if name == "18.16" else 0.0
            t = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "tracer", "collect", "--bootstrap", broker.bootstrap,
                                "--audit-topic", topic, "--store", url, "--group", f"g-{uuid.uuid4().hex[:6]}",
                                "--until-idle", "--json", "--log-level", "warning"],
                               capture_output=True, text=True, cwd=ROOT, timeout=1800)
            wall = time.perf_counter() - t
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if r.returncode != 0:
                raise RuntimeError(f"collect into {name} failed: {r.stderr[-1500:]}")
            stats = json.loads(r.stdout)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            srv = (_proc_cpu(server.proc.pid) - srv0) if name == "18.16" else None
            out[name] = {"stored": stats["stored"], "wall_s": wall, "cpu_s": cpu, "server_cpu_s": srv,
                         "sustained": stats.get("sustained_events_per_s") or stats.get("events_per_s")}
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _rss(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def reconcile_memory(server, url: str) -> dict[str, float]:
    """Peak memory of one reconcile (24 h) on the 18.16 server: restart it, then its peak resident
    memory (VmHWM) minus the resident memory before the run, per message scanned."""
    with Store(url) as s:
        msgs = int(s.query("SELECT uniqExact(msg_id) AS m FROM {db:Identifier}.trace_events")[0]["m"])
    server.stop()
    server.start()
    before = _rss(server.proc.pid)["VmRSS"]
    secs = reconcile_seconds(url, 24)
    peak = _rss(server.proc.pid)["VmHWM"] - before
    return {"messages": msgs, "peak_bytes": peak, "per_message": peak / msgs, "seconds": secs}


def med(xs: list[float]) -> str:
    if not xs:
        return "-"
    m = statistics.median(xs)
    spread = (max(xs) - min(xs)) / m * 100 if m else 0
    return f"{m:.2f} (min {min(xs):.2f}, max {max(xs):.2f}, spread {spread:.0f}%)"


def _store_url(name: str, work: str, server) -> str:
    engine = VARIANTS[name][0]
    slug = "".join(c if c.isalnum() else "_" for c in name)[:40]
    return server.url(f"sz_{slug}") if engine == "server" else f"chdb://{work}/{slug}"


def _fill(url: str, name: str, tmpl: Template, events: int, lossy_every: int) -> tuple[Footprint, float, float]:
    _, features, like_server = VARIANTS[name]
    with Store(url) as s:
        s.command("DROP TABLE IF EXISTS {db:Identifier}.trace_events")
        s.command("CREATE DATABASE IF NOT EXISTS {db:Identifier}")
        init_variant(s, features, like_server)
        _, secs = generate(s, tmpl, events, lossy_every=lossy_every)
        t = time.perf_counter()
        s.command("OPTIMIZE TABLE {db:Identifier}.trace_events FINAL")
        opt = time.perf_counter() - t
        s.command("DROP TABLE IF EXISTS {db:Identifier}.sizing_tmpl")
        return footprint(s), secs, opt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--template", help="chDB store of a demo run (default: run the demo)")
    ap.add_argument("--collector-events", type=int, default=1_000_000)
    ap.add_argument("--windows", default="6,12,24", help="reconcile windows in hours")
    ap.add_argument("--lossy-every", type=int, default=100,
                    help="reconcile data: only every K-th copy of the demo keeps its losses (production-like)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list of VARIANTS keys")
    ap.add_argument("--skip", default="", help="comma list of phases to skip (their last figures are kept): "
                                                "disk, reconcile, collector, memory")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    from tracer.localsvc import ClickHouseServer

    work = tempfile.mkdtemp(prefix="msgtrace-sizing-")
    tmpl = load_template(args.template or run_demo(os.path.join(work, "demo")))
    print(f"template: {len(tmpl.rows)} events of {tmpl.n_msgs} messages ({tmpl.events_per_message:.2f} events per "
          f"message; {tmpl.n_plain} plainly delivered)", flush=True)
    server = ClickHouseServer(workdir=os.path.join(work, "ch")).start()
    sizes: dict[str, Footprint] = {}
    times: dict[tuple[str, int], list[float]] = {}
    counts: dict[int, int] = {}
    collector: dict[str, dict] = {}
    memory: dict[str, float] = {}
    windows = [int(h) for h in args.windows.split(",")]
    names = [n for n in args.variants.split(",") if n]
    try:
        version = Store(server.url("default")).server_version()
        chdb_version = Store(f"chdb://{work}/v").server_version()
        if "disk" not in skip:
            for name in names:
                f, secs, opt = _fill(_store_url(name, work, server), name, tmpl, args.events, 1)
                sizes[name] = f
                print(f"{name}: {f.rows} events, {f.per_event:.1f} bytes/event on disk "
                      f"(generated in {secs:.0f} s, merged in {opt:.0f} s)", flush=True)
        if "reconcile" not in skip:
            timed = [n for n in TIMED if n in names]
            for name in timed:
                f, _, _ = _fill(_store_url(name, work, server), name, tmpl, args.events, args.lossy_every)
                print(f"{name}: {f.rows} events for the reconcile runs", flush=True)
            with Store(_store_url(timed[0], work, server)) as s:
                counts = {h: events_in_window(s, h) for h in windows}
            for rep in range(args.repeats):
                order = timed if rep % 2 == 0 else list(reversed(timed))
                for h in windows:
                    for name in order:
                        times.setdefault((name, h), []).append(reconcile_seconds(_store_url(name, work, server), h))
                print(f"reconcile repeat {rep + 1}/{args.repeats} done", flush=True)
        if "collector" not in skip:
            collector = collector_cpu(tmpl, args.collector_events, server)
        if "memory" not in skip:
            url = _store_url("18.16 baseline", work, server)
            if "reconcile" in skip:
                _fill(url, "18.16 baseline", tmpl, args.events, args.lossy_every)
            memory = reconcile_memory(server, url)
    finally:
        server.stop()
    # a skipped phase keeps the figures of the last run (benchmarks/results/sizing.json)
    last = json.loads(RESULTS.with_suffix(".json").read_text()) if RESULTS.with_suffix(".json").exists() else {}
    if not sizes and last.get("sizes"):
        sizes = {k: Footprint(v["rows"], v["bytes_on_disk"], v["compressed"], v["uncompressed"], v["columns"])
                 for k, v in last["sizes"].items()}
    if not times and last.get("times"):
        times = {(k.split("|")[0], int(k.split("|")[1])): v for k, v in last["times"].items()}
        counts = {int(k): v for k, v in last["counts"].items()}
        windows = sorted(counts)
    collector = collector or last.get("collector", {})
    memory = memory or last.get("memory", {})
    write_results(args, tmpl, version, chdb_version, sizes, windows, counts, times, collector, memory)
    shutil.rmtree(work, ignore_errors=True)


def write_results(args, tmpl: Template, version: str, chdb_version: str, sizes: dict[str, Footprint],
                  windows: list[int], counts: dict[int, int], times: dict[tuple[str, int], list[float]],
                  collector: dict[str, dict], memory: dict[str, float]) -> None:
    lines = ["# Sizing\n",
             f"`python benchmarks/bench_sizing.py --events {args.events} --repeats {args.repeats} --lossy-every "
             f"{args.lossy_every}` on {platform.node()} ({os.cpu_count()} cores, shared with other work; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); ClickHouse {version} (Debian) and chDB {chdb_version}.\n",
             "## The mix\n",
             f"The events of one `msgtrace demo` run: {len(tmpl.rows)} events of {tmpl.n_msgs} business messages, "
             f"**{tmpl.events_per_message:.2f} events per business message** (a producer's sent + broker_acked, "
             "then received, business_done and offset_committed in each of two consumer groups, with the "
             "demo's injected losses: send failures, DLQ, lost and redelivered messages). In general: "
             "about 2 + 3 x (consumer groups) events per message.\n"]
    if sizes:
        lines += ["## Bytes per event on disk (10M events of the demo's mix, after OPTIMIZE FINAL, one day partition)\n",
                  "\"server-like\": on chDB with a ClickHouse server's default compression (LZ4) written out on "
                  "every column without a codec; chDB's own default is ZSTD-class (compare its baseline with the "
                  "server-like one), so its figures are not what a server stores.\n",
                  "| store, schema | events | bytes on disk / event | compressed data / event | uncompressed / event | ratio |",
                  "|---|---|---|---|---|---|"]
        for name, f in sizes.items():
            lines.append(f"| {name} | {f.rows:,} | **{f.per_event:.1f}** | {f.compressed / f.rows:.1f} | "
                         f"{f.uncompressed / f.rows:.1f} | {f.uncompressed / max(1, f.compressed):.1f}x |")
        lines += ["", "Largest columns (compressed bytes per event):", "",
                  "| column | " + " | ".join(sizes) + " |", "|---|" + "---|" * len(sizes)]
        first = next(iter(sizes.values()))
        for col, _ in sorted(first.columns.items(), key=lambda kv: -kv[1])[:10]:
            lines.append(f"| {col} | " + " | ".join(f"{f.columns.get(col, 0) / f.rows:.1f}" for f in sizes.values()) + " |")
    if times:
        timed = sorted({k[0] for k in times}, key=TIMED.index)
        lines += ["", "## Reconcile (the whole `msgtrace reconcile --json --no-write` command)\n",
                  f"Production-like data: {args.events:,} events of the mix where only every {args.lossy_every}th copy "
                  "of the demo keeps its lossy messages. Windows of "
                  f"{', '.join(map(str, windows))} h of the day; events in the scanned range: "
                  + ", ".join(f"{h} h: {counts[h]:,}" for h in windows)
                  + f". Medians of {args.repeats} interleaved repeats (min, max, spread). Seconds per 100M events: "
                  "a least-squares line through the three medians (slope = cost per event, intercept = fixed "
                  "cost), evaluated at 100M.\n",
                  "| store | " + " | ".join(f"{h} h (s)" for h in windows) + " | fixed (s) | s per 1M events | **s per 100M events** |",
                  "|---|" + "---|" * (len(windows) + 3)]
        for name in timed:
            pts = [(counts[h], statistics.median(times[(name, h)])) for h in windows]
            a, b = fit(pts)
            lines.append(f"| {name} | " + " | ".join(med(times[(name, h)]) for h in windows)
                         + f" | {a:.2f} | {b * 1e6:.2f} | **{a + b * 100_000_000:.0f}** |")
    if collector:
        lines += ["", "## Collector CPU per event (audit topic on Tansu -> store, `msgtrace collect --until-idle`)\n",
                  "| into | events | wall s | collector CPU s | events per collector CPU-second | server CPU s | events per server CPU-second |",
                  "|---|---|---|---|---|---|---|"]
        for name, c in collector.items():
            srv = c["server_cpu_s"]
            srv_s = "-" if srv is None else f"{srv:.1f}"
            srv_rate = "-" if not srv else f"{c['stored'] / srv:,.0f}"
            lines.append(f"| {name} | {c['stored']:,} | {c['wall_s']:.1f} | {c['cpu_s']:.1f} | "
                         f"{c['stored'] / c['cpu_s']:,.0f} | {srv_s} | {srv_rate} |")
    if memory:
        lines += ["", "## Reconcile memory\n",
                  f"18.16, the 24 h window of the reconcile data, the server restarted before the run: its resident "
                  f"memory grew by **{memory['peak_bytes'] / 2**20:,.0f} MiB for {memory['messages']:,} messages, "
                  f"~{memory['per_message']:.0f} bytes per message scanned** (pass 1's GROUP BY msg_id, and pass 2 "
                  f"for the lossy ones); the run took {memory['seconds']:.1f} s."]
    reading = RESULTS.read_text().split("\n## Reading\n", 1)[1] if RESULTS.exists() and "\n## Reading\n" in RESULTS.read_text() else ""
    RESULTS.write_text("\n".join(lines) + "\n" + ("\n## Reading\n" + reading if reading else ""))
    print("\n".join(lines))
    json.dump({"sizes": {k: {"rows": v.rows, "bytes_on_disk": v.bytes_on_disk, "compressed": v.compressed,
                             "uncompressed": v.uncompressed, "columns": v.columns} for k, v in sizes.items()},
               "times": {f"{k[0]}|{k[1]}": v for k, v in times.items()}, "counts": counts, "collector": collector,
               "memory": memory,
               "template": {"events": len(tmpl.rows), "messages": tmpl.n_msgs, "plain": tmpl.n_plain}},
              open(RESULTS.with_suffix(".json"), "w"), indent=1)


if __name__ == "__main__":
    main()
