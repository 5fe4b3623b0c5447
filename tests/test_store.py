"""The store on both ClickHouse engines: the same SQL, the same results."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tracer.errors import ConfigError, QueryError, StoreLocked, StoreUnavailable
from tracer.events import Event, decode_batch, encode_batch, record_headers
from tracer.localsvc import ClickHouseServer, free_port, wait_until
from tracer.store import Store, parse_store_url, split_statements

NASTY = ["o'reilly", "back\\slash", "new\nline", "tab\there", "订单-42:已支付", "🧧", "'; DROP TABLE x; --",
         "{msg_id:String}", "%(x)s", "x" * 10_000]


def events(n: int, **kw) -> list[Event]:
    return [Event(msg_id=f"order-{i}:paid", stage="sent", service="svc", host="h", pid=1, topic="t",
                  emitter_id="e", seq=i + 1, **kw) for i in range(n)]


def test_schema_is_idempotent(store):
    store.init_schema()
    store.init_schema()
    tables = {r["name"] for r in store.query(
        "SELECT name FROM system.tables WHERE database = {db:String}", {"db": store.database})}
    assert {"trace_events", "quarantine", "reconcile_runs", "verdicts"} <= tables


def test_round_trip_wire_to_store(store):
    src = [Event(msg_id=m, stage="received", service="red-packet", host="h", pid=7, topic="order-paid",
                 partition=2, offset=99, consumer_group="red-packet", key=None, trace_id="ab" * 16,
                 span_id="cd" * 8, emitter_id="e1", seq=i + 1, attrs={"k": m[:20]} if i % 2 else {})
           for i, m in enumerate(NASTY)]
    decoded = decode_batch(encode_batch(src), record_headers())
    assert decoded.bad == []
    store.insert_events(decoded.events)
    for e in src:
        assert store.select_events(e.msg_id) == [e]


def test_100k_events_in_one_batch(store):
    src = events(100_000, attrs={"region": "eu"})
    decoded = []  # through the wire format in audit-record-sized chunks, then one insert
    for i in range(0, len(src), 2000):
        decoded += decode_batch(encode_batch(src[i:i + 2000]), record_headers()).events
    assert store.insert_events(decoded) == 100_000
    [row] = store.query("SELECT count() AS n, uniqExact(event_id) AS u, min(seq) AS lo, max(seq) AS hi "
                        "FROM {db:Identifier}.trace_events")
    assert (row["n"], row["u"], row["lo"], row["hi"]) == (100_000, 100_000, 1, 100_000)
    assert store.select_events("order-54321:paid") == [src[54321]]


def test_duplicates_do_not_change_counts(store):
    src = events(50)
    store.insert_events(src)
    store.insert_events(src[:20])  # a redelivered audit batch
    [row] = store.query("SELECT uniqExact(event_id) AS u FROM {db:Identifier}.trace_events")
    assert row["u"] == 50
    assert store.select_events("order-3:paid") == [src[3]]


@pytest.mark.parametrize("value", NASTY)
def test_parameters_are_bound_not_pasted(store, value):
    store.insert_events(events(3))
    [row] = store.query("SELECT {v:String} AS v, count() AS n FROM {db:Identifier}.trace_events "
                        "WHERE msg_id = {v:String}", {"v": value})
    assert row == {"v": value, "n": 0}
    assert store.query("SELECT count() AS n FROM {db:Identifier}.trace_events")[0]["n"] == 3


def test_array_parameters(store):
    store.insert_events(events(5))
    rows = store.query("SELECT msg_id FROM {db:Identifier}.trace_events WHERE has({ids:Array(String)}, msg_id) "
                       "ORDER BY msg_id", {"ids": ["order-1:paid", "order-3:paid", *NASTY]})
    assert [r["msg_id"] for r in rows] == ["order-1:paid", "order-3:paid"]


def test_query_error_carries_code(store):
    with pytest.raises(QueryError) as ei:
        store.query("SELECT no_such_column FROM {db:Identifier}.trace_events")
    assert ei.value.code == 47  # UNKNOWN_IDENTIFIER
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize("url, words", [
    ("", "empty store URL"),
    ("mysql://x", "unsupported store URL scheme 'mysql'"),
    ("clickhouse:///db", "has no host"),
    ("clickhouse://h:99999/db", "invalid store URL"),
    ("clickhouse://h:9000/bad-name", "invalid database name 'bad-name'"),
    ("chdb://", "has no directory"),
])
def test_bad_urls(url, words):
    with pytest.raises(ConfigError, match=words):
        parse_store_url(url)


def test_password_never_shown():
    u = parse_store_url("clickhouse://alice:hunter2@127.0.0.1:9000/msgtrace")
    assert "hunter2" not in u.redacted() and "hunter2" not in repr(Store(u.redacted()))
    s = Store(f"clickhouse://alice:hunter2@127.0.0.1:{free_port()}/msgtrace")
    with pytest.raises(StoreUnavailable) as ei:
        s.query("SELECT 1")
    assert "hunter2" not in str(ei.value) and "cannot reach ClickHouse at 127.0.0.1" in str(ei.value)


def test_stopped_server_gives_one_line_error(clickhouse_server, tmp_path):
    own = ClickHouseServer(workdir=str(tmp_path / "ch")).start()
    s = Store(own.url("msgtrace"))
    s.init_schema()
    own.stop()
    with pytest.raises(StoreUnavailable) as ei:
        s.insert_events(events(1))
    assert "\n" not in str(ei.value)
    own.start()  # same ports and data dir: the store reconnects by itself
    wait_until(lambda: s.query("SELECT 1 AS x") == [{"x": 1}], 30, "the restarted server")
    assert s.insert_events(events(2)) == 2
    own.stop()


def test_split_statements_ignores_comments():
    assert split_statements("-- c\nSELECT 1;\n\n-- only comment;\nSELECT 2") == ["SELECT 1", "SELECT 2"]


_HOLDER = textwrap.dedent("""
    import sys, time
    from tracer.store import Store
    s = Store(sys.argv[1])
    with s.session():
        print("holding", flush=True)
        sys.stdin.readline()
""")


def test_chdb_is_shared_between_processes(chdb_url):
    """A second process waits for the lock, then names the holder if it waits too long."""
    s = Store(chdb_url)
    s.init_schema()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, chdb_url], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        impatient = Store(chdb_url, lock_timeout=0.3)
        with pytest.raises(StoreLocked, match=rf"held by pid {holder.pid}"):
            impatient.query("SELECT 1")
        patient = Store(chdb_url, lock_timeout=30)
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert patient.query("SELECT 1 AS x") == [{"x": 1}]  # waited, then got in
    finally:
        holder.kill()
        holder.wait()


def test_chdb_cli_cannot_open_a_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(Exception) as ei:
        Store(f"chdb://{f}").query("SELECT 1")
    assert "\n" not in str(ei.value)


def test_unencoded_password_never_leaks_through_a_url_error():
    with pytest.raises(ConfigError) as ei:
        parse_store_url("clickhouse://bob:s3cr/et@db:9000/x")
    assert "s3cr" not in str(ei.value) and "percent-encode" in str(ei.value)
    assert "hunter2" not in repr(parse_store_url("clickhouse://alice:hunter2@h:9000/db"))


def test_forked_child_does_not_keep_the_chdb_store_locked(chdb_url):
    """flock locks live while any copy of the descriptor is open: a child forked during a session
    must drop its copy, or the store stays locked for everyone until the child exits."""
    import fcntl
    import os

    store = Store(chdb_url)
    store.init_schema()
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    with store.session():
        pid = os.fork()
        if pid == 0:  # child: say it runs (the at-fork handlers ran), wait for the check, leave uncleaned
            os.close(w)
            os.write(ready_w, b"r")
            os.read(r, 1)
            os._exit(0)
    os.close(r)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"r"  # not before: the child's copy of the lock is closed as it starts
    os.close(ready_r)
    try:
        fd = os.open(os.path.join(store.url.path, ".msgtrace.lock"), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if still held
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        assert store.query("SELECT 1 AS x")[0]["x"] == 1  # and the parent reopens it as usual
    finally:
        os.write(w, b"x")
        os.close(w)
        os.waitpid(pid, 0)
    store.close()


# --- schema variants, retention ------------------------------------------------------

def test_schema_renders_per_server_version_and_cluster():
    from tracer.store.schema import ALL_FEATURES, Feature, SchemaOptions, parse_features, render_schema, schema_tables

    assert parse_features("auto", "18.16.1") == Feature.NONE
    assert parse_features("auto", "26.9.2.1") != Feature.NONE
    with pytest.raises(ConfigError, match="lacks schema feature"):
        parse_features("ttl", "18.16.1")
    with pytest.raises(ConfigError, match="unknown schema feature 'zstd'"):
        parse_features("zstd", "26.9")
    old = "\n".join(render_schema("msgtrace", SchemaOptions()))
    for word in ("LowCardinality", "CODEC", "TTL", "__", "Replicated", "ON CLUSTER"):
        assert word not in old
    new = "\n".join(render_schema("msgtrace", SchemaOptions(ALL_FEATURES, keep_days=7)))
    assert "stage LowCardinality(String)" in new and "CODEC(ZSTD(1))" in new and "INTERVAL 7 DAY" in new
    stmts = render_schema("msgtrace", SchemaOptions(cluster="prod"))
    dist = [s for s in stmts if "Distributed" in s]
    assert len(dist) == len(schema_tables()) >= 6 and all("ON CLUSTER `prod`" in s for s in stmts)
    assert "Distributed(`prod`, `msgtrace`, trace_events_local, cityHash64(msg_id))" in dist[0]
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/msgtrace/trace_events_local', '{replica}')" \
        in "\n".join(stmts)
    with pytest.raises(ConfigError, match="invalid cluster name"):
        SchemaOptions(cluster="a`; DROP")


def test_db_init_print_shows_ddl_without_running_it(tmp_path):
    from click.testing import CliRunner

    from tracer.cli import main

    url = f"chdb://{tmp_path / 'never'}"
    r = CliRunner().invoke(main, ["db", "init", "--print", "--cluster", "prod", "--server-version", "18.16",
                                  "--store", url])
    assert r.exit_code == 0, r.output
    assert "CREATE TABLE IF NOT EXISTS `msgtrace`.trace_events_local ON CLUSTER `prod`" in r.output
    assert "LowCardinality" not in r.output
    assert not (tmp_path / "never").exists()  # nothing ran


def test_schema_features_on_each_engine(store_url):
    s = Store(store_url)
    s.init_schema()
    types = s.column_types("trace_events")
    modern = s.engine == "chdb"  # chDB is 26.x; the test server is 18.16
    assert types["stage"] == ("LowCardinality(String)" if modern else "String")
    assert types["consumer_group"] == ("LowCardinality(Nullable(String))" if modern else "Nullable(String)")
    assert s.init_schema() == []  # present: no DDL at all (a collector without DDL rights starts)
    src = events(3)
    src[1].consumer_group = "g"
    s.insert_events(src)
    assert s.select_events(src[1].msg_id) == [src[1]]
    if s.engine == "clickhouse":
        s.command("DROP DATABASE IF EXISTS {db:Identifier}")
    s.close()


def _retention_events(days: int) -> list[Event]:
    import time

    now, day = int(time.time() * 1e6), 86_400_000_000
    return [Event(msg_id=f"m{d}-{i}", stage="sent", ts_us=now - d * day, service="s", emitter_id="e",
                  seq=d * 10 + i + 1) for d in range(days) for i in range(3)]


def test_retention_drops_old_day_partitions(store, tmp_path):
    import json

    from click.testing import CliRunner

    from tracer.cli import main

    store.insert_events(_retention_events(6))
    store.close()
    args = ["retention", "--keep-days", "3", "--store", _url_of(store), "--json"]
    dry = CliRunner().invoke(main, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.output)
    # today and the 3 days before stay (as a 3-day TTL would keep them), the 2 older days go
    assert [p["table"] for p in plan["partitions"]] == ["trace_events", "trace_events"]
    assert plan["rows"] == 6 and plan["dropped"] == 0
    assert store.query("SELECT count() AS n FROM {db:Identifier}.trace_events")[0]["n"] == 18
    done = json.loads(CliRunner().invoke(main, args).output)
    assert done["dropped"] == 2
    left = store.query("SELECT min(msg_id) AS lo, count() AS n FROM {db:Identifier}.trace_events")[0]
    assert left["n"] == 12 and not {r["msg_id"][:2] for r in store.query(
        "SELECT msg_id FROM {db:Identifier}.trace_events")} & {"m4", "m5"}
    assert json.loads(CliRunner().invoke(main, args).output)["dropped"] == 0  # idempotent


def _url_of(store: Store) -> str:
    u = store.url
    if u.engine == "chdb":
        return f"chdb://{u.path}"
    return f"clickhouse://{u.user}:{u.password}@{u.host}:{u.port}/{u.database}"


def test_keep_days_is_a_ttl_on_modern_servers(chdb_url):
    from click.testing import CliRunner

    from tracer.cli import main

    r = CliRunner().invoke(main, ["db", "init", "--keep-days", "7", "--store", chdb_url])
    assert r.exit_code == 0 and "ttl" in r.output, r.output
    s = Store(chdb_url)
    ddl = s.query("SELECT create_table_query AS q FROM system.tables WHERE database = {db:String} "
                  "AND name = 'trace_events'", {"db": s.database})[0]["q"]
    assert "TTL" in ddl and "toIntervalDay(7)" in ddl.replace(" ", "")
    s.insert_events(_retention_events(10))
    s.command("OPTIMIZE TABLE {db:Identifier}.trace_events FINAL")  # a merge applies the TTL now
    days = {r["msg_id"].split("-")[0] for r in s.query("SELECT DISTINCT msg_id FROM {db:Identifier}.trace_events")}
    assert "m0" in days and "m9" not in days and "m8" not in days
    s.close()


def test_global_in_rewrite_only_touches_subqueries():
    from tracer.store.cluster import ShardLocal, declared, global_in

    sql = ("SELECT 1 FROM t WHERE a IN (SELECT x FROM s) AND b NOT IN (\n SELECT y FROM s) "
           "AND c IN (1, 2) AND d GLOBAL IN (SELECT z FROM s) AND stage IN ('sent')")
    out = global_in(sql)
    assert "a GLOBAL IN (SELECT x" in out and "b GLOBAL NOT IN (\n SELECT" in out
    assert "c IN (1, 2)" in out and "d GLOBAL IN (SELECT z" in out and "GLOBAL GLOBAL" not in out
    assert declared("-- msgtrace: shard-local per-shard\nSELECT 1") is ShardLocal.PER_SHARD
    assert declared("SELECT 1 -- msgtrace: shard-local group-by") is None  # a whole comment line only


def test_password_from_the_environment_or_a_secret_file(monkeypatch, tmp_path, clickhouse_server):
    if clickhouse_server is None:
        pytest.skip("needs the test's own server (its password is known)")
    secret = tmp_path / "pw"
    secret.write_text(clickhouse_server.password + "\n")
    url = f"clickhouse://{clickhouse_server.user}@127.0.0.1:{clickhouse_server.tcp_port}/msgtrace"
    monkeypatch.delenv("MSGTRACE_STORE_PASSWORD", raising=False)
    monkeypatch.setenv("MSGTRACE_STORE_PASSWORD_FILE", str(secret))
    assert Store(url).query("SELECT 1 AS x") == [{"x": 1}]
    monkeypatch.setenv("MSGTRACE_STORE_PASSWORD", "wrong-" + clickhouse_server.password)  # the variable wins
    with pytest.raises(QueryError) as ei:
        Store(url).query("SELECT 1")
    assert clickhouse_server.password not in str(ei.value)
    monkeypatch.delenv("MSGTRACE_STORE_PASSWORD")
    monkeypatch.setenv("MSGTRACE_STORE_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="MSGTRACE_STORE_PASSWORD_FILE: cannot read"):
        parse_store_url(url)
    assert parse_store_url(url.replace("@", ":inline@")).password == "inline"  # the URL's own wins
