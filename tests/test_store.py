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
    with store.session():
        pid = os.fork()
        if pid == 0:  # child: wait until the parent has checked, then leave without cleanup
            os.close(w)
            os.read(r, 1)
            os._exit(0)
    os.close(r)
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
