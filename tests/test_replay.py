"""msgtrace replay without a broker: the plan's decisions, the pacer, the headers, the source of truth
(a real SQLite database), the replay tables on both engines (chDB and ClickHouse 18.16) and the CLI's
option errors. The real runs on Tansu are in test_replay_real.py."""
from __future__ import annotations

import sqlite3

import orjson
import pytest
from click.testing import CliRunner

from tracer import verdicts as V
from tracer.cli import main
from tracer.errors import ConfigError
from tracer.replay import Selection, SourceOfTruth
from tracer.replay.fetch import Fetcher
from tracer.replay.plan import (
    DlqHint,
    Item,
    Location,
    Message,
    PlanOptions,
    Result,
    Source,
    VerdictRow,
    Why,
    dlq_hint,
    facts_from_events,
    plan_item,
)
from tracer.replay.publish import Pacer, replay_headers
from tracer.replay.runs import (
    ReplayRun,
    RunInfo,
    ensure_schema,
    events_of,
    prior_replays,
    reconcile_run,
    run_verdicts,
    write_run,
)

NOW = 1_800_000_000_000_000
S = 1_000_000


def ev(stage: str, ts: int, topic: str = "paid", part: int = -1, off: int = -1, g: str = "", **attrs: str) -> dict:
    return {"event_id": f"{stage}-{ts}", "msg_id": "m", "stage": stage, "ts_us": ts, "topic": topic, "part": part,
            "off": off, "g": g, "attr_keys": list(attrs), "attr_values": list(attrs.values())}


def lost_in_consumer_events(t: int = NOW - 3600 * S) -> list[dict]:
    return [ev("sent", t), ev("broker_acked", t + 1, part=1, off=41), ev("received", t + 2, part=1, off=41, g="rp"),
            ev("offset_committed", t + 3, part=1, off=42, g="rp"), ev("received", t + 2, part=1, off=41, g="pts"),
            ev("business_done", t + 4, part=1, off=41, g="pts")]


def row(verdict: str, group: str = "rp", topic: str = "paid") -> VerdictRow:
    return VerdictRow("m", group, topic, verdict)


def opts(**kw) -> PlanOptions:
    return PlanOptions(**{"now_us": NOW, "grace_s": 600, **kw})


# --- the plan -----------------------------------------------------------------------------

def test_lost_in_consumer_is_read_at_its_acked_offset_and_the_shared_topic_warns():
    f = facts_from_events(lost_in_consumer_events())
    item = plan_item("m", [row(V.LOST_IN_CONSUMER)], f, {}, opts())
    assert item.result == Result.PLANNED and item.chain == [Source.BUSINESS_TOPIC]
    assert item.location == Location("paid", 1, 41) and item.target_topic == "paid"
    assert any("also re-delivered to pts" in n for n in item.notes)
    to_retry = plan_item("m", [row(V.LOST_IN_CONSUMER)], f, {}, opts(to_topic="paid.retry", has_source_of_truth=True))
    assert to_retry.target_topic == "paid.retry" and not to_retry.notes
    assert to_retry.chain == [Source.BUSINESS_TOPIC, Source.SOURCE_OF_TRUTH]


def test_without_an_ack_the_location_is_the_groups_receipt():
    t = NOW - 3600 * S
    f = facts_from_events([ev("sent", t), ev("received", t + 2, part=0, off=7, g="rp"),
                           ev("offset_committed", t + 3, part=0, off=8, g="rp")])
    assert plan_item("m", [row(V.LOST_IN_CONSUMER)], f, {}, opts()).location == Location("paid", 0, 7)


def test_broker_side_losses_need_the_source_of_truth():
    for v in (V.NEVER_SENT, V.SEND_FAILED, V.UNACKED, V.LOST_IN_BROKER, V.EXPIRED_IN_BROKER):
        item = plan_item("m", [row(v, group="")], facts_from_events([]), {}, opts())
        assert item.result == Result.SKIPPED and item.why == Why.NO_SOURCE_OF_TRUTH, v
        assert "--source-sql" in item.reason and item.still_lost
        item = plan_item("m", [row(v, group="")], facts_from_events([]), {}, opts(has_source_of_truth=True))
        assert item.chain == [Source.SOURCE_OF_TRUTH] and item.result == Result.PLANNED


def test_a_message_lost_in_the_broker_is_looked_for_at_its_acked_offset_first():
    t = NOW - 3600 * S
    f = facts_from_events([ev("sent", t), ev("broker_acked", t + 1, part=1, off=41)])
    for v in (V.LOST_IN_BROKER, V.EXPIRED_IN_BROKER):
        item = plan_item("m", [row(v)], f, {}, opts(has_source_of_truth=True))
        assert item.chain == [Source.BUSINESS_TOPIC, Source.SOURCE_OF_TRUTH] and item.strict
        assert item.location == Location("paid", 1, 41)
    item = plan_item("m", [row(V.LOST_IN_BROKER)], f, {}, opts())
    assert item.chain == [Source.BUSINESS_TOPIC] and item.result == Result.PLANNED
    Fetcher(kafka=None, source=None).resolve([item])
    assert item.why == Why.NO_BOOTSTRAP and item.reason.endswith("to rebuild it from the source of truth")
    assert not plan_item("m", [row(V.LOST_IN_CONSUMER)], facts_from_events(lost_in_consumer_events()), {},
                         opts()).strict


def test_not_lost_verdicts_are_not_replayed():
    for v in (V.DELIVERED, V.PENDING_IN_BROKER, V.AUDIT_GAP, V.ROLLED_BACK):
        item = plan_item("m", [row(v)], facts_from_events([]), {}, opts(has_source_of_truth=True))
        assert item.why == Why.NOT_REPLAYABLE and not item.still_lost, v


def test_in_flight_waits_for_the_grace_then_is_replayed_with_a_warning():
    t = NOW - 100 * S
    events = [ev("sent", t), ev("broker_acked", t, part=0, off=3), ev("received", t, part=0, off=3, g="rp")]
    item = plan_item("m", [row(V.IN_FLIGHT)], facts_from_events(events), {}, opts())
    assert item.why == Why.IN_FLIGHT_WITHIN_GRACE and not item.still_lost
    item = plan_item("m", [row(V.IN_FLIGHT)], facts_from_events(events), {}, opts(grace_s=60))
    assert item.result == Result.PLANNED and any("idempotent" in n for n in item.notes)


def test_a_message_replayed_before_is_skipped_unless_again():
    f = facts_from_events(lost_in_consumer_events())
    item = plan_item("m", [row(V.LOST_IN_CONSUMER)], f, {"run1": NOW - S}, opts())
    assert item.why == Why.ALREADY_REPLAYED and "run1" in item.reason and not item.still_lost
    assert plan_item("m", [row(V.LOST_IN_CONSUMER)], f, {"run1": NOW - S}, opts(again=True)).result == Result.PLANNED
    # the replay's own audit events count too (a run whose rows were not stored: it crashed)
    replayed = lost_in_consumer_events() + [ev("broker_acked", NOW - S, "paid.retry", 0, 0, replay_run="run2")]
    item = plan_item("m", [row(V.LOST_IN_CONSUMER)], facts_from_events(replayed), {}, opts())
    assert item.why == Why.ALREADY_REPLAYED and "run2" in item.reason
    # and the replay's receipts on the retry topic are not taken for the original's location
    assert facts_from_events(replayed).acked == Location("paid", 1, 41)


def test_dead_lettered_tries_the_dlq_then_the_business_topic():
    t = NOW - 3600 * S
    events = lost_in_consumer_events(t)[:3] + [ev("dead_lettered", t + 5, "paid", 1, 41, "rp", dlq_topic="paid.dlq",
                                                  dlq_partition="0", dlq_offset="9")]
    item = plan_item("m", [row(V.DEAD_LETTERED, topic="paid")], facts_from_events(events), {}, opts())
    assert item.chain == [Source.DLQ, Source.BUSINESS_TOPIC] and item.target_topic == "paid"
    assert item.dlq == [DlqHint("paid.dlq", t + 5, 0, 9)]


def test_dlq_hints():
    # the demo's form: the DLQ named by the event's topic, no offset
    assert dlq_hint(ev("dead_lettered", 5, "paid.dlq", g="rp"), "paid") == DlqHint("paid.dlq", 5)
    # recorded from the consumer record: its partition/offset are the business record's, not the DLQ copy's
    assert dlq_hint(ev("dead_lettered", 5, "paid", 1, 41, "rp", dlq_topic="paid.dlq"), "paid") == DlqHint("paid.dlq", 5)
    assert dlq_hint(ev("dead_lettered", 5, "paid", 1, 41, "rp"), "paid") == DlqHint("", 5)
    assert dlq_hint(ev("dead_lettered", 5, "paid", dlq="d", dlq_partition="2", dlq_offset="x"), "paid") == \
        DlqHint("d", 5)


def test_an_item_no_source_supplies_is_skipped_with_every_reason():
    item = Item("m", ["rp"], [V.DEAD_LETTERED], chain=[Source.DLQ, Source.BUSINESS_TOPIC], target_topic="paid",
                dlq=[DlqHint("", 1)])
    Fetcher(kafka=None, source=None).resolve([item])
    assert item.result == Result.SKIPPED and item.why == Why.NOT_IN_DLQ
    assert "[dlq]" in item.reason and "[business_topic]" in item.reason and "no partition/offset" in item.reason


# --- publishing ------------------------------------------------------------------------------

def test_pacer_spaces_calls_evenly():
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    p = Pacer(4, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        p.wait()
    assert slept == [0.25] * 4 and now[0] == 1.0
    unlimited = Pacer(0, clock=lambda: now[0], sleep=sleep)
    for _ in range(100):
        unlimited.wait()
    assert len(slept) == 4


def test_replay_headers_keep_the_message_s_own_and_set_ours_once():
    h = replay_headers([("traceparent", b"00-x"), ("msgtrace-id", b"old"), ("msgtrace-replay", b"r0")], "m:1", "r1")
    assert h == [("traceparent", b"00-x"), ("msgtrace-id", b"m:1"), ("msgtrace-replay", b"r1")]


# --- the source of truth (SQLite) ----------------------------------------------------------

@pytest.fixture
def outbox(tmp_path) -> str:
    db = sqlite3.connect(tmp_path / "o.db")
    db.execute("CREATE TABLE outbox (msg_id TEXT, k TEXT, body BLOB, dest TEXT)")
    db.executemany("INSERT INTO outbox VALUES (?, ?, ?, ?)", [
        ("order-1:paid", "1", b'{"a":1}', "paid"), ("order-2:paid", None, "text", "paid"),
        ("order-3:paid", "3", b"x", "paid"), ("order-3:paid", "3", b"y", "paid")])
    db.commit()
    db.close()
    return f"sqlite:///{tmp_path / 'o.db'}"


def test_source_of_truth_binds_the_ids_and_keeps_literal_colons(outbox):
    # ":paid" in a literal is text, not a parameter; the ids are bound as a list
    sql = "SELECT msg_id AS id, k AS key, body AS payload, dest AS topic FROM outbox " \
          "WHERE msg_id IN :ids AND msg_id LIKE '%:paid'"
    src = SourceOfTruth(sql, outbox)
    got = src.fetch(["order-1:paid", "order-2:paid", "order-3:paid", "x'); DROP TABLE outbox; --"])
    assert got["order-1:paid"][0].value == b'{"a":1}' and got["order-1:paid"][0].key == b"1"
    assert got["order-2:paid"][0].key is None and got["order-2:paid"][0].value == b"text"
    assert got["order-1:paid"][0].topic == "paid" and len(got["order-3:paid"]) == 2
    one = SourceOfTruth("SELECT msg_id, k, body FROM outbox WHERE msg_id = :id", outbox)  # positional columns
    assert one.fetch(["order-1:paid"])["order-1:paid"][0].value == b'{"a":1}'
    assert "sql on sqlite:///" in src.describe()
    assert len(SourceOfTruth(sql, outbox).fetch(["order-1:paid"])) == 1  # the table survived


def test_source_of_truth_errors_are_one_clear_line(outbox):
    with pytest.raises(ConfigError, match="bound parameter: :ids"):
        SourceOfTruth("SELECT msg_id, k, body FROM outbox", outbox)
    with pytest.raises(ConfigError, match="source-of-truth query failed"):
        SourceOfTruth("SELECT nope FROM outbox WHERE msg_id IN :ids", outbox).fetch(["a"])
    with pytest.raises(ConfigError, match="must return id, key and payload"):
        SourceOfTruth("SELECT msg_id FROM outbox WHERE msg_id IN :ids", outbox).fetch(["order-1:paid"])


def test_ambiguous_and_missing_rows_are_skipped(outbox):
    src = SourceOfTruth("SELECT msg_id, k, body FROM outbox WHERE msg_id IN :ids", outbox)
    items = [Item(m, [], [V.NEVER_SENT], chain=[Source.SOURCE_OF_TRUTH], target_topic="paid")
             for m in ("order-1:paid", "order-3:paid", "order-9:paid")]
    Fetcher(kafka=None, source=src).resolve(items)
    assert [i.result for i in items] == [Result.PLANNED, Result.SKIPPED, Result.SKIPPED]
    assert items[0].message == Message(b"1", b'{"a":1}', []) and items[0].source == Source.SOURCE_OF_TRUTH
    assert [i.why for i in items[1:]] == [Why.AMBIGUOUS_SOURCE, Why.NOT_IN_SOURCE]


# --- the replay tables, on chDB and ClickHouse 18.16 -------------------------------------------

def test_replay_tables_on_both_engines(store):
    ensure_schema(store)
    ensure_schema(store)  # idempotent
    store.command("INSERT INTO {db:Identifier}.reconcile_runs SELECT 'rr1', 1, 2, 10, 20, 600, '{}', "
                  "['lost_in_consumer'], [2]")
    store.insert("verdicts", {"run_id": ["rr1"] * 3, "judged_us": [2] * 3, "msg_id": ["a", "b", "c"],
                              "consumer_group": ["rp", "pts", "rp"], "topic": ["paid", "paid", "other"],
                              "verdict": [V.LOST_IN_CONSUMER, V.LOST_IN_CONSUMER, V.PENDING_IN_BROKER],
                              "flags": [[], ["redelivered"], []], "evidence": ["e"] * 3})
    assert reconcile_run(store, "latest").run_id == "rr1" and reconcile_run(store, "rr1").grace_s == 600
    with pytest.raises(ConfigError, match="no reconcile run 'zz'"):
        reconcile_run(store, "zz")
    assert [r.msg_id for r in run_verdicts(store, "rr1")] == ["a", "b", "c"]
    assert [r.msg_id for r in run_verdicts(store, "rr1", [V.LOST_IN_CONSUMER], ["rp"])] == ["a"]
    assert [r.msg_id for r in run_verdicts(store, "rr1", topics=["other"])] == ["c"]
    assert run_verdicts(store, "rr1", groups=["pts"])[0].flags == ["redelivered"]

    from tracer.events import Event

    store.insert_events([Event("a", "sent", ts_us=5, topic="paid", event_id="e1"),
                         Event("a", "sent", ts_us=5, topic="paid", event_id="e1"),
                         Event("a", "broker_acked", ts_us=6, topic="paid.retry", partition=0, offset=3,
                               attrs={"replay_run": "old"}, event_id="e2")])
    evs = events_of(store, ["a", "zz"])
    assert [e["stage"] for e in evs["a"]] == ["sent", "broker_acked"] and "zz" not in evs
    assert facts_from_events(evs["a"]).replays == {"old": 6}

    items = [Item("a", ["rp"], [V.LOST_IN_CONSUMER], result=Result.PUBLISHED, source=Source.BUSINESS_TOPIC,
                  source_loc=Location("paid", 1, 41), target_topic="paid.retry", published=Location("paid.retry", 0, 3)),
             Item("b", ["pts"], [V.LOST_IN_CONSUMER])]
    items[1].skip(Why.NO_BOOTSTRAP, "no --bootstrap")
    run = ReplayRun("r1", 100, "execute", RunInfo("rr1", 10, 20), user="me", host="h", note="INC-1", finished_us=200)
    write_run(store, run, items)
    assert prior_replays(store, ["a", "b"]) == {"a": {"r1": 200}}
    rows = store.query("SELECT msg_id, source, source_partition, source_offset, target_offset, result, reason_code "
                       "FROM {db:Identifier}.replay_messages ORDER BY msg_id")
    assert rows == [{"msg_id": "a", "source": "business_topic", "source_partition": 1, "source_offset": 41,
                     "target_offset": 3, "result": "published", "reason_code": ""},
                    {"msg_id": "b", "source": "", "source_partition": -1, "source_offset": -1, "target_offset": -1,
                     "result": "skipped", "reason_code": "no_bootstrap"}]
    r = store.query("SELECT user, mode, reconcile_run, note, planned, published, skipped, failed "
                    "FROM {db:Identifier}.replay_runs")
    assert r == [{"user": "me", "mode": "execute", "reconcile_run": "rr1", "note": "INC-1", "planned": 0,
                  "published": 1, "skipped": 1, "failed": 0}]


def test_a_stored_run_replayed_without_a_broker_says_why_per_message(store):
    """--run on both engines, no --bootstrap: the consumer-side loss cannot be read; JSON and exit 1."""
    from tracer.events import Event

    url = _url(store)
    t = NOW - 3600 * S
    store.insert_events([Event("m1", "sent", ts_us=t, topic="paid"),
                         Event("m1", "broker_acked", ts_us=t + 1, topic="paid", partition=0, offset=4),
                         Event("m1", "received", ts_us=t + 2, topic="paid", partition=0, offset=4,
                               consumer_group="rp"),
                         Event("m1", "offset_committed", ts_us=t + 3, topic="paid", partition=0, offset=5,
                               consumer_group="rp")])
    store.command("INSERT INTO {db:Identifier}.reconcile_runs SELECT 'rr1', 1, 2, 10, 20, 600, '{}', [], []")
    store.insert("verdicts", {"run_id": ["rr1"] * 2, "judged_us": [2] * 2, "msg_id": ["m1", "m2"],
                              "consumer_group": ["rp", ""], "topic": ["paid", ""],
                              "verdict": [V.LOST_IN_CONSUMER, V.NEVER_SENT], "flags": [[], []], "evidence": ["", ""]})
    r = CliRunner().invoke(main, ["replay", "--run", "rr1", "--store", url, "--json"], catch_exceptions=False)
    assert r.exit_code == 1, r.output
    j = orjson.loads(r.output)
    assert j["reconcile_run"] == "rr1" and j["mode"] == "dry_run"
    assert {m["msg_id"]: m["reason_code"] for m in j["messages"]} == {"m1": "no_bootstrap",
                                                                       "m2": "no_source_of_truth"}
    assert j["counts"] == {"planned": 0, "published": 0, "skipped": 2, "failed": 0} and j["still_lost"] == 2
    r = CliRunner().invoke(main, ["replay", "--run", "rr1", "--verdict", V.NEVER_SENT, "--store", url])
    assert r.exit_code == 1 and "m2" in r.output and "m1" not in r.output and "--source-sql" in r.output


def _url(store) -> str:
    u = store.url
    if store.engine == "chdb":
        return f"chdb://{u.path}?database={u.database}"
    return f"clickhouse://{u.user}:{u.password}@{u.host}:{u.port}/{u.database}"


# --- CLI errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    ([], "say what to replay"),
    (["--run", "x", "--from", "2026-11-21"], "either --run ID or --from/--to"),
    (["--run", "x", "--verdict", "lost"], "unknown verdict 'lost'"),
    (["--run", "x", "--execute"], "--execute needs the business Kafka"),
    (["--run", "x", "--source-sql", "SELECT 1"], "--source-sql and --source-dsn go together"),
    (["--run", "x", "--rate", "-1"], "--rate"),
    (["--ids", "/nonexistent/ids.txt"], "cannot read --ids"),
])
def test_cli_errors_are_one_line_and_exit_2(tmp_path, args, message):
    r = CliRunner().invoke(main, ["replay", *args, "--store", f"chdb://{tmp_path / 's'}"])
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1


def test_selection_check():
    with pytest.raises(ConfigError):
        Selection().check()
    Selection(ids=["a"]).check()


# --- what the broker still holds (a scripted consumer: Tansu keeps no retention) ---------------

class _Rec:
    def __init__(self, topic: str, p: int, o: int, mid: str | None) -> None:
        self.topic, self.partition, self.offset, self.key, self.value = topic, p, o, b"k", b"v%d" % o
        self.headers = [("msgtrace-id", mid.encode())] if mid else []


class _Log:
    """A partition whose log starts at 10 (retention deleted 0..9), ends at 2000 but reports 1990 (as
    Tansu 0.6 reports the last batch's base offset + 1), has offset 15 compacted away and offset 1500
    written without headers; poll() returns up to 100 records from the position."""

    def __init__(self) -> None:
        self.pos = 0
        self.seeks: list[int] = []
        self.recs = {o: _Rec("paid", 0, o, None if o == 1500 else f"m{o}") for o in range(10, 2000) if o != 15}

    def partitions_for_topic(self, topic: str):
        return {0} if topic == "paid" else set()

    def beginning_offsets(self, tps):
        return {tp: 10 for tp in tps}

    def end_offsets(self, tps):
        return {tp: 1990 for tp in tps}

    def assign(self, tps) -> None:
        pass

    def seek(self, tp, o: int) -> None:
        self.pos = o
        self.seeks.append(o)

    def poll(self, timeout_ms: int = 0, max_records: int | None = None):
        batch = [self.recs[o] for o in range(self.pos, min(self.pos + 100, 2000)) if o in self.recs]
        self.pos = min(self.pos + 100, 2000)
        from kafka.structs import TopicPartition

        return {TopicPartition("paid", 0): batch} if batch else {}


def test_the_log_bounds_and_the_record_s_identity_decide_what_the_broker_can_supply():
    from tracer.replay.sources import BusinessKafka

    k = object.__new__(BusinessKafka)
    k.bootstrap, k.timeout_s, k._parts, k._c = "b:9092", 1.0, {}, _Log()
    want = {Location("paid", 0, o): f"m{o}" for o in (3, 12, 15, 20, 1500, 1700, 1995, 2000)}
    want[Location("paid", 0, 30)] = "another"
    want[Location("gone", 0, 1)] = "m1"
    got = k.read(list(want), want)
    why = {loc.offset if loc.topic == "paid" else "gone": (r.why, r.record is not None) for loc, r in got.items()}
    assert why == {3: (Why.BELOW_LOG_START, False), 12: (None, True), 15: (Why.NOT_AT_OFFSET, False),
                   20: (None, True), 30: (Why.OFFSET_REUSED, False), 1500: (None, True), 1700: (None, True),
                   1995: (None, True), 2000: (Why.BEYOND_LOG_END, False), "gone": (Why.TOPIC_GONE, False)}
    assert "retention deleted it" in got[Location("paid", 0, 3)].text and "10" in got[Location("paid", 0, 3)].text
    assert "identity is not verified" in got[Location("paid", 0, 1500)].note
    # after a loss in the broker, a record must prove it is the message
    strict = k.read([Location("paid", 0, 1500), Location("paid", 0, 12)], want, frozenset(
        {Location("paid", 0, 1500), Location("paid", 0, 12)}))
    assert strict[Location("paid", 0, 1500)].why == Why.IDENTITY_UNVERIFIED
    assert strict[Location("paid", 0, 12)].why is None
    assert "past the partition's log end offset 1990" in got[Location("paid", 0, 2000)].text
    # reads on across near offsets (30 to 1700 via 1500), seeks over a gap, then past the reported end
    assert k._c.seeks[:3] == [12, 1500, 1995]
