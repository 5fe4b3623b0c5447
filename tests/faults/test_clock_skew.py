"""Clock skew of minutes between services.

The red-packet consumer runs in a process of its own whose clock, as msgtrace reads it, is five
minutes behind the order service's (the emitter's clock, ``tracer.sdk.emitter._time_ns``, shifted in
that process: a host with a wrong clock). So every received / committed / business event is stamped
minutes before the ``sent`` that caused it. One order's handler fails and the error is swallowed
(then committed): ``failed_and_committed``; the others are delivered.

Claims: the verdicts are what they are without skew (both engines); ``trace-msg`` orders the
timeline by causality where offsets and seqs allow (sent, broker_acked before received ...), and
shows the skew. The scenario runs once per engine (a module fixture).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass

import orjson
import pytest
from faultkit import child_env, now_us, verdicts
from kafka import KafkaProducer

from collectors.testing import create_topic
from tracer import Tracer
from tracer import verdicts as V
from tracer.store import Store

SKEW_S = 300
GROUP = "red-packet"
N = 20
FAILING = 3

CONSUMER = textwrap.dedent("""
    import sys, time
    import tracer.sdk.emitter as emitter
    _real = time.time_ns
    emitter._time_ns = lambda: _real() - int(sys.argv[4]) * 1_000_000_000   # this host's clock is behind
    from kafka import KafkaConsumer
    from tracer import Tracer
    bootstrap, topic, url, _, n, failing, spool = sys.argv[1:8]
    t = Tracer(service="red-packet", store=url, spool_dir=spool)
    c = t.wrap_consumer(KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id="red-packet",
                                      enable_auto_commit=False, auto_offset_reset="earliest",
                                      session_timeout_ms=6000, heartbeat_interval_ms=1000))
    got = 0
    deadline = time.monotonic() + 60
    while got < int(n) and time.monotonic() < deadline:
        recs = c.poll(timeout_ms=300)
        for batch in recs.values():
            for r in batch:
                got += 1
                try:
                    with t.processing(r):
                        if r.value == failing.encode():
                            raise RuntimeError("red packet service: payment gateway timeout")
                except RuntimeError:
                    pass   # the seeds' mistake: the error is swallowed and the offset committed
        if recs:
            c.commit()
    c.close(autocommit=False)
    assert t.close(60), t.stats
    print(got, flush=True)
""")


@dataclass
class Skewed:
    url: str
    ids: list[str]
    t0: int


@pytest.fixture(scope="module", params=["chdb", pytest.param("clickhouse", marks=pytest.mark.clickhouse)])
def skewed(request, kafka_bootstrap, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("skew")
    if request.param == "chdb":
        url = f"chdb://{tmp / 'store'}"
    else:
        server = request.getfixturevalue("clickhouse_server")
        if server is None:
            pytest.skip("an external ClickHouse URL: this scenario needs the session's own server")
        url = server.url(f"t_{uuid.uuid4().hex[:12]}")
    topic = f"orders-skew-{uuid.uuid4().hex[:8]}"
    create_topic(kafka_bootstrap, topic, 1)
    t0 = now_us()
    orders = Tracer(service="order-service", store=url, spool_dir=str(tmp / "spool-orders"))
    producer = orders.wrap_producer(KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=0))
    ids = [f"{topic}:order-{i}" for i in range(N)]
    try:
        for i, m in enumerate(ids):
            producer.send(topic, f"order-{i}".encode(), msg_id=m).get(timeout=30)
        producer.close(5)
        assert orders.flush(60), orders.stats
    finally:
        orders.close(30)
    p = subprocess.run([sys.executable, "-c", CONSUMER, kafka_bootstrap, topic, url, str(SKEW_S), str(N),
                        f"order-{FAILING}", str(tmp / "spool-red")], capture_output=True, text=True,
                       env=child_env(), timeout=120, check=False)
    assert p.returncode == 0 and p.stdout.strip() == str(N), p.stderr[-3000:]
    yield Skewed(url, ids, t0)
    shutil.rmtree(tmp, ignore_errors=True)


def trace_msg(url: str, msg_id: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer", "trace-msg", msg_id, "--store", url, *extra],
                          capture_output=True, text=True, env=child_env(), timeout=120, check=False)


@pytest.mark.kafka
@pytest.mark.timeout(240)
def test_the_skew_is_real_and_the_verdicts_are_unchanged(skewed):
    with Store(skewed.url) as store:
        events = store.select_events(skewed.ids[0])
        by_stage = {e.stage: e.ts_us for e in events}
        # the consumer's events are stamped minutes before the send that caused them
        assert by_stage["sent"] - by_stage["received"] > (SKEW_S - 30) * 1_000_000, by_stage
        for groups in (None, [GROUP]):  # groups found by the reconciler, and named by the SRE
            got, res = verdicts(store, skewed.t0, groups=groups)
            want = {(skewed.ids[FAILING], GROUP): V.FAILED_AND_COMMITTED}
            assert {k: v.verdict for k, v in got.items()} == want, (groups, {k: (v.verdict, v.evidence)
                                                                             for k, v in got.items()})
            assert res.summary == {V.DELIVERED: N - 1, V.FAILED_AND_COMMITTED: 1}, (groups, res.summary)


@pytest.mark.kafka
@pytest.mark.timeout(240)
def test_trace_msg_verdicts_unchanged_under_skew(skewed):
    ok = trace_msg(skewed.url, skewed.ids[0], "--json")
    assert ok.returncode == 0, ok.stderr
    assert [v["verdict"] for v in orjson.loads(ok.stdout)["verdicts"]] == [V.DELIVERED]
    bad = trace_msg(skewed.url, skewed.ids[FAILING], "--json")
    assert bad.returncode == 1, bad.stderr
    assert [v["verdict"] for v in orjson.loads(bad.stdout)["verdicts"]] == [V.FAILED_AND_COMMITTED]


@pytest.mark.kafka
@pytest.mark.timeout(240)
def test_trace_msg_timeline_is_ordered_by_causality(skewed):
    out = trace_msg(skewed.url, skewed.ids[0], "--json")
    stages = [e["stage"] for e in orjson.loads(out.stdout)["events"]]
    pipeline = [s for s in ("sent", "broker_acked", "received", "business_done") if s in stages]
    assert pipeline == ["sent", "broker_acked", "received", "business_done"], stages
    assert [s for s in stages if s in pipeline] == pipeline, stages


@pytest.mark.kafka
@pytest.mark.timeout(240)
def test_trace_msg_shows_the_skew(skewed):
    text = trace_msg(skewed.url, skewed.ids[0]).stdout
    assert "skew" in text.lower(), text
    assert "consumer service red-packet@" in text and "behind order-service@" in text, text
    doc = orjson.loads(trace_msg(skewed.url, skewed.ids[0], "--json").stdout)
    assert {"msg_id", "verdicts", "events", "skew"} <= set(doc), sorted(doc)
    [skew] = doc["skew"]  # one clock behind the other, by at least the shift less the hop's latency
    assert skew["behind"].startswith("red-packet@") and skew["ahead"].startswith("order-service@"), skew
    assert SKEW_S - 30 < skew["at_least_s"] <= SKEW_S, skew
    assert skew["evidence"] in ("received stamped before broker_acked", "received stamped before sent"), skew
