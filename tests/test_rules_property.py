"""The rules table is one source of truth: SQL and Python must agree on any history.

Hypothesis generates message histories (retries, failures, rollbacks, replays, several groups) and
then damages them as the real world does: events lost (gaps), delivered twice by the collector
(duplicates, same event_id), clocks skewed (reordered). On chDB and on the 18.16 server (`store`):

* per message, pass 2's SQL (reconcile_pairs.sql) and the Python facts give the same facts, the
  same verdict, flags, stopped_at and evidence (:func:`test_pair_facts_sql_equals_python`);
* over a window of such messages, the whole reconcile (pass 1 by message or per pair, pass 2,
  broker and consumer evidence) gives every pair the verdict trace-msg's judge gives it
  (:func:`test_reconcile_equals_the_one_message_judge`).
"""
from __future__ import annotations

import itertools
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracer import verdicts as V
from tracer.analysis import passes
from tracer.analysis import rules as R
from tracer.analysis.facts import pairs_from_events
from tracer.analysis.judge import judge_message
from tracer.analysis.reconcile import reconcile
from tracer.analysis.result import Verdict
from tracer.events import Event

T0 = 1_795_219_200_000_000
DAY = 86_400_000_000
MS = 1000
_runs = itertools.count(1)
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def history(draw: st.DrawFn, msg_id: str, topic: str, t0: int) -> list[Event]:
    """One message's events: a story, then lost, duplicated and skewed events."""
    story: list[tuple[str, dict]] = []
    part = draw(st.integers(0, 1))
    off = draw(st.integers(0, 6))
    half = {"attrs": {"rocketmq.half": "true", "rocketmq.transaction_id": f"tx-{msg_id}"}} \
        if draw(st.integers(0, 3)) == 0 else {}  # a RocketMQ half message: unacked names its transaction
    for attempt in range(draw(st.integers(0, 2))):
        story.append(("sent", half))
        outcome = draw(st.sampled_from(["acked", "failed", "both", "none", "rolled_back"]))
        if outcome in ("failed", "both"):
            story.append(("send_failed", {"error": draw(st.sampled_from(["Timeout", "it's \\down"]))}))
        if outcome in ("acked", "both", "rolled_back"):
            story.append(("broker_acked", {"partition": part, "offset": off + attempt}))
        if outcome == "rolled_back":
            story.append(("rolled_back", {}))
    for g in draw(st.lists(st.sampled_from(["g1", "g2", None]), max_size=2, unique=True)):
        c = {"consumer_group": g, "partition": part, "offset": off}
        for _ in range(draw(st.integers(0, 2))):
            story.append(("received", c))
        if draw(st.booleans()):
            story.append(("business_failed", {**c, "error": "boom"}))
        if draw(st.integers(0, 4)) == 0:
            story.append(("dead_lettered", c))
        for _ in range(draw(st.integers(0, 2))):
            story.append(("business_done", c))
        if draw(st.booleans()):
            story.append(("offset_committed", {**c, "offset": off + draw(st.integers(0, 2))}))
    if draw(st.integers(0, 3)) == 0:  # a replay (msgtrace replay) of the message
        run = {"attrs": {"replay_run": "r" + draw(st.sampled_from("12"))}}
        if draw(st.booleans()):  # to a retry topic: the pair keeps the business topic, the retry is evidence
            run["topic"] = topic + ".retry"
        story.append(("sent", run))
        story.append((draw(st.sampled_from(["broker_acked", "send_failed"])), {**run, "partition": part,
                                                                               "offset": off + 5}))
        if draw(st.booleans()):
            story.append(("received", {**run, "consumer_group": "g1", "partition": part, "offset": off + 5}))
            story.append(("business_done", {**run, "consumer_group": "g1"}))
    events = []
    for i, (stage, kw) in enumerate(story):
        if draw(st.integers(0, 5)) == 0:
            continue  # lost by the audit
        skew = draw(st.integers(-30, 30)) * MS  # clock skew: may put a stage before an earlier one
        e = Event(msg_id=msg_id, stage=stage, ts_us=t0 + i * 10 * MS + skew, service="s", host="h",
                  pid=1, **{"topic": topic, **kw})
        events.append(e)
        if draw(st.integers(0, 6)) == 0:
            events.append(Event(**e.to_dict()))  # the collector stored it twice (same event_id)
    return events


@st.composite
def window_of(draw: st.DrawFn, n: int) -> tuple[str, int, list[Event]]:
    run = next(_runs)
    topic = f"t{run}.{uuid.uuid4().hex[:6]}"
    t0 = T0 + run * 3 * DAY  # each example in its own days: evidence queries never see another's
    events: list[Event] = []
    for k in range(n):
        events += draw(history(f"m{run}-{k}", topic, t0 + k * 1000 * MS))
    return topic, t0, events


def _facts_view(f):
    return {k: getattr(f, k) for k in f.__slots__ if k != "cut"}


@SETTINGS
@given(data=window_of(3))
def test_pair_facts_sql_equals_python(store, data):
    topic, t0, events = data
    store.insert_events(events)
    groups = ("g1", "g2", "ghost")
    diffs = []
    with store.session():
        for m in sorted({e.msg_id for e in events}):
            evs = store.select_events(m)
            py = {f.consumer_group: f for f in pairs_from_events(m, evs, groups, t0)}
            decided = {d.facts.consumer_group: d for d in passes.one_message(store, m, groups, t0)}
            sql = {g: d.facts for g, d in decided.items()}
            assert set(py) == set(sql), (m, set(py), set(sql))
            for g in py:
                a, b = py[g], sql[g]
                if _facts_view(a) != _facts_view(b):
                    diffs.append(f"{m}/{g} facts: python {_facts_view(a)} != sql {_facts_view(b)}")
                va = Verdict.judge(a)  # the rules in Python
                vb = Verdict.judge(b, (decided[g].verdict, decided[g].flags))  # the SQL generated from them
                if (va.verdict, va.flags, va.stopped_at, va.evidence) != (vb.verdict, vb.flags, vb.stopped_at,
                                                                          vb.evidence):
                    diffs.append(f"{m}/{g}: python {va} != sql {vb}")
    assert not diffs, "\n".join(diffs)


@SETTINGS
@given(data=window_of(6), by_message=st.booleans())
def test_reconcile_equals_the_one_message_judge(store, data, by_message, monkeypatch):
    topic, t0, events = data
    store.insert_events(events)
    monkeypatch.setattr(passes, "MSG_SCAN", by_message)
    now = t0 + 2 * DAY
    res = reconcile(store, t0 - 60_000 * MS, t0 + 3_600_000 * MS, grace_s=600, now_us=now, lookback_s=3600)
    got = {(v.msg_id, v.consumer_group): v.verdict for v in res.rows}
    plain = sum(n for (v, t, g), n in res.counts.items() if v == V.DELIVERED) - \
        sum(1 for v in res.rows if v.verdict == V.DELIVERED)
    judged_plain = 0
    diffs = []
    with store.session():
        for m in sorted({e.msg_id for e in events}):
            for v in judge_message(store, m, now_us=now, lookback_s=3600):
                key = (m, v.consumer_group)
                if key not in got:
                    if v.verdict == V.DELIVERED and not v.flags:
                        judged_plain += 1
                        continue
                    diffs.append(f"{key}: reconcile counted it plainly delivered, trace-msg says {v.verdict} "
                                 f"{v.flags}")
                elif got[key] != v.verdict:
                    diffs.append(f"{key}: reconcile {got[key]}, trace-msg {v.verdict} ({v.evidence})")
    assert not diffs, "\n".join(diffs)
    assert plain == judged_plain


def test_generated_sql_names_every_rule_and_names_are_checked():
    """The generated decision names each verdict of the table; a name SQL returns is checked."""
    sql = R.verdict_sql(passes.PAIR_NAMES)
    for r in R.RULES + R.FLAG_RULES:
        assert f"'{r.verdict}'" in sql or f"'{r.verdict}'" in R.flags_sql(passes.PAIR_NAMES)
    assert R.checked(V.ROLLED_BACK, [V.REPLAYED]) == (V.ROLLED_BACK, [V.REPLAYED])
    with pytest.raises(ValueError):
        R.checked("no_such_verdict", [])
    with pytest.raises(ValueError):
        R.checked(V.DELIVERED, ["no_such_flag"])
