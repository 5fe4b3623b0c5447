"""Reconcile cases beside the scenario of tests/test_reconcile.py: how the queries are declared for a
cluster, replays of messages rebuilt from the source of truth, half messages, commits without an
offset. Stores: chDB and the 18.16 server (``store`` fixture)."""
from __future__ import annotations

import pytest

from tests.test_reconcile import HOUR, T0, TOPIC, Builder
from tracer import verdicts as V
from tracer.analysis import passes
from tracer.analysis.expected import ExpectedSource
from tracer.analysis.judge import judge_message
from tracer.analysis.reconcile import reconcile
from tracer.analysis.sql import Ident, render
from tracer.store.cluster import ShardLocal, declared


def test_cluster_declarations_of_the_reconcile_queries():
    """On a cluster (tracer/store/cluster.py): pass 1 runs on every shard over its own whole messages
    (only counts and candidates travel); the per-message aggregations of the evidence queries finish on
    the shards. tests/test_cluster.py checks the answers equal one server's."""
    assert declared(passes.scan_msg_sql(None, False)) is ShardLocal.PER_SHARD
    assert declared(passes.scan_pairs_sql(None)) is ShardLocal.PER_SHARD
    for name in ("reconcile_frontier", "reconcile_queue_order", "reconcile_queue_sends", "reconcile_replay_runs"):
        assert declared(render(name)) is ShardLocal.GROUP_BY, name
    assert declared(render("reconcile_resolve", hashes=Ident("h_x"))) is ShardLocal.GROUP_BY


# --- replays (DESIGN.md: a replay that was processed makes the message delivered, judged with all its events) --

RETRY = TOPIC + ".retry"
RUN = {"replay_run": "run-1", "replay_source": "source_of_truth", "replay_of": "source_of_truth"}


def replayed(b: Builder, msg: str, t: float, o: int, *, consumed: bool = True, tagged: bool = False,
             done: bool = True) -> None:
    """msgtrace replay re-published ``msg`` to the retry topic at ``t`` (its sent/broker_acked carry
    replay_run); the group then read it there. ``tagged``: the consumer hook put replay_run on its events
    too (the msgtrace-replay header); else they look like the message's own."""
    b.add(msg, "sent", t, topic=RETRY).attrs.update(RUN)
    b.add(msg, "broker_acked", t + 1, p=0, o=o, topic=RETRY).attrs.update(RUN)
    if not consumed:
        return
    stages = ["received", "business_done", "offset_committed"] if done else ["received", "offset_committed"]
    for i, stage in enumerate(stages):
        e = b.add(msg, stage, t + 10 + i, group="g1", p=0, o=o + (stage == "offset_committed"), topic=RETRY,
                  host="h2")
        if tagged:
            e.attrs["replay_run"] = "run-1"


def replay_story() -> Builder:
    b = Builder()
    for i, msg in enumerate(("plain-1", "plain-2")):  # the topic's group is g1, delivered plainly
        b.produced(msg, i, 0, i)
        b.consumed(msg, 5 + i, "g1", 0, i)
    # rebuilt from the outbox (never sent), replayed and processed: the consumer's events untagged, tagged
    replayed(b, "rebuilt-untagged", 2000, 0)
    replayed(b, "rebuilt-tagged", 2100, 1, tagged=True)
    # lost in the consumer on the business topic, then replayed to the retry topic and processed
    b.produced("lost-then-replayed", 10, 0, 2)
    b.consumed("lost-then-replayed", 15, "g1", 0, 2, done=False)
    replayed(b, "lost-then-replayed", 2300, 3)
    # the same, but the replay was committed without an outcome: the original verdict, the attempt in evidence
    b.produced("lost-replay-lost", 20, 0, 3)
    b.consumed("lost-replay-lost", 25, "g1", 0, 3, done=False)
    replayed(b, "lost-replay-lost", 2400, 4, done=False)
    # rebuilt and replayed last, not consumed yet: its replay's copy waits in the retry topic
    replayed(b, "rebuilt-waiting", 2500, 5, consumed=False)
    return b


WANT = {
    "rebuilt-untagged": (V.DELIVERED, [V.REPLAYED], RETRY),
    "rebuilt-tagged": (V.DELIVERED, [V.REPLAYED], RETRY),
    "rebuilt-waiting": (V.PENDING_IN_BROKER, [V.REPLAYED], RETRY),
    # its replay's receipt carries no replay_run (no msgtrace-replay header read): a second receipt
    "lost-then-replayed": (V.DELIVERED, [V.REDELIVERED, V.REPLAYED], TOPIC),
    "lost-replay-lost": (V.LOST_IN_CONSUMER, [V.REDELIVERED, V.REPLAYED], TOPIC),
}


@pytest.mark.parametrize("by_message", [True, False])
@pytest.mark.parametrize("groups", [None, ("g1",)])
def test_replays_judged_with_all_their_events(store, tmp_path, monkeypatch, by_message, groups):
    store.insert_events(replay_story().events)
    monkeypatch.setattr(passes, "MSG_SCAN", by_message)
    ids = tmp_path / "outbox.txt"
    ids.write_text("\n".join(["plain-1", "plain-2", *WANT]) + "\n")
    res = reconcile(store, T0, T0 + HOUR, now_us=T0 + 2 * HOUR, groups=groups, write=False,
                    expected=ExpectedSource(path=str(ids)))
    rows = {r.msg_id: r for r in res.rows if r.consumer_group == "g1"}
    assert {m: (r.verdict, sorted(r.flags), r.topic) for m, r in rows.items()} == WANT, \
        {m: (r.verdict, r.flags, r.topic, r.evidence) for m, r in rows.items()}
    assert res.summary[V.DELIVERED] == 2 + 3  # the plain two are counted, never listed
    # the business topic on the verdict row; where the replay went, in its evidence
    assert "replayed by run run-1" in rows["lost-then-replayed"].evidence
    assert f"to {RETRY}: sent, broker_acked" in rows["lost-then-replayed"].evidence
    assert rows["rebuilt-waiting"].evidence.startswith(f"broker_acked at {RETRY}/0@5")
    assert "offset_committed" in rows["lost-replay-lost"].evidence and "replayed by run run-1" in \
        rows["lost-replay-lost"].evidence
    # trace-msg's judge agrees
    for m, (verdict, flags, topic) in WANT.items():
        [v] = [v for v in judge_message(store, m, ("g1",), now_us=T0 + 2 * HOUR)
               if v.consumer_group == "g1"]
        assert (v.verdict, sorted(v.flags), v.topic) == (verdict, flags, topic), (m, v)


def test_a_rebuilt_replay_with_one_event_per_stage_is_listed_by_the_message_pass(store, monkeypatch):
    """Pass 1 by message counts a message with one event per stage as plain; a replayed one never is."""
    b = Builder()
    for i in range(3):
        b.produced(f"plain-{i}", i, 0, i)
        b.consumed(f"plain-{i}", 5 + i, "g1", 0, i)
    replayed(b, "rebuilt-untagged", 2000, 0)
    store.insert_events(b.events)
    monkeypatch.setattr(passes, "MSG_SCAN", True)
    for groups in (None, ("g1",)):
        res = reconcile(store, T0, T0 + HOUR, now_us=T0 + 2 * HOUR, groups=groups, write=False)
        assert [(r.msg_id, r.verdict, r.flags) for r in res.rows] == [("rebuilt-untagged", V.DELIVERED,
                                                                        [V.REPLAYED])], groups
        assert res.summary == {V.DELIVERED: 4}
