"""trace-msg: timeline, verdicts per group, JSON schema, exit codes, unknown ids, hostile ids.

Both engines (`store` fixture). The command is driven through click's CliRunner.
"""
from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner

from tests.test_reconcile import EXPECT, HOUR, T0, Builder, scenario_events
from tracer.analysis import passes
from tracer.analysis.judge import judge_events
from tracer.analysis.result import Verdict
from tracer.cli.tracemsg import similar_prefix, trace_msg
from tracer.events import Event

HOSTILE = ["q'uote", 'd"q', "back\\slash\\", "uni-čšž-红包-🧧", "x" * 10_240,
           "'; DROP TABLE trace_events; --", "{msg_id:String}", "tab\tnl\nend", "nul\0byte"]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Rich folds table cells at 80 columns off a terminal; tests read whole cells."""
    from tracer.cli.util import out

    monkeypatch.setattr(out, "_width", 250)


def run(store, *args: str):
    url = store.url.redacted() if store.engine == "chdb" else _server_url(store)
    return CliRunner().invoke(trace_msg, [*args, "--store", url], catch_exceptions=False)


def _server_url(store) -> str:
    u = store.url
    return f"clickhouse://{u.user}:{u.password}@{u.host}:{u.port}/{u.database}"


def test_python_judge_matches_the_sql(store):
    """trace-msg judges one message in Python; it must agree with reconcile_pairs.sql everywhere
    (rolled back, replayed and expired messages included)."""
    b = scenario_events()
    store.insert_events(b.events)
    ids = sorted({e.msg_id for e in b.events})
    diffs = []
    with store.session():
        for m in ids:
            events = store.select_events(m)
            for groups in ((), ("g1", "g2", "ghost")):
                py = {v.consumer_group: v for v in judge_events(m, events, groups, 1)}
                sql = {d.facts.consumer_group: Verdict.judge(d.facts, (d.verdict, d.flags))
                       for d in passes.one_message(store, m, groups, 1)}
                for g in sorted(set(py) | set(sql)):
                    a, s = py.get(g), sql.get(g)
                    pa = a and (a.verdict, sorted(a.flags), a.stopped_at, a.evidence)
                    sa = s and (s.verdict, sorted(s.flags), s.stopped_at, s.evidence)
                    if pa != sa:
                        diffs.append(f"{m}/{g}: python {pa} != sql {sa}")
    assert not diffs, "\n".join(diffs)


def test_timeline_verdicts_and_exit_codes(store):
    store.insert_events(scenario_events().events)
    r = run(store, "split")
    assert r.exit_code == 1, r.output
    out = r.output
    for word in ("sent", "broker_acked", "received", "offset_committed", "business_done", "g1", "g2",
                 "lost_in_consumer", "delivered", "remedy", "commit the offset only after", "orders.paid/0@4",
                 "h1/7"):
        assert word in out, word
    assert run(store, "ok").exit_code == 0
    r = run(store, "sendfail")
    assert r.exit_code == 1 and "KafkaTimeoutError" in r.output and "send_failed" in r.output
    # a group named on the command line that never received the message is judged too
    r = run(store, "ok", "--group", "ghost")
    assert r.exit_code == 1 and "ghost" in r.output and "pending_in_broker" in r.output


def test_json_schema(store):
    b = Builder()
    b.produced("j1", 0, 0, 0)
    b.consumed("j1", 5, "g1", 0, 0)
    b.add("j1", "received", 8, group="g2", p=0, o=0)
    b.events[0].trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    store.insert_events(b.events)
    r = run(store, "j1", "--json")
    assert r.exit_code == 1
    doc = orjson.loads(r.stdout)
    # the contract's keys, then the clock skew found between services (none here)
    assert list(doc) == ["msg_id", "verdicts", "events", "skew"] and doc["msg_id"] == "j1" and doc["skew"] == []
    assert [list(v) for v in doc["verdicts"]] == [["consumer_group", "verdict", "stopped_at", "flags",
                                                    "evidence"]] * 2
    assert {(v["consumer_group"], v["verdict"]) for v in doc["verdicts"]} == {("g1", "delivered"),
                                                                              ("g2", "in_flight")}
    assert [e["stage"] for e in doc["events"]] == ["sent", "broker_acked", "received", "business_done",
                                                   "offset_committed", "received"]
    assert doc["events"][0]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert set(doc["events"][0]) == set(Event("x", "sent").to_dict())


def test_unknown_id_suggests_same_prefix(store):
    b = Builder()
    for i in (1, 2, 3):
        b.add(f"order-{i}:paid", "sent", i)
    b.add("other", "sent", 9)
    store.insert_events(b.events)
    r = run(store, "order-7:paid")
    assert r.exit_code == 3
    assert "no events" in r.output and "order-1:paid" in r.output and "other" not in r.output
    r = run(store, "order-7:paid", "--json")
    assert r.exit_code == 3 and orjson.loads(r.stdout) == {"msg_id": "order-7:paid", "verdicts": [], "events": [],
                                                           "skew": []}
    assert similar_prefix("order-42:paid") == "order-42:" and similar_prefix("abcdef") == "abcd"


def test_hostile_ids_are_data_not_sql(store):
    b = Builder()
    for i, m in enumerate(HOSTILE):
        b.produced(m, i, 0, i)
        b.consumed(m, i + 1, "g1", 0, i)
    b.add("victim", "sent", 99)
    store.insert_events(b.events)
    for m in HOSTILE:
        r = run(store, m, "--json")
        assert r.exit_code == 0, (m[:40], r.output[-300:])
        doc = orjson.loads(r.stdout)
        assert doc["msg_id"] == m and {e["msg_id"] for e in doc["events"]} == {m}
        assert [v["verdict"] for v in doc["verdicts"]] == ["delivered"]
        r = run(store, m + "'")  # unknown, and a prefix search with a quote in it
        assert r.exit_code == 3
    n = store.query("SELECT count() AS n FROM {db:Identifier}.trace_events")[0]["n"]
    assert n == len(b.events)


def test_an_id_over_1024_characters_is_found_under_its_capped_form(store):
    from tracer.events import cap_msg_id

    full = "order-" + "z" * 20_000
    b = Builder()
    b.produced(cap_msg_id(full), 0, 0, 0)  # as the hooks store it
    b.consumed(cap_msg_id(full), 1, "g1", 0, 0)
    store.insert_events(b.events)
    r = run(store, full, "--json")
    assert r.exit_code == 0, r.output[-300:]
    doc = orjson.loads(r.stdout)
    assert doc["msg_id"] == cap_msg_id(full) and [v["verdict"] for v in doc["verdicts"]] == ["delivered"]
    assert run(store, full + "!").exit_code == 3


def test_errors_exit_2(tmp_path):
    r = CliRunner().invoke(trace_msg, ["m", "--store", "nosuch://x"])
    assert r.exit_code == 2 and "unsupported store URL" in r.stderr
    r = CliRunner().invoke(trace_msg, ["m", "--store", "clickhouse://u:secret@127.0.0.1:1/db"])
    assert r.exit_code == 2 and "secret" not in r.stderr and "cannot reach" in r.stderr
    r = CliRunner().invoke(trace_msg, ["", "--store", f"chdb://{tmp_path}/s"])
    assert r.exit_code == 2


@pytest.mark.parametrize("m", ["epoch-pending", "brk-lost"])
def test_broker_verdict_in_trace_msg(store, m):
    """g1 never received these: trace-msg judges g1 once a reconcile run did, or with --topic-groups."""
    from tracer.analysis.reconcile import reconcile

    store.insert_events(scenario_events().events)
    assert "g1" not in {v["consumer_group"] for v in orjson.loads(run(store, m, "--json").stdout)["verdicts"]}
    r = run(store, m, "--json", "--topic-groups")
    got = {v["consumer_group"]: v["verdict"] for v in orjson.loads(r.stdout)["verdicts"]}
    assert got["g1"] == EXPECT[(m, "g1")][0] and r.exit_code == 1
    reconcile(store, T0, T0 + HOUR, now_us=T0 + 10 * HOUR)
    r = run(store, m, "--json")
    got = {v["consumer_group"]: v["verdict"] for v in orjson.loads(r.stdout)["verdicts"]}
    assert got["g1"] == EXPECT[(m, "g1")][0] and r.exit_code == 1
