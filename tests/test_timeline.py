"""trace-msg's timeline order (tracer.analysis.timeline): causes before effects where the events prove
it, whatever the clocks say, and the skew between clocks. Unit tests on built events; the end-to-end
case (a consumer process whose clock is five minutes behind, real Tansu, both engines) is
tests/faults/test_clock_skew.py."""
from __future__ import annotations

import itertools

from tracer.analysis.timeline import causal
from tracer.events import Event

S = 1_000_000
T = 1_795_000_000 * S
_seq = itertools.count(1)


def ev(stage: str, ts: int, who: str = "order", **kw) -> Event:
    svc = {"order": ("order-service", "host1", 10, "em-order"), "red": ("red-packet", "host2", 20, "em-red"),
           "red2": ("red-packet", "host3", 30, "em-red2"), "points": ("points", "host4", 40, "em-points")}[who]
    return Event(msg_id="m", stage=stage, ts_us=ts, service=svc[0], host=svc[1], pid=svc[2], emitter_id=svc[3],
                 seq=next(_seq), topic=kw.pop("topic", "orders"), **kw)


def stages(events) -> list[str]:
    return [f"{e.stage}:{e.consumer_group or ''}" if e.consumer_group else e.stage for e in events]


def test_a_consumer_clock_behind_is_put_after_the_send_and_named():
    behind = 300 * S
    evs = [ev("sent", T), ev("broker_acked", T + 2000, partition=0, offset=7),
           ev("received", T + 5000 - behind, "red", partition=0, offset=7, consumer_group="rp"),
           ev("business_done", T + 9000 - behind, "red", consumer_group="rp"),
           ev("offset_committed", T + 9500 - behind, "red", partition=0, offset=8, consumer_group="rp")]
    line = causal(evs)
    assert stages(line.events) == ["sent", "broker_acked", "received:rp", "business_done:rp", "offset_committed:rp"]
    assert line.reordered
    [s] = line.skews
    assert (s.behind, s.ahead, s.effect, s.cause) == ("red-packet@host2", "order-service@host1", "received",
                                                     "broker_acked")
    assert s.at_least_us == behind - 3000  # the ack's stamp minus the receipt's: a lower bound
    assert s.text() == ("consumer service red-packet@host2 appears 300 s behind order-service@host1: "
                        "received stamped before broker_acked")


def test_agreeing_clocks_keep_the_time_order_and_report_no_skew():
    evs = [ev("sent", T), ev("broker_acked", T + 2000, partition=0, offset=7),
           ev("received", T + 1500, "red", partition=0, offset=7, consumer_group="rp"),  # fetched before the ack came
           ev("business_done", T + 9000, "red", consumer_group="rp")]
    line = causal(evs)
    assert line.skews == []  # a receipt 0.5 ms before the producer read its ack is latency, not skew
    assert stages(line.events) == ["sent", "broker_acked", "received:rp", "business_done:rp"]
    fine = [ev("sent", T), ev("received", T + 5000, "red", consumer_group="rp")]
    assert causal(fine).events == fine and not causal(fine).reordered and not causal(fine).skews


def test_the_ack_of_the_receipts_offset_and_the_send_it_answers():
    """Retries: the receipt follows the ack of its own offset (and the send that ack answers), not a
    later failed attempt; a second group ahead in time stays where its stamps put it."""
    evs = [ev("sent", T), ev("send_failed", T + 100, error="timeout"), ev("sent", T + 200),
           ev("broker_acked", T + 300, partition=1, offset=4),
           ev("received", T - 60 * S, "red", partition=1, offset=4, consumer_group="rp"),
           ev("business_done", T - 59 * S, "red", consumer_group="rp"),
           ev("received", T + 400, "points", partition=1, offset=4, consumer_group="pts"),
           ev("business_done", T + 500, "points", consumer_group="pts")]
    line = causal(evs)
    got = stages(line.events)
    assert got.index("broker_acked") < got.index("received:rp") < got.index("business_done:rp")
    assert got[:4] == ["sent", "send_failed", "sent", "broker_acked"]
    assert [(s.behind, s.effect, s.cause) for s in line.skews] == [("red-packet@host2", "received", "broker_acked")]
    assert 59 * S < line.skews[0].at_least_us <= 60 * S + 300


def test_a_redelivery_to_another_member_and_a_replay_to_a_retry_topic():
    evs = [ev("sent", T), ev("broker_acked", T + 100, partition=0, offset=1),
           ev("received", T - 10 * S, "red", partition=0, offset=1, consumer_group="rp"),
           # the second member's clock is right: its receipt and commit follow their own stamps
           ev("received", T + 30 * S, "red2", partition=0, offset=1, consumer_group="rp"),
           ev("offset_committed", T + 31 * S, "red2", partition=0, offset=2, consumer_group="rp"),
           ev("sent", T + 3600 * S, topic="orders.retry", attrs={"replay_run": "r1"}),
           ev("broker_acked", T + 3600 * S + 100, topic="orders.retry", partition=0, offset=0,
              attrs={"replay_run": "r1"}),
           ev("received", T + 3590 * S, "red", topic="orders.retry", partition=0, offset=0, consumer_group="rp"),
           ev("business_done", T + 3590 * S + 50, "red", topic="orders.retry", consumer_group="rp")]
    got = [(e.stage, e.topic, e.host) for e in causal(evs).events]
    assert got.index(("received", "orders", "host2")) > got.index(("broker_acked", "orders", "host1"))
    assert got.index(("received", "orders.retry", "host2")) > got.index(("broker_acked", "orders.retry", "host1"))
    assert got.index(("business_done", "orders.retry", "host2")) > got.index(("received", "orders.retry", "host2"))
    assert got.index(("offset_committed", "orders", "host3")) > got.index(("received", "orders", "host3"))


def test_rabbitmq_without_offsets_and_an_audit_gap():
    """No offsets: a receipt follows the first send to its exchange. No receipt at all (the audit lost
    it): the group's commit follows the send."""
    evs = [ev("sent", T, topic="ex", mq="rabbitmq"), ev("broker_acked", T + 100, topic="ex", mq="rabbitmq"),
           ev("received", T - 5 * S, "red", topic="ex", consumer_group="q", mq="rabbitmq"),
           ev("offset_committed", T - 4 * S, "points", topic="ex", consumer_group="q2", mq="rabbitmq")]
    line = causal(evs)
    got = stages(line.events)
    assert got.index("sent") < got.index("received:q") and got.index("sent") < got.index("offset_committed:q2")
    assert {s.behind for s in line.skews} == {"red-packet@host2", "points@host4"}


def test_contradicting_data_never_hangs_or_drops_an_event():
    """One emitter whose seq order contradicts the stamps, duplicates, events with no seq."""
    a = ev("received", T + 10, "red", partition=0, offset=1, consumer_group="rp")
    b = ev("broker_acked", T + 20, "red", partition=0, offset=1)  # same stream: its seq is later
    c = Event(msg_id="m", stage="sent", ts_us=T + 30, service="x", host="h", pid=1)  # no emitter, no seq
    evs = [a, b, c, Event(**a.to_dict()), ev("business_done", T, "red", consumer_group="rp")]
    line = causal(evs)
    assert sorted(id(e) for e in line.events) == sorted(id(e) for e in evs)
