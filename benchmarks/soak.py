"""The soak: 1M business messages over 10+ minutes with repeated collector and consumer kills.

    python benchmarks/soak.py [--messages 1000000] [--rate 1667] [--collector-kill-every 55]
                              [--consumer-kill-every 75] [--out benchmarks/results/soak.md]

Not part of the test suite (it takes 10+ minutes). Real processes throughout: a business Tansu
and an audit Tansu, a ClickHouse 18.16 server of its own, an order service (traced kafka-python
producer, paced to ``--rate``), a red-packet consumer (traced, commits after its business work)
and a collector (``run_collector``). While the orders flow, the collector and the consumer are
SIGKILLed again and again -- the whole process group, as a container kill takes the emitter's
shipper process with it -- and restarted at once with the same spool directory (the new instance
adopts the dead one's spool).

Injected faults with a known answer: 10 expected order ids are never sent (``never_sent``), the
handler of 20 orders fails and the error is swallowed before the commit (``failed_and_committed``).
Every other order must come out ``delivered`` (kills only cause redeliveries: flags, not losses).

The end state checked: zero audit loss (every emitter's seq numbers stored 1..max, each once by
event id; no ``emitter_seq_gap``), the group's offsets at the log end, and the reconcile summary
equal to the injected faults exactly. Figures go to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GROUP = "red-packet"
PARTITIONS = 4


def fault_ids(n: int) -> tuple[set[int], set[int]]:
    """(never sent, failing in the handler): fixed by the seed, disjoint."""
    rnd = random.Random(20261204)
    picked = rnd.sample(range(n), 30)
    return set(picked[:10]), set(picked[10:])


def msg_id(i: int) -> str:
    return f"soak-order-{i}:paid"


# --- child roles --------------------------------------------------------------------------------

def role_producer(a: argparse.Namespace) -> None:
    from kafka import KafkaProducer

    from tracer import Tracer

    never, _ = fault_ids(a.messages)
    t = Tracer(service="order-service", bootstrap=a.audit, audit_topic=a.audit_topic,
               spool_dir=os.path.join(a.workdir, "spool-orders"))
    p = t.wrap_producer(KafkaProducer(bootstrap_servers=a.business, acks="all", linger_ms=5,
                                      batch_size=256 << 10))
    lat: list[float] = []
    failed = [0]
    started = time.monotonic()
    progress = Path(a.workdir, "producer.progress")
    last_write = 0.0
    sent = 0
    for i in range(a.messages):
        if i in never:
            continue
        t0 = time.perf_counter()
        fut = p.send(a.topic, str(i).encode(), msg_id=msg_id(i))
        lat.append(time.perf_counter() - t0)
        fut.add_errback(lambda e: failed.__setitem__(0, failed[0] + 1))
        sent += 1
        if sent % 200 == 0:
            due = started + sent / a.rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)  # pacing the load
            if now - last_write > 1.0:
                progress.write_text(json.dumps({"sent": sent}))
                last_write = now
    p.flush(120)
    p.close(30)
    closed = t.close(300)
    lat.sort()
    out = {"sent": sent, "failed": failed[0], "seconds": time.monotonic() - started, "closed": closed,
           "send_ms": {"p50": lat[len(lat) // 2] * 1e3, "p99": lat[int(len(lat) * 0.99)] * 1e3,
                       "p999": lat[int(len(lat) * 0.999)] * 1e3, "max": lat[-1] * 1e3},
           "stats": {k: v for k, v in t.stats.items() if isinstance(v, (int, float, str)) or v is None}}
    progress.write_text(json.dumps({"sent": sent, "done": True}))
    Path(a.workdir, "producer.json").write_text(json.dumps(out))


def role_consumer(a: argparse.Namespace) -> None:
    from kafka import KafkaConsumer

    from tracer import Tracer

    _, failing = fault_ids(a.messages)
    work_s = a.work_us / 1e6
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    t = Tracer(service="red-packet", bootstrap=a.audit, audit_topic=a.audit_topic,
               spool_dir=os.path.join(a.workdir, "spool-red"), adopt_interval=1.0)
    c = t.wrap_consumer(KafkaConsumer(a.topic, bootstrap_servers=a.business, group_id=GROUP,
                                      enable_auto_commit=False, auto_offset_reset="earliest",
                                      session_timeout_ms=1500, heartbeat_interval_ms=300, max_poll_records=1000))
    n = 0
    while not stop.is_set():
        recs = c.poll(timeout_ms=200)
        for batch in recs.values():
            for r in batch:
                try:
                    with t.processing(r):
                        if int(r.value) in failing:
                            raise RuntimeError("payment gateway timeout")
                        if work_s:
                            time.sleep(work_s)  # the business work (paying the red packet) takes a while
                except RuntimeError:
                    pass  # the seeds' mistake: swallowed, and the commit below goes past it
                n += 1
        if recs:
            c.commit()
    c.close(autocommit=False)
    closed = t.close(300)
    Path(a.workdir, f"consumer-{os.getpid()}.json").write_text(json.dumps(
        {"processed": n, "closed": closed, "stats": {k: v for k, v in t.stats.items()
                                                     if isinstance(v, (int, float, str)) or v is None}}))


def role_collector(a: argparse.Namespace) -> None:
    from collectors import CollectorConfig, run_collector
    from collectors.cli import setup_logging

    setup_logging("warning", False)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    cfg = CollectorConfig(max_batch_events=50_000, max_batch_wait_s=1.0, session_timeout_ms=1500,
                          heartbeat_interval_ms=300, backoff_initial_s=0.2, backoff_max_s=2.0)
    stats = run_collector(a.audit, a.audit_topic, a.store, "msgtrace-collector", config=cfg, stop=stop)
    Path(a.workdir, f"collector-{os.getpid()}.json").write_text(json.dumps(stats.to_dict()))


# --- the driver -----------------------------------------------------------------------------------

class Child:
    """One role's current process; ``kill()`` SIGKILLs its process group, ``restart()`` starts it again."""

    def __init__(self, role: str, a: argparse.Namespace, env: dict[str, str]) -> None:
        self.role, self.a, self.env = role, a, env
        self.proc: subprocess.Popen | None = None
        self.kills = 0
        self.starts = 0

    def start(self) -> None:
        a = self.a
        argv = [sys.executable, __file__, "--role", self.role, "--workdir", a.workdir, "--business", a.business,
                "--audit", a.audit, "--audit-topic", a.audit_topic, "--topic", a.topic, "--store", a.store,
                "--messages", str(a.messages), "--rate", str(a.rate), "--work-us", str(a.work_us)]
        log = open(Path(a.workdir, f"{self.role}-{self.starts}.log"), "wb")  # noqa: SIM115 (the child's)
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env, start_new_session=True)
        log.close()
        self.starts += 1

    def kill(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(30)
            self.kills += 1

    def terminate(self, timeout: float = 300) -> int:
        p = self.proc
        if p is None:
            return 0
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(30)
        try:  # the emitter's shipper process, if it outlived its owner
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        return p.returncode


def offsets(bootstrap: str, group: str, topic: str, parts: int) -> tuple[int, int]:
    """(committed by ``group``, log end) summed over the partitions."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in range(parts)]
        ends = c.end_offsets(tps)
        return sum(c.committed(tp) or 0 for tp in tps), sum(ends.values())
    finally:
        c.close()


def true_end(bootstrap: str, topic: str, parts: int) -> int:
    """Records in ``topic``, read to the real end of each partition: Tansu's reported log end can be the
    last batch's base offset + 1, short of the records after it."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=1500)
    try:
        total = 0
        for p in range(parts):
            tp = TopicPartition(topic, p)
            end = c.end_offsets([tp])[tp]
            c.assign([tp])
            c.seek(tp, max(0, end - 1))
            last = end - 1
            for r in c:
                last = max(last, r.offset)
            total += last + 1
        return total
    finally:
        c.close()


def watch_parent() -> None:
    """A child exits when the driver is gone (no orphans left running after a killed soak)."""
    parent = os.getppid()

    def run() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(3)

    threading.Thread(target=run, daemon=True, name="watch-parent").start()


def audit_integrity(store: Any) -> dict[str, Any]:
    rows = store.query("SELECT emitter_id, any(service) AS service, uniqExact(seq) AS n, min(seq) AS lo, "
                       "max(seq) AS hi, uniqExact(event_id) AS ev, count() AS rows "
                       "FROM {db:Identifier}.trace_events GROUP BY emitter_id ORDER BY service, emitter_id")
    emitters = [{k: (int(v) if k in ("n", "lo", "hi", "ev", "rows") else v) for k, v in r.items()} for r in rows]
    gaps = [e for e in emitters if e["lo"] != 1 or e["n"] != e["hi"] or e["ev"] != e["n"]]
    return {"emitters": emitters, "gaps": gaps, "events": sum(e["ev"] for e in emitters),
            "rows": sum(e["rows"] for e in emitters)}


def drive(a: argparse.Namespace) -> int:
    from collectors.testing import create_topic
    from tracer import verdicts as V
    from tracer.analysis.expected import ExpectedSource
    from tracer.analysis.reconcile import reconcile
    from tracer.localsvc import ClickHouseServer, TansuBroker, wait_until
    from tracer.store import Store

    work = Path(a.workdir or tempfile.mkdtemp(prefix="msgtrace-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    a.workdir = str(work)
    business, audit = TansuBroker().start(), TansuBroker().start()
    server = ClickHouseServer().start()
    tag = uuid.uuid4().hex[:8]
    a.business, a.audit = business.bootstrap, audit.bootstrap
    a.topic, a.audit_topic = f"orders-{tag}", f"msgtrace.audit-{tag}"
    a.store = server.url("soak")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    never, failing = fault_ids(a.messages)
    children: list[Child] = []
    samples: list[dict[str, Any]] = []
    try:
        create_topic(a.business, a.topic, PARTITIONS)
        create_topic(a.audit, a.audit_topic, 3)
        store = Store(a.store)
        store.init_schema()
        collector, consumer, producer = (Child(r, a, env) for r in ("collector", "consumer", "producer"))
        children = [collector, consumer, producer]
        t0_us = time.time_ns() // 1000
        began = time.monotonic()
        collector.start()
        consumer.start()
        producer.start()
        next_kill = {"collector": began + a.collector_kill_every, "consumer": began + a.consumer_kill_every * 0.6}
        every = {"collector": a.collector_kill_every, "consumer": a.consumer_kill_every}
        by_role = {"collector": collector, "consumer": consumer}
        last_sample = 0.0
        while producer.proc is not None and producer.proc.poll() is None:
            now = time.monotonic()
            for role, due in next_kill.items():
                if now >= due:
                    c = by_role[role]
                    c.kill()
                    c.start()  # at once: the new instance adopts the dead one's spool
                    next_kill[role] = now + every[role] * random.uniform(0.7, 1.3)
                    print(f"[{now - began:6.0f} s] killed and restarted the {role} (kill {c.kills})", flush=True)
            if now - last_sample >= 10:
                last_sample = now
                try:
                    prog = json.loads(Path(a.workdir, "producer.progress").read_text())
                except (OSError, ValueError):
                    prog = {"sent": 0}
                try:
                    committed, end = offsets(a.business, GROUP, a.topic, PARTITIONS)
                    stored = int(store.query("SELECT count() AS n FROM {db:Identifier}.trace_events")[0]["n"])
                except Exception as e:  # noqa: BLE001 (a sample is best effort)
                    committed = end = stored = -1
                    print(f"sample failed: {e}", flush=True)
                s = {"t": round(now - began), "sent": prog["sent"], "consumer_lag": end - committed, "rows": stored}
                samples.append(s)
                print(f"[{s['t']:6d} s] sent {s['sent']:,}  consumer lag {s['consumer_lag']:,}  "
                      f"audit rows stored {s['rows']:,}", flush=True)
            time.sleep(0.5)
        send_done = time.monotonic()
        assert producer.proc.returncode == 0, f"producer exited {producer.proc.returncode}"
        prod = json.loads(Path(a.workdir, "producer.json").read_text())
        print(f"producer done: {prod['sent']:,} sent in {prod['seconds']:.0f} s", flush=True)
        wait_until(lambda: offsets(a.business, GROUP, a.topic, PARTITIONS)[0] >= prod["sent"],
                   1800, "the consumer to commit every order", interval=2)
        consumer_caught_up = time.monotonic()

        def spools(name: str) -> int:
            return sum(1 for d in Path(a.workdir, name).glob("*-*-*-*-*") if d.is_dir())

        # the last consumer adopts and drains its dead predecessors' spools; then it stops
        wait_until(lambda: spools("spool-red") <= 1, 600, "the dead consumers' spools to be adopted", interval=2)
        assert consumer.terminate() == 0, "the consumer did not stop cleanly"
        wait_until(lambda: spools("spool-red") + spools("spool-orders") == 0, 600,
                   "every spool directory to be shipped and removed", interval=2)
        audit_records = true_end(a.audit, a.audit_topic, 3)  # every spool is shipped: the topic is complete
        wait_until(lambda: offsets(a.audit, "msgtrace-collector", a.audit_topic, 3)[0] >= audit_records,
                   1800, "the collector to commit the whole audit topic", interval=2)
        collector_caught_up = time.monotonic()
        assert collector.terminate() == 0, "the collector did not stop cleanly"
        integ = audit_integrity(store)
        expected = Path(a.workdir, "expected.txt")
        expected.write_text("".join(msg_id(i) + "\n" for i in range(a.messages)))
        r0 = time.monotonic()
        now_us = time.time_ns() // 1000
        res = reconcile(store, t0_us, now_us + 1_000_000, grace_s=0, now_us=now_us + 2_000_000, groups=[GROUP],
                        expected=ExpectedSource(path=str(expected)), bootstrap=a.business, write=True)
        reconcile_s = time.monotonic() - r0
        want = {V.DELIVERED: a.messages - len(never) - len(failing), V.NEVER_SENT: len(never),
                V.FAILED_AND_COMMITTED: len(failing)}
        by_verdict: dict[str, set[str]] = {}
        flags: dict[str, int] = {}
        for v in res.rows:
            by_verdict.setdefault(v.verdict, set()).add(v.msg_id)
            for f in v.flags:
                flags[f] = flags.get(f, 0) + 1
        # the kills' own consequences: every message received (processed) more than once carries the flag
        twice = store.query(
            "SELECT countIf(r > 1) AS recv, countIf(d > 1) AS done FROM (SELECT msg_id, "
            "uniqExactIf(event_id, stage = 'received') AS r, uniqExactIf(event_id, stage = 'business_done') AS d "
            "FROM {db:Identifier}.trace_events WHERE consumer_group = {g:String} GROUP BY msg_id)", {"g": GROUP})[0]
        flags_want = {k: int(n) for k, n in ((V.REDELIVERED, twice["recv"]), (V.DUPLICATE_PROCESSING, twice["done"]))
                      if int(n)}
        exact = (res.summary == want and flags == flags_want and by_verdict.get(V.NEVER_SENT, set()) == {msg_id(i) for i in never}
                 and by_verdict.get(V.FAILED_AND_COMMITTED, set()) == {msg_id(i) for i in failing})
        ok = exact and not integ["gaps"] and not res.seq_gaps and prod["failed"] == 0
        report = {
            "messages": a.messages, "rate": a.rate, "work_us": a.work_us, "sent": prod["sent"], "send_seconds": round(send_done - began),
            "consumer_drain_s": round(consumer_caught_up - send_done), "collector_drain_s":
                round(collector_caught_up - consumer_caught_up), "collector_kills": collector.kills,
            "consumer_kills": consumer.kills, "send_ms": prod["send_ms"], "producer_stats": prod["stats"],
            "audit": {k: integ[k] for k in ("events", "rows")}, "emitters": len(integ["emitters"]),
            "emitter_gaps": integ["gaps"], "seq_gaps": [g.__dict__ if hasattr(g, "__dict__") else str(g)
                                                        for g in res.seq_gaps],
            "summary": res.summary, "want": want, "flags": flags, "flags_want": flags_want, "exact": exact, "reconcile_s": round(reconcile_s, 1),
            "max_consumer_lag": max((s["consumer_lag"] for s in samples), default=0), "ok": ok,
        }
        print(json.dumps(report, indent=1, default=str), flush=True)
        if a.out:
            write_md(Path(a.out), report, samples, integ)
        store.close()
        return 0 if ok else 1
    finally:
        for c in children:
            try:
                c.terminate(30)
            except Exception as e:  # noqa: BLE001 (clean-up goes on)
                print(f"stopping the {c.role}: {e}", flush=True)
        server.stop()
        business.stop()
        audit.stop()


def write_md(path: Path, r: dict[str, Any], samples: list[dict[str, Any]], integ: dict[str, Any]) -> None:
    lags = [s["consumer_lag"] for s in samples if s["consumer_lag"] >= 0]
    by_service: dict[str, list[dict[str, Any]]] = {}
    for e in integ["emitters"]:
        by_service.setdefault(e["service"], []).append(e)
    lines = [
        f"# Soak: {r['messages']:,} business messages, collector and consumer killed again and again",
        "",
        (f"`python benchmarks/soak.py --messages {r['messages']} --rate {r['rate']} --work-us {r['work_us']}` on the 2-core machine, shared "
        "with other helpers' test runs. Real processes: business and audit Tansu, ClickHouse 18.16 (its own "
        "server), a traced order service, a traced red-packet consumer committing after its work, one collector. "
        "Kills are SIGKILL of the whole process group (the emitter's shipper process dies with its owner), "
        "restarted at once with the same spool directory."),
        "",
        "| figure | value |",
        "|---|---|",
        f"| business messages sent | {r['sent']:,} (+{r['messages'] - r['sent']} expected ids never sent) |",
        f"| sending took | {r['send_seconds']} s ({r['sent'] / max(1, r['send_seconds']):,.0f} msg/s) |",
        f"| collector kills / consumer kills | {r['collector_kills']} / {r['consumer_kills']} |",
        (f"| consumer lag (records), median / max of 10 s samples | "
        f"{statistics.median(lags) if lags else 0:,.0f} / {max(lags) if lags else 0:,} |"),
        f"| consumer drained after the last send | {r['consumer_drain_s']} s |",
        f"| collector drained after the consumer | {r['collector_drain_s']} s |",
        (f"| business send() call, ms: p50 / p99 / p99.9 / max | {r['send_ms']['p50']:.3f} / "
        f"{r['send_ms']['p99']:.3f} / {r['send_ms']['p999']:.2f} / {r['send_ms']['max']:.1f} |"),
        f"| audit events stored (distinct) / rows | {r['audit']['events']:,} / {r['audit']['rows']:,} |",
        f"| emitters (one per process instance) | {r['emitters']} ({', '.join(f'{s}: {len(v)}' for s, v in by_service.items())}) |",
        f"| emitters with a seq gap or a duplicate | {len(r['emitter_gaps'])} |",
        f"| reconcile seq gaps | {len(r['seq_gaps'])} |",
        f"| reconcile ({r['messages']:,} expected ids, live offsets) | {r['reconcile_s']} s |",
        f"| verdicts | {json.dumps(r['summary'])} |",
        f"| injected | {json.dumps(r['want'])} |",
        f"| flags | {json.dumps(r['flags'])} |",
        (f"| messages received / processed more than once (from the stored events) | "
        f"{r['flags_want'].get('redelivered', 0):,} / {r['flags_want'].get('duplicate_processing', 0):,} |"),
        f"| verdicts and flags exactly the injected faults (ids too) | {'yes' if r['exact'] else '**no**'} |",
        "",
        f"Result: **{'pass' if r['ok'] else 'FAIL'}**.",
        "",
    ]
    if r["emitter_gaps"]:
        lines += ["Emitters with gaps:", "", "```", json.dumps(r["emitter_gaps"], indent=1), "```", ""]
    path.write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", choices=["producer", "consumer", "collector"], default=None)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=1667.0, help="business messages per second")
    ap.add_argument("--collector-kill-every", type=float, default=55.0, help="seconds (randomised +-30%%)")
    ap.add_argument("--consumer-kill-every", type=float, default=75.0, help="seconds (randomised +-30%%)")
    ap.add_argument("--work-us", type=int, default=200,
                    help="the consumer's business work per message, microseconds (so kills land mid-batch)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None, help="write the figures here (markdown)")
    for name in ("business", "audit", "audit-topic", "topic", "store"):
        ap.add_argument(f"--{name}", default=None)
    a = ap.parse_args()
    if a.role:
        watch_parent()
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up of drive()
    if a.role == "producer":
        role_producer(a)
        return 0
    if a.role == "consumer":
        role_consumer(a)
        return 0
    if a.role == "collector":
        role_collector(a)
        return 0
    return drive(a)


if __name__ == "__main__":
    sys.exit(main())
