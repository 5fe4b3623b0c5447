"""A real ClickHouse cluster: two Debian clickhouse-server 18.16 shards, replicated tables in a real
ZooKeeper (Debian's zookeeper), two `msgtrace collect` processes in one consumer group on a Tansu
audit topic, and a shard killed and restarted while they collect.

The contract checked is the CLI's: `msgtrace reconcile --json`, `msgtrace incident --json` and
`trace-msg --json` print the same on the cluster as on one chDB store holding the same events.

Run alone: ``CI=true .venv/bin/python -m pytest tests/test_cluster.py -q`` (about a minute).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import unavailable

from collectors.testing import create_topic, produce_events
from tests.test_reconcile import T0, scenario_events
from tracer.events import Event
from tracer.localsvc import ClickHouseCluster, ServiceError, ZooKeeperServer, wait_until
from tracer.store import Store
from tracer.store.cluster import ShardLocal, declared, global_in

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.clickhouse]

ROOT = Path(__file__).resolve().parent.parent
WINDOW = ["--from", "2026-11-21T00:00:00Z", "--to", "2026-11-21T01:00:00Z"]
PARTITIONS = 4


@pytest.fixture(scope="module")
def zookeeper() -> Iterator[ZooKeeperServer]:
    try:
        zk = ZooKeeperServer().start()
    except (ServiceError, TimeoutError, OSError) as e:
        unavailable("ZooKeeper", e)
    try:
        yield zk
    finally:
        zk.stop()
        shutil.rmtree(zk.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(zookeeper) -> Iterator[ClickHouseCluster]:
    logging.getLogger("clickhouse_driver.connection").setLevel(logging.CRITICAL)
    try:
        c = ClickHouseCluster(zookeeper, name="msgtrace_it", shards=2, replicas=1).start()
    except (ServiceError, TimeoutError, OSError) as e:
        unavailable("clickhouse-server cluster", e)
    try:
        yield c
    finally:
        c.stop(timeout=2)  # throwaway data: no need to wait for a clean shutdown
        shutil.rmtree(c.workdir, ignore_errors=True)


def bulk_events(n: int) -> list[Event]:
    """``n`` messages on two topics (one with two groups), numbered emitters, a few losses: every
    100th message is never received (lost in the broker: later ones were), every 97th loses its
    business outcome in the first group (committed: lost in the consumer)."""
    out: list[Event] = []
    seq: dict[str, int] = {}

    def add(msg: str, stage: str, t_us: int, emitter: str, **kw) -> None:
        seq[emitter] = seq.get(emitter, 0) + 1
        out.append(Event(msg_id=msg, stage=stage, ts_us=t_us, service=emitter.split("-")[0], host=f"host-{emitter}",
                         pid=100, emitter_id=emitter, seq=seq[emitter], **kw))

    offsets: dict[tuple[str, int], int] = {}
    for i in range(n):
        topic, groups = ("bulk.a", ["ga1", "ga2"]) if i % 3 else ("bulk.b", ["gb1"])
        msg, t = f"bulk-{i}:paid", T0 + 1_000_000 + i * (3_000_000_000 // n)
        p = i % PARTITIONS
        o = offsets[(topic, p)] = offsets.get((topic, p), -1) + 1
        prod = f"producer-{i % 3}"
        add(msg, "sent", t, prod, topic=topic)
        add(msg, "broker_acked", t + 800, prod, topic=topic, partition=p, offset=o)
        if i % 100 == 7:
            continue
        for k, g in enumerate(groups):
            c = f"{g}-{p % 2}"
            base = t + 5_000 + 1_000 * k
            add(msg, "received", base, c, topic=topic, partition=p, offset=o, consumer_group=g)
            if not (i % 97 == 5 and k == 0):
                add(msg, "business_done", base + 300, c, topic=topic, partition=p, offset=o, consumer_group=g)
            add(msg, "offset_committed", base + 400, c, topic=topic, partition=p, offset=o + 1, consumer_group=g)
    return out


def secret_free(args: list[str] | tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """A command line with the password of its ``--store`` URL moved into the child's environment
    (MSGTRACE_STORE_PASSWORD), so that no password shows in ``ps``."""
    from urllib.parse import quote, unquote, urlsplit

    out, env = list(args), {}
    for i in range(1, len(out)):
        if out[i - 1] == "--store" and out[i].startswith("clickhouse://"):
            u = urlsplit(out[i])
            if u.password is not None:
                env["MSGTRACE_STORE_PASSWORD"] = unquote(u.password)
                user = quote(unquote(u.username or "default"), safe="")
                out[i] = u._replace(netloc=f"{user}@{u.hostname}:{u.port or 9000}").geturl()
    return out, env


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    argv, secret = secret_free(args)
    env = dict(os.environ, MSGTRACE_STORE_LOCK_TIMEOUT="60", **secret)
    return subprocess.run([sys.executable, "-m", "tracer", *argv], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout)


def cli_json(*args: str) -> dict:
    """A command's JSON without what differs between two runs on any store: the run id, and the
    time of the run where evidence says "... by <now>"."""
    r = cli(*args, "--json")
    assert r.returncode in (0, 1), f"{args}: exit {r.returncode}: {r.stderr[-2000:]}"
    today = time.strftime("%Y-%m-%d", time.gmtime())
    doc = json.loads(re.sub(today + r"T[0-9:.]+Z", "<now>", r.stdout))
    doc.pop("run_id", None)
    return doc


def distinct_events(store: Store) -> int:
    return int(store.query("SELECT uniqExact(event_id) AS n FROM {db:Identifier}.trace_events")[0]["n"])


def assigned(log: Path) -> bool:
    """The collector's log shows a non-empty partition assignment."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return False
    return any("partitions assigned" in ln and "partitions=[]" not in ln and "partitions=" in ln for ln in lines)


def store_down(log: Path) -> bool:
    """The collector's log shows a failed write (the store or a shard of it unavailable)."""
    try:
        return "store unavailable" in log.read_text(errors="replace")
    except OSError:
        return False


def test_cluster_collect_restart_and_same_answers_as_chdb(cluster, kafka_bootstrap, tmp_path):
    tag = uuid.uuid4().hex[:8]
    topic, group, database = f"audit-{tag}", f"collectors-{tag}", f"m_{tag}"
    url1, url2 = cluster.url(0, database), cluster.url(1, database)

    r = cli("db", "init", "--cluster", cluster.name, "--store", url1)
    assert r.returncode == 0, r.stderr
    assert f"on cluster {cluster.name}" in r.stdout and cluster.password not in r.stdout + r.stderr

    events = scenario_events().events + bulk_events(3000)
    distinct = len({e.event_id for e in events})
    a, b = len(events) // 2, 3 * len(events) // 4
    create_topic(kafka_bootstrap, topic, PARTITIONS)
    produce_events(kafka_bootstrap, topic, events[:a], per_record=200, partitions=PARTITIONS)

    store1 = Store(url1)
    procs: list[subprocess.Popen] = []
    logs = [tmp_path / "collector-1.log", tmp_path / "collector-2.log"]
    try:
        def start(url: str, log: Path) -> None:
            cmd, secret = secret_free([sys.executable, "-m", "tracer", "collect", "--bootstrap", kafka_bootstrap,
                                       "--audit-topic", topic, "--store", url, "--group", group,
                                       "--batch-events", "2000", "--batch-wait", "0.2", "--json"])
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(log, "wb"), cwd=ROOT,
                                          env={**os.environ, **secret}))

        # one membership change at a time (Tansu): the second collector joins a settled group
        start(url1, logs[0])
        wait_until(lambda: assigned(logs[0]), 60, "the first collector's partitions")
        wait_until(lambda: distinct_events(store1) > 0, 60, "the first events on the cluster")
        start(url2, logs[1])
        wait_until(lambda: assigned(logs[1]), 60, "the second collector's partitions")
        for p in procs:  # what `ps` shows of the collectors
            assert cluster.password not in Path(f"/proc/{p.pid}/cmdline").read_bytes().decode(errors="replace")
        wait_until(lambda: distinct_events(store1) >= len({e.event_id for e in events[:a]}), 90,
                   "the first half on the cluster")

        # shard 2 is SIGKILLed while the rest arrives, then comes back on the same data dir
        local2 = Store(cluster.url(1, database))
        before_kill = int(local2.query("SELECT count() AS n FROM {db:Identifier}.trace_events_local")[0]["n"])
        local2.close()
        assert before_kill > 0
        produce_events(kafka_bootstrap, topic, events[a:b], per_record=200, partitions=PARTITIONS)
        cluster.nodes[1].kill()
        produce_events(kafka_bootstrap, topic, events[b:], per_record=200, partitions=PARTITIONS)
        # the collectors run into the dead shard (the one on it directly, the other through the
        # Distributed table) and keep their offsets; then it comes back
        wait_until(lambda: any(store_down(log) for log in logs), 60, "a collector to find shard 2 down")
        # a reconcile with a shard down does not judge half the events: exit 2, one line, no password
        down = cli("reconcile", *WINDOW, "--json", "--no-write", "--store", url1)
        assert down.returncode == 2 and down.stderr.count("\n") == 1, down.stderr
        assert cluster.password not in down.stdout + down.stderr
        cluster.restart(1)
        wait_until(lambda: distinct_events(store1) == distinct, 120, f"all {distinct} events on the cluster",
                   interval=0.5)
        for p in procs:
            assert p.poll() is None, "a collector exited while collecting"
            p.send_signal(signal.SIGTERM)
        stats = []
        for p, log in zip(procs, logs):
            out, _ = p.communicate(timeout=60)
            assert p.returncode == 0, log.read_text()[-3000:]
            stats.append(json.loads(out))
        assert all(s["stored"] > 0 for s in stats), stats  # both members of the group wrote
        assert sum(s["store_failures"] for s in stats) > 0, stats
        assert cluster.password not in "".join(log.read_text(errors="replace") for log in logs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)

    # every message's events on one shard; both shards used; nothing acknowledged before the kill lost
    per_node = []
    for i in range(2):
        with Store(cluster.url(i, database)) as s:
            per_node.append({r["msg_id"] for r in s.query(
                "SELECT DISTINCT msg_id FROM {db:Identifier}.trace_events_local")})
            if i == 1:
                after = int(s.query("SELECT count() AS n FROM {db:Identifier}.trace_events_local")[0]["n"])
                assert after >= before_kill
    assert per_node[0] and per_node[1] and not per_node[0] & per_node[1]
    assert per_node[0] | per_node[1] == {e.msg_id for e in events}
    info = store1.cluster_info()
    assert info is not None and info.name == cluster.name and len(info.shards) == 2
    store1.close()

    # the same events in one chDB store
    chdb_url = f"chdb://{tmp_path / 'chdb'}"
    with Store(chdb_url) as c:
        c.init_schema()
        c.insert_events(events)

    # fan-out (pass 1 per pair) and one group (pass 1 by message): both run per shard
    for args in (["reconcile", *WINDOW, "--all"], ["reconcile", *WINDOW, "--all", "--group", "g1"],
                 ["incident", *WINDOW]):
        single, dist = cli_json(*args, "--store", chdb_url), cli_json(*args, "--store", url1)
        assert dist == single, args[0]
        assert single.get("lost")  # the comparison is about something
    picks = ["split", "brk-lost", "reuse-lost", "failcommit", "dlq", "gap-norecv", "seqgap", "inflight", "acklost",
             "twice", "bulk-7:paid", "bulk-5:paid", "bulk-10:paid"]
    for msg in picks:
        single = cli_json("trace-msg", msg, "--store", chdb_url)
        dist = cli_json("trace-msg", msg, "--store", url2)  # through the other node
        assert dist == single, msg
        assert single["events"]


# The shape of the reconcile's pass 1 (queries/reconcile_scan_msg.sql): a projection of the events,
# a GROUP BY msg_id over it, and counts per outcome and topic over the messages. Written out here so
# that this test of the store's mechanism does not depend on the analysis queries of the day.
PASS1 = """
SELECT outcome, topic, count() AS n, any(msg_id) AS sample
FROM
(
    SELECT msg_id, any(topic) AS topic, groupBitOr(bit) AS mask,
           multiIf(bitAnd(mask, 32) != 0, 'done', bitAnd(mask, 8) != 0, 'received, no outcome',
                   'never received') AS outcome
    FROM
    (
        SELECT msg_id, topic, toUInt8(transform(stage, ['sent', 'send_failed', 'broker_acked', 'received',
               'offset_committed', 'business_done'], [1, 2, 4, 8, 16, 32], 0)) AS bit
        FROM {db:Identifier}.trace_events
        WHERE ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64}
    )
    GROUP BY msg_id
)
GROUP BY outcome, topic
"""


def test_shard_local_declarations_on_the_cluster(cluster):
    """Both shard-local modes give the Distributed answers."""
    database = f"m_{uuid.uuid4().hex[:8]}"
    s = Store(cluster.url(0, database))
    s.init_schema(cluster=cluster.name)
    events = scenario_events().events + bulk_events(2000)
    s.insert_events(events)
    params = {"scan_from": T0 - 86_400_000_000, "cut": T0 + 4_000_000_000}

    def added(rs: list[dict]) -> dict:
        acc: dict = {}
        for r in rs:
            acc[(r["outcome"], r["topic"])] = acc.get((r["outcome"], r["topic"]), 0) + r["n"]
        return acc

    # per shard: the whole statement on each shard's own rows; its counts add up to the Distributed ones
    whole = s.query(PASS1, params)
    per_shard = s.query(PASS1, params, shard_local=ShardLocal.PER_SHARD)
    assert len(per_shard) > len(whole)  # keys repeated per shard: it did run on each shard
    assert added(per_shard) == added(whole) and sum(r["n"] for r in whole) == len({e.msg_id for e in events})
    declared_sql = "-- msgtrace: shard-local per-shard\n" + PASS1
    assert added(s.query(declared_sql, params)) == added(whole)

    # group-by: the SELECT reading the events groups by msg_id; no merge across shards, same rows
    def rows(sql: str, mode: ShardLocal | None) -> list[tuple]:
        return sorted(map(tuple, (r.values() for r in s.query(sql, params, shard_local=mode))), key=repr)

    per_msg = ("SELECT msg_id, groupBitOr(toUInt8(stage = 'business_done')) AS done, count() AS n "
               "FROM {db:Identifier}.trace_events WHERE ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64} "
               "GROUP BY msg_id")
    assert rows(per_msg, ShardLocal.GROUP_BY) == rows(per_msg, None) and len(rows(per_msg, None)) > 2000
    assert declared("-- msgtrace: shard-local group-by\n" + per_msg) is ShardLocal.GROUP_BY

    # a staging table lives on one node: IN (SELECT ... FROM it) works through GLOBAL IN, and a per-shard
    # statement reading it falls back to the Distributed tables
    s.command("CREATE TABLE {db:Identifier}.expected_x (msg_id String) ENGINE = MergeTree() ORDER BY msg_id")
    s.insert("expected_x", {"msg_id": [f"bulk-{i}:paid" for i in range(0, 2000, 7)]})
    staged = "SELECT count() AS n FROM {db:Identifier}.trace_events WHERE msg_id IN " \
             "(SELECT msg_id FROM {db:Identifier}.expected_x)"
    assert "GLOBAL IN" in global_in(staged)
    want = sum(1 for e in events if e.msg_id.startswith("bulk-") and int(e.msg_id[5:-5]) % 7 == 0)
    assert s.query(staged)[0]["n"] == want
    assert s.query(staged, shard_local=ShardLocal.PER_SHARD)[0]["n"] == want
    s.command("DROP DATABASE {db:Identifier} ON CLUSTER " + cluster.name)
    s.close()


def test_retention_on_the_cluster_drops_on_every_shard(cluster):
    import time

    database = f"m_{uuid.uuid4().hex[:8]}"
    url = cluster.url(1, database)
    s = Store(url)
    s.init_schema(cluster=cluster.name)
    now, day = int(time.time() * 1e6), 86_400_000_000
    s.insert_events([Event(msg_id=f"r{d}-{i}", stage="sent", ts_us=now - d * day, service="s", emitter_id="e",
                           seq=d * 100 + i + 1) for d in range(5) for i in range(40)])
    per_shard = [int(Store(cluster.url(i, database)).query(
        "SELECT count() AS n FROM {db:Identifier}.trace_events_local WHERE msg_id LIKE 'r4-%'")[0]["n"])
        for i in range(2)]
    assert all(per_shard) and sum(per_shard) == 40  # the oldest day's rows are on both shards
    dry = cli_json("retention", "--keep-days", "2", "--dry-run", "--store", url)
    assert dry["cluster"] == cluster.name and dry["rows"] == 80 and dry["dropped"] == 0
    done = cli_json("retention", "--keep-days", "2", "--store", url)
    assert done["dropped"] == 2
    left = s.query("SELECT count() AS n, countIf(msg_id LIKE 'r3-%' OR msg_id LIKE 'r4-%') AS old "
                   "FROM {db:Identifier}.trace_events")[0]
    assert (left["n"], left["old"]) == (120, 0)
    s.command("DROP DATABASE {db:Identifier} ON CLUSTER " + cluster.name)
    s.close()
