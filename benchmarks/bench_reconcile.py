"""Benchmark: reconcile vs the bare GROUP BY msg_id; trace-msg query and whole command.

* reconcile of N messages x 5 stages in chDB (default 1M messages = 5M events), timed beside the bare
  per-message aggregation (stage bitmask GROUP BY msg_id) over the same rows, alternating, in one run;
* trace-msg on a store of 10M events: the lookup (events of one id + verdicts, as the command does)
  and the whole `trace-msg` command in a fresh process.

Data is generated inside ClickHouse (INSERT ... SELECT FROM numbers()), not in Python. 0.1 % of the
messages lose their business outcome (lost_in_consumer) and 0.1 % never reach the consumer (judged
lost_in_broker from later-acked receipts), so the evidence steps run too.

    python benchmarks/bench_reconcile.py [--messages 1000000] [--trace-events 10000000] [--repeats 5]
    python benchmarks/bench_reconcile.py --skip-trace --compare /tmp/before [--rounds 4]

``--compare DIR``: before/after in one run. DIR is another checkout (e.g. ``git worktree add
/tmp/before HEAD``); the two stores are generated once, then each round runs, per window, one
process per tree (this one and DIR, in alternating order), ``--repeats`` repeats each, and checks
that both trees give the same verdict rows (a digest of id, group, verdict, flags, evidence).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
# --tree DIR (a worker of --compare): the code under test comes from DIR
TREE = Path(sys.argv[sys.argv.index("--tree") + 1]).resolve() if "--tree" in sys.argv[:-1] else HERE.parent.parent
sys.path.insert(0, str(TREE))

from tracer.analysis.reconcile import judge_message, reconcile  # noqa: E402
from tracer.store import Store  # noqa: E402

T0 = 1_795_219_200_000_000  # 2026-11-21T00:00:00Z
STEP_US = 2_000  # one message every 2 ms -> 1M messages in ~33 min

# Stage k of message n (k = number % 5). Messages n % 1000 == 7 lose business_done (it becomes a
# second receipt), n % 1000 == 3 never reach the consumer (its stages become producer retries): the
# event count and every emitter's seq numbering stay intact.
GEN_SQL = """
INSERT INTO {db:Identifier}.trace_events
SELECT
    toString(generateUUIDv4(number)) AS event_id,
    concat('order-', toString(n), ':paid') AS msg_id,
    multiIf(n % 1000 = {broken:UInt64} AND k >= 2, 'sent', n % 1000 = 7 AND {lossy:UInt8} = 1 AND k = 4, 'received',
            ['sent', 'broker_acked', 'received', 'offset_committed', 'business_done'][k + 1]) AS stage,
    {t0:UInt64} + n * {step:UInt64} + k * 1500 AS ts_us,
    if(k < 2, 'order-service', 'red-packet-service') AS service,
    concat('host-', toString(n % 4 + if(k < 2, 0, 4))) AS host,
    'kafka' AS mq,
    toUInt32(1000 + n % 4) AS pid,
    'orders.paid' AS topic,
    if(k = 0 OR (n % 1000 = {broken:UInt64} AND k >= 2), CAST(NULL AS Nullable(Int32)),
       toNullable(toInt32(n % 12))) AS partition,
    if(k = 0 OR (n % 1000 = {broken:UInt64} AND k >= 2), CAST(NULL AS Nullable(Int64)),
       toNullable(toInt64(intDiv(n, 12) + if(k = 3, 1, 0)))) AS offset,
    if(k < 2 OR (n % 1000 = {broken:UInt64} AND k >= 2), CAST(NULL AS Nullable(String)),
       toNullable('red-packet')) AS consumer_group,
    toNullable(toString(n)) AS key,
    CAST(NULL AS Nullable(String)) AS error,
    toNullable(lower(hex(MD5(toString(n))))) AS trace_id,
    CAST(NULL AS Nullable(String)) AS span_id,
    concat(if(k < 2, 'p-', 'c-'), toString(n % 4)) AS emitter_id,
    toUInt64(intDiv(n, 4) * if(k < 2, 2, 3) + if(k < 2, k, k - 2) + 1) AS seq,
    CAST([] AS Array(String)) AS attr_keys,
    CAST([] AS Array(String)) AS attr_values
FROM
(
    SELECT number, {base:UInt64} + intDiv(number, 5) AS n, number % 5 AS k
    FROM numbers({rows:UInt64})
)
"""

BARE_SQL = """
SELECT count() AS messages, sum(m) AS s
FROM
(
    SELECT msg_id, groupBitOr(toUInt8(transform(stage,
        ['sent', 'send_failed', 'broker_acked', 'received', 'offset_committed', 'business_done',
         'business_failed', 'dead_lettered'], [1, 2, 4, 8, 16, 32, 64, 128], 0))) AS m
    FROM {db:Identifier}.trace_events
    WHERE ts_us >= {lo:UInt64} AND ts_us < {hi:UInt64}
    GROUP BY msg_id
)
"""


def generate(store: Store, messages: int, chunk: int = 1_000_000, lossy: bool = True) -> float:
    t = time.perf_counter()
    for base in range(0, messages, chunk):
        n = min(chunk, messages - base)
        store.command(GEN_SQL, {"t0": T0, "step": STEP_US, "base": base, "rows": n * 5,
                                "lossy": 1 if lossy else 0, "broken": 3 if lossy else 1000})
    store.command("OPTIMIZE TABLE {db:Identifier}.trace_events FINAL")
    return time.perf_counter() - t


def _cpu() -> float:
    """CPU seconds of this process, chDB's threads included (it runs in-process)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def stats(xs: list[float]) -> str:
    return (f"median {statistics.median(xs):.3f} s (min {min(xs):.3f}, max {max(xs):.3f}, "
            f"n={len(xs)})")


def _step(sql: str) -> str:
    """A query's name: the first words of its header comment (every query file starts with one)."""
    for line in sql.splitlines():
        line = line.strip()
        if line.startswith("--"):
            return line[2:].strip()[:60]
        if line:
            return line[:40]
    return "?"


def digest(rows) -> str:
    """The verdict rows as a hash: both trees of --compare must give the same."""
    h = hashlib.sha256()
    for v in sorted(rows, key=lambda v: (v.msg_id, v.consumer_group)):
        h.update(repr((v.msg_id, v.consumer_group, v.topic, v.verdict, sorted(v.flags), v.evidence,
                       v.decided_by)).encode())
    return h.hexdigest()[:16]


def store_dir(root: str, lossy: bool) -> str:
    return f"{root}/rec-{'lossy' if lossy else 'clean'}"


def bench_reconcile(root: str, messages: int, repeats: int, lossy: bool, fresh: bool = True) -> dict:
    store = Store(f"chdb://{store_dir(root, lossy)}")
    gen_s = 0.0
    if fresh:
        store.init_schema()
        gen_s = generate(store, messages, lossy=lossy)
    steps: dict[str, list[float]] = {}
    orig_query = store.query

    def timed_query(sql, params=None, **kw):
        t = time.perf_counter()
        try:
            return orig_query(sql, params, **kw)
        finally:
            steps.setdefault(_step(sql), []).append(time.perf_counter() - t)

    lo, hi = T0, T0 + messages * STEP_US + 60_000_000
    now = hi + 3600 * 1_000_000
    bare, rec, ratios, cpu_ratios = [], [], [], []
    res = None
    with store.session():
        # warm-up of both (page cache, first-use costs), not timed
        store.query(BARE_SQL, {"lo": lo, "hi": hi})
        reconcile(store, lo, hi, grace_s=600, now_us=now, write=False)
        for _ in range(repeats):
            c, t = _cpu(), time.perf_counter()
            b = store.query(BARE_SQL, {"lo": lo, "hi": hi})
            tb, cb = time.perf_counter() - t, _cpu() - c
            store.query = timed_query  # type: ignore[method-assign]
            c, t = _cpu(), time.perf_counter()
            res = reconcile(store, lo, hi, grace_s=600, now_us=now, write=True)
            tr, cr = time.perf_counter() - t, _cpu() - c
            store.query = orig_query  # type: ignore[method-assign]
            bare.append(tb)
            rec.append(tr)
            ratios.append(tr / tb)
            cpu_ratios.append(cr / cb)
    assert b[0]["messages"] == messages, b
    assert res is not None and res.total == messages, res.total
    store.close()
    return {"gen_s": gen_s, "bare": bare, "reconcile": rec, "ratios": ratios, "cpu_ratios": cpu_ratios,
            "summary": res.summary, "digest": digest(res.rows),
            "rows": len(res.rows), "steps": steps}


def compare(root: str, other: Path, messages: int, repeats: int, rounds: int) -> None:
    """Before (``other``) and after (this tree) in one run: see the module docstring."""
    trees = {"after": TREE, "before": other.resolve()}
    for lossy in (False, True):
        store = Store(f"chdb://{store_dir(root, lossy)}")
        store.init_schema()
        generate(store, messages, lossy=lossy)
        store.close()
    out: dict[tuple[bool, str], list[dict]] = {}
    for rnd in range(rounds):
        for lossy in (False, True):
            order = ["before", "after"] if rnd % 2 == 0 else ["after", "before"]
            for name in order:
                p = subprocess.run([sys.executable, str(HERE), "--worker", "--tree", str(trees[name]), "--keep", root,
                                    "--messages", str(messages), "--repeats", str(repeats)] +
                                   (["--lossy"] if lossy else []), capture_output=True, text=True)
                if p.returncode != 0:
                    raise SystemExit(f"{name} worker failed:\n{p.stderr}")
                r = json.loads(p.stdout.strip().splitlines()[-1])
                out.setdefault((lossy, name), []).append(r)
                load = os.getloadavg()[0]
                print(f"round {rnd + 1} {'lossy' if lossy else 'clean'} {name}: cpu ratio "
                      f"{statistics.median(r['cpu_ratios']):.2f} wall {statistics.median(r['ratios']):.2f} "
                      f"(load {load:.1f})", flush=True)
    print("| window | code | bare (median) | reconcile (median) | ratio wall, median (min - max) | "
          "ratio CPU, median (min - max) |")
    print("|---|---|---|---|---|---|")
    for lossy in (False, True):
        digests = set()
        for name in ("before", "after"):
            rs = out[(lossy, name)]
            digests |= {r["digest"] for r in rs}
            cat = {k: [x for r in rs for x in r[k]] for k in ("bare", "reconcile", "ratios", "cpu_ratios")}
            print(f"| {'0.2 % lost' if lossy else 'clean'} | {name} | {statistics.median(cat['bare']):.3f} s | "
                  f"{statistics.median(cat['reconcile']):.3f} s | {statistics.median(cat['ratios']):.2f}x "
                  f"({min(cat['ratios']):.2f} - {max(cat['ratios']):.2f}) | "
                  f"{statistics.median(cat['cpu_ratios']):.2f}x ({min(cat['cpu_ratios']):.2f} - "
                  f"{max(cat['cpu_ratios']):.2f}) |")
        assert len(digests) == 1, f"verdicts differ between the trees: {digests}"
    for lossy in (False, True):
        for name in ("before", "after"):
            steps: dict[str, list[float]] = {}
            for r in out[(lossy, name)]:
                for k, xs in r["steps"].items():
                    steps.setdefault(k, []).extend(xs)
            print(f"steps, {'lossy' if lossy else 'clean'}, {name}:")
            for k, xs in steps.items():
                print(f"  {k}: median {statistics.median(xs):.3f} s (n={len(xs)})")


def bench_trace(root: str, events: int, repeats: int, lookups: int = 60) -> dict:
    url = f"chdb://{root}/trace"
    store = Store(url)
    store.init_schema()
    messages = events // 5
    gen_s = generate(store, messages)
    rnd = random.Random(42)
    ids = [f"order-{rnd.randrange(messages)}:paid" for _ in range(lookups)]
    lookup, events_only = [], []
    with store.session():
        for m in ids[:5]:  # warm-up
            judge_message(store, m)
        for m in ids:
            t = time.perf_counter()
            evs = store.select_events(m)
            t1 = time.perf_counter()
            vs = judge_message(store, m, events=evs)
            t2 = time.perf_counter()
            assert evs and vs
            events_only.append(t1 - t)
            lookup.append(t2 - t)
    store.close()
    # the installed console script itself (a pyenv shim in front of it adds ~0.3 s of bash)
    direct = Path(sys.executable).parent / "trace-msg"
    cmd = str(direct) if direct.exists() else (shutil.which("trace-msg") or "trace-msg")
    whole = []
    for i in range(max(repeats, 5)):
        t = time.perf_counter()
        p = subprocess.run([cmd, ids[i], "--store", url], capture_output=True, text=True)
        whole.append(time.perf_counter() - t)
        assert p.returncode in (0, 1), p.stderr
    return {"gen_s": gen_s, "lookup": lookup, "events_only": events_only, "whole": whole, "events": messages * 5}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--trace-events", type=int, default=10_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    ap.add_argument("--skip-trace", action="store_true")
    ap.add_argument("--skip-reconcile", action="store_true")
    ap.add_argument("--compare", metavar="DIR", help="another checkout: before (DIR) vs after (this tree), interleaved")
    ap.add_argument("--rounds", type=int, default=4, help="with --compare: rounds of before/after per window")
    ap.add_argument("--tree", metavar="DIR", help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--lossy", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:  # one (tree, window) of --compare, on the stores in --keep; one JSON line out
        print(json.dumps(bench_reconcile(a.keep, a.messages, a.repeats, a.lossy, fresh=False)))
        return
    root = a.keep or tempfile.mkdtemp(prefix="msgtrace-bench-")
    os.makedirs(root, exist_ok=True)
    try:
        if a.compare:
            compare(root, Path(a.compare), a.messages, a.repeats, a.rounds)
            return
        for lossy in (() if a.skip_reconcile else (False, True)):
            r = bench_reconcile(root, a.messages, a.repeats, lossy)
            title = '0.2 % of messages lost (spread over every partition)' if lossy else 'clean window (nothing lost)'
            print(f"== {title}")
            print(f"generated {a.messages} messages x 5 stages in {r['gen_s']:.1f} s")
            print(f"bare GROUP BY msg_id: {stats(r['bare'])}")
            print(f"reconcile:            {stats(r['reconcile'])}")
            rs = r["ratios"]
            print(f"ratio reconcile/bare: median {statistics.median(rs):.2f} (min {min(rs):.2f}, max {max(rs):.2f})")
            cs = r["cpu_ratios"]
            print(f"  same, CPU time:     median {statistics.median(cs):.2f} (min {min(cs):.2f}, max {max(cs):.2f})")
            print(f"verdicts: {r['summary']}; rows to Python: {r['rows']}")
            for k, xs in r["steps"].items():
                print(f"  step {k}: median {statistics.median(xs):.3f} s (n={len(xs)})")
        if not a.skip_trace:
            t = bench_trace(root, a.trace_events, a.repeats)
            ms = [x * 1000 for x in t["lookup"]]
            ev = [x * 1000 for x in t["events_only"]]
            print(f"trace store: {t['events']} events generated in {t['gen_s']:.1f} s")
            print(f"trace-msg lookup (events + verdicts): median {statistics.median(ms):.1f} ms "
                  f"(p10 {sorted(ms)[len(ms) // 10]:.1f}, p90 {sorted(ms)[len(ms) * 9 // 10]:.1f}, n={len(ms)})")
            print(f"  of which the events query: median {statistics.median(ev):.1f} ms")
            print(f"trace-msg whole command: {stats(t['whole'])}")
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
