"""msgtrace incident on a half hour of traffic with five injected faults, on chDB and ClickHouse 18.16:
each fault is found as its own burst with the right cause, and nothing else is.

The story (4 partitions, a message per second on each, producers prod-a / prod-b, group red-packet):

* 10:05:00-10:05:29 the broker loses the acked messages of partitions 1 and 3 (later ones arrive);
* 10:12:00 consumer cons-2/12 (partitions 2, 3) crashes after auto-commit ran ahead of its work; a
  new instance cons-2/13 takes over and gets the uncommitted tail again (a rebalance);
* 10:20:00-10:20:09 and again 10:26:00-10:26:04 the handler on cons-1 fails and commits anyway
  (two bursts: more than --gap apart);
* 10:25:00-10:25:09 prod-b's sends fail;
* cons-1's emitter loses 3 audit events (a seq gap).
"""
from __future__ import annotations

import orjson
import pytest

from tests.test_reconcile_cli import run, wide_console  # noqa: F401 (fixture)
from tracer import verdicts as V
from tracer.analysis.bursts import Cause
from tracer.analysis.incident import analyse_incident
from tracer.events import Event

T0 = 1_795_255_200_000_000  # 2026-11-21T10:00:00Z
S = 1_000_000
TOPIC = "order-paid"
GROUP = "red-packet"
WINDOW = ["--from", "2026-11-21T10:00:00Z", "--to", "2026-11-21T10:31:00Z"]
N = 1800  # messages per partition, one a second

BROKER_LOST = range(300, 330)  # on partitions 1 and 3
CRASH_AT = 720  # cons-2/12 stops
COMMITTED_NOT_DONE = range(716, 720)  # on partitions 2 and 3: received + committed by cons-2/12, no outcome
DONE_NOT_COMMITTED = range(710, 716)  # processed by cons-2/12, not committed: redelivered to cons-2/13
TAKEOVER_AT = 730
FAILED_1 = range(1200, 1210)  # partition 0, cons-1
FAILED_2 = range(1560, 1565)
SEND_FAILED = range(1500, 1510)  # odd i: prod-b, every partition


class Story:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.seq = 0

    def ev(self, msg: str, stage: str, t_us: int, host: str, pid: int, p: int | None = None, o: int | None = None,
           group: str | None = None, error: str | None = None) -> None:
        emitter, seq = "", 0
        if host == "cons-1":
            self.seq += 1
            if self.seq == 500:  # three audit events of cons-1 lost
                self.seq += 3
            emitter, seq = "e-cons-1", self.seq
        self.events.append(Event(msg_id=msg, stage=stage, ts_us=t_us, topic=TOPIC, partition=p, offset=o,
                                 consumer_group=group, error=error, host=host, pid=pid, emitter_id=emitter, seq=seq,
                                 service="red-packet-service" if group else "order-service", key=msg))

    def build(self) -> Story:
        for i in range(N):
            for p in range(4):
                self.message(i, p)
        return self

    def message(self, i: int, p: int) -> None:
        m = f"m{p}-{i}"
        t = T0 + i * S + p * 1000
        prod, ppid = ("prod-b", 200) if i % 2 else ("prod-a", 100)
        self.ev(m, "sent", t, prod, ppid)
        if i in SEND_FAILED and prod == "prod-b":
            self.ev(m, "send_failed", t + 3000, prod, ppid, error="KafkaTimeoutError: Expiring 1 record(s)")
            return
        self.ev(m, "broker_acked", t + 5000, prod, ppid, p, i)
        if p in (1, 3) and i in BROKER_LOST:
            return
        if p in (0, 1):
            host, pid, at = "cons-1", 11, t + 50_000
        elif i < CRASH_AT:
            host, pid, at = "cons-2", 12, t + 50_000
        else:
            host, pid, at = "cons-2", 13, max(t + 50_000, T0 + TAKEOVER_AT * S + i * 1000)
        self.ev(m, "received", at, host, pid, p, i, GROUP)
        if p in (2, 3) and i in COMMITTED_NOT_DONE:
            self.ev(m, "offset_committed", at + 20_000, host, pid, p, i + 1, GROUP)
            return
        if p == 0 and (i in FAILED_1 or i in FAILED_2):
            self.ev(m, "business_failed", at + 10_000, host, pid, p, i, GROUP, error="PaymentRejected: account frozen")
            self.ev(m, "offset_committed", at + 20_000, host, pid, p, i + 1, GROUP)
            return
        self.ev(m, "business_done", at + 10_000, host, pid, p, i, GROUP)
        if p in (2, 3) and i in DONE_NOT_COMMITTED:  # the crash came before the commit: redelivered
            again = T0 + TAKEOVER_AT * S + (i - 100) * 1000
            self.ev(m, "received", again, "cons-2", 13, p, i, GROUP)
            self.ev(m, "business_done", again + 10_000, "cons-2", 13, p, i, GROUP)
            self.ev(m, "offset_committed", again + 20_000, "cons-2", 13, p, i + 1, GROUP)
            return
        self.ev(m, "offset_committed", at + 20_000, host, pid, p, i + 1, GROUP)


@pytest.fixture
def story_store(store):
    store.insert_events(Story().build().events)
    return store


def _hms(b) -> tuple[str, str]:
    return b["start"][11:19], b["end"][11:19]


def test_each_injected_fault_is_one_burst_with_its_cause(story_store):
    r = run(story_store, "incident", *WINDOW, "--json")
    assert r.exit_code == 1, r.stderr
    doc = orjson.loads(r.stdout)
    got = sorted((b["verdict"], b["cause"], b["locus"], tuple(sorted(b["partitions"])), b["messages"], *_hms(b))
                 for b in doc["bursts"])
    assert got == sorted([
        (V.LOST_IN_BROKER, Cause.BROKER_LOST_ACKED, "", ("1", "3"), 60, "10:05:00", "10:05:29"),
        (V.LOST_IN_CONSUMER, Cause.COMMITTED_BEFORE_DONE, f"{GROUP}@cons-2", ("2", "3"), 8, "10:11:56", "10:11:59"),
        (V.FAILED_AND_COMMITTED, Cause.HANDLER_ERROR_COMMITTED, f"{GROUP}@cons-1", ("0",), 10, "10:20:00", "10:20:09"),
        (V.SEND_FAILED, Cause.SEND_FAILED_NOT_RETRIED, "prod-b", (), 20, "10:25:01", "10:25:09"),
        (V.FAILED_AND_COMMITTED, Cause.HANDLER_ERROR_COMMITTED, f"{GROUP}@cons-1", ("0",), 5, "10:26:00", "10:26:04"),
    ])
    by = {(b["verdict"], b["start"][11:16]): b for b in doc["bursts"]}
    broker = by[(V.LOST_IN_BROKER, "10:05")]
    assert broker["offsets"] == {"1": [300, 329], "3": [300, 329]}
    assert broker["evidence"] == {"later_acked_received": 60}
    assert broker["text"] == ("60 messages acked on order-paid/1,3 between 2026-11-21 10:05:00 and 10:05:29 never "
                              "reached red-packet, while messages acked later on the same partition did: the broker "
                              "lost acknowledged messages")
    assert broker["producer_hosts"] == {"prod-a": 30, "prod-b": 30}
    crash = by[(V.LOST_IN_CONSUMER, "10:11")]
    assert crash["instances"] == {"cons-2/12": 8} and len(crash["stopped_instances"]) == 1
    assert "cons-2/12" in crash["stopped_instances"][0] and "crashed" in crash["text"]
    failed = by[(V.FAILED_AND_COMMITTED, "10:20")]
    assert "PaymentRejected: account frozen" in failed["text"] and "swallowed" in failed["text"]
    assert failed["remedy"] == V.REMEDY[V.FAILED_AND_COMMITTED]
    sf = by[(V.SEND_FAILED, "10:25")]
    assert sf["producer_hosts"] == {"prod-b": 20} and "did not retry" in sf["text"]
    # samples and their exact drill-down commands; a sample's command judges it as the burst did
    assert broker["samples"][:2] == ["m1-300", "m3-300"]
    assert broker["commands"][0] == "trace-msg m1-300 --group red-packet"
    t = run(story_store, "trace-msg", "m1-300", "--group", GROUP, "--json")
    assert orjson.loads(t.stdout)["verdicts"][0]["verdict"] == V.LOST_IN_BROKER

    sig = doc["signals"]
    assert [(i["instance"], i["crashed"], i["left_behind"], i["replaced_by"]) for i in sig["stopped_instances"]] == \
        [("cons-2/12", True, 8, "cons-2/13")]
    assert sorted((r["partition"], r["from"], r["to"], r["messages"]) for r in sig["rebalances"]) == \
        [(2, "cons-2/12", "cons-2/13", 6), (3, "cons-2/12", "cons-2/13", 6)]
    assert sig["commits_without_outcome"] == [{"consumer_group": GROUP, "instance": "cons-2/12", "pairs": 8}]
    assert [(g["emitter_id"], g["instance"], g["missing"]) for g in sig["audit_gaps"]] == \
        [("e-cons-1", "red-packet-service cons-1/11", 3)]

    # the funnel over time: where the counts part, per minute
    tl = doc["timeline"]
    assert tl["bucket_s"] == 60
    parts = {(p["hop"], p["from"][11:16]): p["missing"] for p in tl["partings"]}
    assert parts[("broker_acked->received", "10:05")] == 60
    assert parts[("sent->broker_acked", "10:25")] == 20
    assert parts[("offset_committed->business_done", "10:20")] == 10
    total = next(f for f in doc["funnel"] if f["consumer_group"] == GROUP)
    assert total["messages"] == 4 * N and total["sent"] == 4 * N
    assert total["redelivered"] == 12 and total["duplicate_processing"] == 12
    assert total["redelivery_rate"] == pytest.approx(12 / total["received"], abs=1e-6)
    minute = {b["bucket"][11:16]: b for b in tl["buckets"] if b["consumer_group"] == GROUP}
    assert minute["10:05"]["broker_acked"] - minute["10:05"]["received"] == 60
    assert minute["10:01"]["latency_acked_received_us"]["p50"] == pytest.approx(45_000, abs=2000)


def test_gap_splits_and_merges_bursts(story_store):
    w_from, w_to = T0, T0 + 31 * 60 * S
    rep = analyse_incident(story_store, w_from, w_to, gap_s=600)  # 10 min: the two handler failures merge
    failed = [b for b in rep.bursts if b.verdict == V.FAILED_AND_COMMITTED]
    assert [b.messages for b in failed] == [15]
    rep = analyse_incident(story_store, w_from, w_to, gap_s=2)  # 2 s: still one burst each (1 s apart)
    assert [b.messages for b in rep.bursts if b.verdict == V.FAILED_AND_COMMITTED] == [10, 5]


def test_terminal_output_names_bursts_and_commands(story_store):
    r = run(story_store, "incident", *WINDOW)
    assert r.exit_code == 1
    text = r.stdout
    assert "loss bursts" in text and "the broker lost acknowledged messages" in text
    assert "$ trace-msg m1-300 --group red-packet" in text
    assert "crashed mid-work" in text and "rebalance in red-packet" in text
    assert "where the counts part" in text
