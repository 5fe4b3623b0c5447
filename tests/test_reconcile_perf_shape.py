"""The cheaper forms of the reconciler's evidence queries give the answers of the exact ones.

benchmarks/results/reconcile.md: the latest acks per partition are found without reading msg_id
(reconcile_frontier_latest.sql leaves out the pending messages' acks by their time, then
reconcile_frontier_acks.sql reads the few acks at the times found), and the seq-gap scan counts distinct
seq numbers once over the whole scan and once after the cut (reconcile_seq_gaps.sql), falling back to
the exact two-count query (reconcile_seq_gaps_exact.sql) where the numbers before and after the cut
interleave. These tests build the cases where each shortcut could go wrong and check the answers
against the exact queries, on chDB and ClickHouse 18.16 (``store`` fixture).
"""
from __future__ import annotations

from tests.test_reconcile import HOUR, MS, T0, Builder, _view
from tracer import verdicts as V
from tracer.analysis import gaps
from tracer.analysis.reconcile import reconcile
from tracer.analysis.window import Window


def test_an_ack_hidden_by_a_pending_messages_ack_time_is_not_missed(store, monkeypatch):
    """A received message acked at the very microsecond of a pending one, later than every other ack
    on the partition: leaving acks out by time hides it, so the shortcut must give up and the full
    reconcile_frontier.sql decide, with the same verdicts and evidence as the per-pair path."""
    import tracer.analysis.broker as B
    import tracer.analysis.passes as P

    b = Builder()
    b.produced("lost-a", 0, 0, 0)         # never received: passed over
    b.produced("next-a", 10, 0, 1)
    b.consumed("next-a", 15, "g1", 0, 1)
    b.produced("late-lost", 20, 0, 2)     # never received, acked at 21 ms
    b.add("twin", "sent", 20.5)
    b.add("twin", "broker_acked", 21, p=0, o=3)  # the same ack time as late-lost's
    b.consumed("twin", 25, "g1", 0, 3)
    store.insert_events(b.events)
    calls: list[str] = []
    orig = B.render
    monkeypatch.setattr(B, "render", lambda name, **kw: calls.append(name) or orig(name, **kw))
    args = dict(grace_s=600, now_us=T0 + 10 * HOUR, write=False, lookback_s=3600)
    fast = reconcile(store, T0, T0 + HOUR, **args)
    used = list(calls)
    monkeypatch.setattr(P, "MSG_SCAN", False)
    slow = reconcile(store, T0, T0 + HOUR, **args)
    assert _view(fast) == _view(slow)
    lost = {r.msg_id: r for r in fast.rows if r.verdict == V.LOST_IN_BROKER}
    assert lost["lost-a"].decided_by == "later_acked_received" and "'twin'" in lost["lost-a"].evidence
    assert "reconcile_frontier_latest" in used and "reconcile_frontier_acks" in used
    assert "reconcile_frontier" in used, used  # the shortcut gave up


def test_the_latest_acks_shortcut_answers_when_nothing_is_hidden(store, monkeypatch):
    """Pending messages' ack times later than the partition's answer are read again; when they hold
    only pending messages the shortcut's answer stands (no reconcile_frontier.sql)."""
    import tracer.analysis.broker as B

    b = Builder()
    b.produced("lost-a", 0, 0, 0)
    b.produced("next-a", 10, 0, 1)
    b.consumed("next-a", 15, "g1", 0, 1)
    b.produced("tail-lost", 20, 0, 2)     # pending, acked after the answer (next-a)
    store.insert_events(b.events)
    calls: list[str] = []
    orig = B.render
    monkeypatch.setattr(B, "render", lambda name, **kw: calls.append(name) or orig(name, **kw))
    res = reconcile(store, T0, T0 + HOUR, grace_s=600, now_us=T0 + 10 * HOUR, write=False, lookback_s=3600)
    by = {r.msg_id: r for r in res.rows}
    assert by["lost-a"].verdict == V.LOST_IN_BROKER and "'next-a'" in by["lost-a"].evidence
    assert by["tail-lost"].verdict == V.PENDING_IN_BROKER
    assert "reconcile_frontier_acks" in calls and "reconcile_frontier" not in calls, calls


def test_seq_gaps_one_distinct_count_and_the_exact_fallback(store, monkeypatch):
    """e1: a hole before the cut, later numbers after it (one count suffices); e2: a number stamped
    after the cut inside the window's range (interleaved: counted again exactly); e3: a duplicated
    event hiding a hole from a row count; e4: no hole. The answers are those of the exact query."""
    b = Builder()
    win_ms = HOUR // MS
    cut_ms = win_ms + 600_000
    for s in (1, 2, 3, 4, 6, 7, 8, 9, 10):
        b.add(f"m1-{s}", "sent", s, emitter="e1", seq=s)
    for s in (11, 12):
        b.add(f"m1-{s}", "sent", cut_ms + s, emitter="e1", seq=s)
    for s in (1, 2, 4, 6):
        b.add(f"m2-{s}", "sent", s, emitter="e2", seq=s)
    for s in (3, 7):
        b.add(f"m2-{s}", "sent", cut_ms + s, emitter="e2", seq=s)
    for s in (1, 2, 4):
        b.add(f"m3-{s}", "sent", s, emitter="e3", seq=s)
    b.events.append(b.events[-2])  # seq 2 stored twice (same event_id)
    for s in (1, 2, 3):
        b.add(f"m4-{s}", "sent", s, emitter="e4", seq=s)
    store.insert_events(b.events)
    window = Window.build(T0, T0 + HOUR, 600, 3600, T0 + 10 * HOUR)
    asked: list[list[str]] = []
    orig = store.query

    def spy(sql, params=None, **kw):
        if params and "emitters" in params:
            asked.append(list(params["emitters"]))
        return orig(sql, params, **kw)

    monkeypatch.setattr(store, "query", spy)
    found = {g.emitter_id: (g.lo, g.hi, g.n, g.missing) for g in gaps.seq_gaps(store, window)}
    assert found == {"e1": (1, 10, 9, 1), "e2": (1, 6, 4, 2), "e3": (1, 4, 3, 1)}
    assert asked == [["e2"]]  # only the interleaved emitter was counted again
