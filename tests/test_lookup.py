"""trace-msg without a msg_id: --at TOPIC/PARTITION@OFFSET, --key K, --topic T --from --to, answered from
the lookup tables (built on first use from the stored events, then kept up to date by materialized
views on every insert), on chDB and ClickHouse 18.16."""
from __future__ import annotations

import orjson

from tests.test_incident_bursts import GROUP, T0, TOPIC, Story
from tests.test_reconcile_cli import run, wide_console  # noqa: F401 (fixture)
from tracer import verdicts as V
from tracer.analysis import lookup as L
from tracer.events import Event

S = 1_000_000


def _story(n: int = 60) -> Story:
    s = Story()
    for i in range(n):
        for p in range(4):
            s.message(i, p)
    return s


def test_lookup_tables_are_built_once_then_kept_up_to_date(store):
    store.insert_events(_story().events)  # before the tables exist: the first use fills them
    assert L.present(store) == set()
    assert L.ensure_lookup(store) is True
    assert L.present(store) == set(L.TABLES + L.VIEWS)
    assert L.ensure_lookup(store) is False
    assert [m.msg_id for m in L.by_offset(store, TOPIC, 2, 17)] == ["m2-17"]
    # inserted after: the views index them
    late = [Event(msg_id="late-1", stage="sent", ts_us=T0 + 3600 * S, topic=TOPIC, key="order-9", host="h", pid=1),
            Event(msg_id="late-1", stage="broker_acked", ts_us=T0 + 3600 * S + 5, topic=TOPIC, partition=2, offset=17,
                  host="h", pid=1)]
    store.insert_events(late)
    # offset 17 of partition 2 reused (a broker lost its log): both messages, oldest first
    assert [m.msg_id for m in L.by_offset(store, TOPIC, 2, 17)] == ["m2-17", "late-1"]
    assert [m.msg_id for m in L.by_key(store, "order-9")] == ["late-1"]
    assert [m.msg_id for m in L.by_key(store, "order-9", topic="other")] == []
    got = L.by_time(store, TOPIC, T0 + 10 * S, T0 + 12 * S)
    assert [m.msg_id for m in got] == ["m0-10", "m1-10", "m2-10", "m3-10", "m0-11", "m1-11", "m2-11", "m3-11"]
    m = L.describe(store, got[:1])[0]
    assert (m.topic, m.partition, m.offset, m.key) == (TOPIC, 0, 10, "m0-10")


def test_trace_msg_lookups(store):
    store.insert_events(_story(400).events)  # m1-300.. and m3-300.. acked, never received (lost in the broker)
    r = run(store, "trace-msg", "--at", f"{TOPIC}/1@305", "--json")
    assert r.exit_code == 1, r.stderr  # one message, shown in full, not delivered
    doc = orjson.loads(r.stdout)
    assert doc["msg_id"] == "m1-305" and [e["stage"] for e in doc["events"]] == ["sent", "broker_acked"]

    r = run(store, "trace-msg", "--key", "m0-5")
    assert r.exit_code == 0 and "1 message with key 'm0-5'" in r.stdout and "delivered" in r.stdout

    r = run(store, "trace-msg", "--topic", TOPIC, "--from", "2026-11-21T10:04:59Z", "--to", "2026-11-21T10:05:01Z",
            "--group", GROUP, "--json")
    assert r.exit_code == 1, r.stderr
    doc = orjson.loads(r.stdout)
    got = {m["msg_id"]: [v["verdict"] for v in m["verdicts"]] for m in doc["matches"]}
    assert got == {"m0-299": [V.DELIVERED], "m1-299": [V.DELIVERED], "m2-299": [V.DELIVERED], "m3-299": [V.DELIVERED],
                   "m0-300": [V.DELIVERED], "m1-300": [V.LOST_IN_BROKER], "m2-300": [V.DELIVERED],
                   "m3-300": [V.LOST_IN_BROKER]}
    assert doc["matches"][1]["partition"] == 1 and doc["matches"][1]["offset"] == 299

    r = run(store, "trace-msg", "--topic", TOPIC, "--from", "2026-11-21T10:00:00Z", "--to", "2026-11-21T11:00:00Z",
            "--limit", "3")
    assert r.exit_code == 0 and "the first 3; --limit for more" in r.stdout and "drill down: trace-msg m0-0" in r.stdout

    r = run(store, "trace-msg", "--key", "no-such-key")
    assert r.exit_code == 3 and "0 messages" in r.stdout


def test_trace_msg_lookup_usage_errors(store):
    for args, words in ((["--at", "order-paid@3"], "TOPIC/PARTITION@OFFSET"),
                        (["--topic", TOPIC], "--topic needs --from"),
                        (["m1", "--key", "k"], "not both"),
                        (["--key", "k", "--at", "t/1@2"], "give one of"),
                        ([], "give MSG_ID")):
        r = run(store, "trace-msg", *args)
        assert r.exit_code == 2 and words in r.stderr + r.stdout, (args, r.stderr, r.stdout)
