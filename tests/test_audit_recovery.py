"""The audit broker loses what it had acknowledged: the emitters heal it on their own, or the audit
says ``audit_gap`` and ``msgtrace ship --repair`` closes the gap (issue 18, issue 15 item 2).

Real parts: an order service and a red-packet consumer group traced through the audit topic of a
memory-only Tansu broker (their shippers are real processes), real collector processes, the store
on chDB and on the 18.16 server (two collector groups read the same audit topic, so each scenario
runs once and is judged on both engines). Block A of orders is sent, processed by the group and
collected; block B is sent, processed and shipped (the audit broker acknowledged it) but not yet
collected when the audit broker restarts empty -- the test does not recreate the audit topic: the
emitters must notice; block C comes after the restart. One expected id was really never sent; the
expected ids carry the time each order was paid.

- ``healed``: default settings (shipped segments retained, the shipper compares the topic with what
  it acknowledged): block B comes back by itself, every verdict is exact, the audit gap-free; a
  collector SIGKILLed at three steps in the same run changes nothing;
- ``repaired``: automatic recovery off (``recover=False``): audit-health reports the emitters' gaps
  with their time ranges, reconcile says ``audit_gap`` for block B (never a loss; the never-sent id
  outside the gap stays ``never_sent``) and exits 1 for the real loss, 2 ("audit incomplete")
  without it; ``msgtrace ship --repair`` on each spool dir re-sends exactly the missing seq numbers,
  after which audit-health is clean and every verdict exact.

Recovery disabled entirely (retention 0) is tests/faults/test_audit_broker_lost.py.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "faults"))
from faultkit import child_env, collector_cmd, drain, integrity, names, now_us, unavailable, verdicts  # noqa: E402
from kafka import KafkaConsumer, KafkaProducer  # noqa: E402

from collectors.testing import create_topic  # noqa: E402
from tracer import Tracer  # noqa: E402
from tracer import verdicts as V  # noqa: E402
from tracer.analysis.expected import ExpectedSource  # noqa: E402
from tracer.localsvc import ServiceError, TansuBroker, wait_until  # noqa: E402
from tracer.store import Store  # noqa: E402

BLOCK = 30
NEVER_OFFSET_S = 900  # the never-sent id was due this long before block A: far outside any gap


@dataclass
class Run:
    audit: TansuBroker
    topic: str
    urls: dict[str, str]
    groups: dict[str, str]       # engine -> collector group
    spools: dict[str, Path]      # service -> spool dir
    blocks: dict[str, list[str]]
    times: dict[str, float]      # msg_id -> when it was paid (s)
    never: str
    group: str = "red-packet"     # the business consumer group (one per scenario: Tansu may wedge a reused one)
    recorded: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)  # emitter -> block B events the broker lost
    t0: int = 0
    tmp: Path = Path()
    kills: list[str] = field(default_factory=list)

    def expected(self, with_never: bool = True) -> ExpectedSource:
        path = self.tmp / ("expected.csv" if with_never else "expected-blocks.csv")
        rows = [(m, self.times[m]) for b in self.blocks.values() for m in b]
        if with_never:
            rows.append((self.never, self.times[self.never]))
        path.write_text("msg_id,paid_at\n" + "".join(f"{m},{t:.6f}\n" for m, t in rows), encoding="utf-8")
        return ExpectedSource(path=str(path), time_column="paid_at")

    def collect(self) -> None:
        for engine, url in self.urls.items():
            drain(self.audit.bootstrap, self.topic, url, self.groups[engine])

    def judged(self, url: str, **kw):  # noqa: ANN003
        with Store(url) as store:
            return verdicts(store, self.t0, groups=[self.group], **kw)


def _block(tag: str, producer, consumer, red: Tracer, business: str, got: list, times: dict) -> list[str]:
    ids = [f"order-{tag}-{uuid.uuid4().hex[:6]}-{i}:paid" for i in range(BLOCK)]
    for m in ids:
        times[m] = time.time()
        producer.send(business, b"paid", msg_id=m).get(timeout=30)
    want = len(got) + BLOCK
    deadline = time.monotonic() + 60
    while len(got) < want and time.monotonic() < deadline:
        recs = consumer.poll(timeout_ms=300)
        for batch in recs.values():
            for r in batch:
                with red.processing(r):
                    got.append(r)
        if recs:
            consumer.commit()
    assert len(got) >= want, f"block {tag}: consumed {len(got)} of {want}"
    return ids


def _scenario(request, kafka_bootstrap, tmp: Path, **tracer_kw) -> Run:  # -> a generator's body
    urls = {"chdb": f"chdb://{tmp / 'store'}"}
    server = request.getfixturevalue("clickhouse_server")
    if server is not None:
        urls["clickhouse"] = server.url(f"t_{uuid.uuid4().hex[:12]}")
    try:
        audit = TansuBroker().start()
    except (ServiceError, TimeoutError, OSError) as e:
        unavailable("Tansu broker", e)
    topic, cgroup = names()
    business = f"orders-{topic[-8:]}"
    create_topic(kafka_bootstrap, business, 1)
    create_topic(audit.bootstrap, topic, 1)
    run = Run(audit, topic, urls, {e: f"{cgroup}-{e}" for e in urls}, {"orders": tmp / "spool-orders",
              "red-packet": tmp / "spool-red"}, {}, {}, f"order-never-{topic[-8:]}:paid",
              group=f"red-packet-{topic[-8:]}", tmp=tmp)
    orders = Tracer(service="order-service", bootstrap=audit.bootstrap, audit_topic=topic,
                    spool_dir=str(run.spools["orders"]), verify_interval=1.0, **tracer_kw)
    red = Tracer(service="red-packet", bootstrap=audit.bootstrap, audit_topic=topic,
                 spool_dir=str(run.spools["red-packet"]), verify_interval=1.0, **tracer_kw)
    producer = orders.wrap_producer(KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=0))
    consumer = red.wrap_consumer(KafkaConsumer(business, bootstrap_servers=kafka_bootstrap, group_id=run.group,
                                               enable_auto_commit=False, auto_offset_reset="earliest",
                                               session_timeout_ms=6000, heartbeat_interval_ms=1000))
    run._parts = (orders, red, producer, consumer)  # type: ignore[attr-defined]
    got: list = []
    run.t0 = now_us()
    run.times[run.never] = time.time() - NEVER_OFFSET_S
    run.blocks["A"] = _block("A", producer, consumer, red, business, got, run.times)
    assert orders.flush(60) and red.flush(60)
    run.collect()
    before_b = {t.stats["emitter_id"]: t.stats["recorded"] for t in (orders, red)}
    run.blocks["B"] = _block("B", producer, consumer, red, business, got, run.times)
    assert orders.flush(60) and red.flush(60)  # shipped: the audit broker acknowledged block B
    after_b = {t.stats["emitter_id"]: t.stats["recorded"] for t in (orders, red)}
    audit.restart()  # ... and lost it, with the collectors' offsets (and the topic itself)
    run.blocks["C"] = _block("C", producer, consumer, red, business, got, run.times)
    assert orders.flush(90) and red.flush(90), (orders.stats, red.stats)
    run.recorded = {t.stats["emitter_id"]: t.stats["recorded"] for t in (orders, red)}
    run.lost = {e: after_b[e] - before_b[e] for e in run.recorded}
    return run


def _teardown(run: Run) -> None:
    orders, red, producer, consumer = run._parts  # type: ignore[attr-defined]
    try:
        consumer.close(autocommit=False)
    except Exception:  # noqa: BLE001, S110 (a consumer whose broker may be gone)
        pass
    producer.close(5)
    orders.close(5)
    red.close(5)
    run.audit.stop()
    shutil.rmtree(run.audit.workdir, ignore_errors=True)


def _kill_collectors(run: Run) -> None:
    """Collector processes on the chDB store SIGKILLed after a decode, after a write (offsets not
    committed), after a commit, one after the other, while the re-shipped records wait in the topic."""
    marker = run.tmp / "kills.txt"
    for step in ("decode:1", "write:1", "commit:1"):
        p = subprocess.run(collector_cmd(run.audit.bootstrap, run.topic, run.urls["chdb"], run.groups["chdb"],
                                         "--crash", step, "--marker", str(marker)),
                           capture_output=True, env=child_env(), timeout=120, check=False)
        assert p.returncode == -9, (step, p.returncode, p.stdout.decode(errors="replace")[-2000:])
        assert marker.read_text().splitlines()[-1] == step.replace(":", " ")
        run.kills.append(step)


def _stored_whole(run: Run) -> bool:
    run.collect()
    return all(_whole(integrity(url, list(run.recorded)), run.recorded) for url in run.urls.values())


def _whole(got, recorded: dict[str, int]) -> bool:
    return all(e in got.emitters and (got.emitters[e].lo, got.emitters[e].hi, got.emitters[e].missing) == (1, n, 0)
               for e, n in recorded.items())


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True, text=True, env=child_env(),
                          timeout=timeout, check=False)


# --- healed: the emitters ship again what the audit broker lost -------------------------------------

@pytest.fixture(scope="module")
def healed(request, kafka_bootstrap, tmp_path_factory):
    run = _scenario(request, kafka_bootstrap, tmp_path_factory.mktemp("audit-healed"))
    try:
        _kill_collectors(run)
        wait_until(lambda: _stored_whole(run), 120, "every recorded event to be stored again", interval=1)
        yield run
    finally:
        _teardown(run)


@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_the_emitters_ship_again_what_the_audit_broker_lost(healed):
    run = healed
    orders, red, _, _ = run._parts  # type: ignore[attr-defined]
    assert all(n > 0 for n in run.lost.values())  # block B really was acknowledged, then lost
    for t in (orders, red):
        s = t.stats
        assert s["audit_losses"] > 0 and s["reshipped"] >= run.lost[s["emitter_id"]], s
        assert s["dropped"] == 0 and s["reship_lost"] == 0
    assert run.kills == ["decode:1", "write:1", "commit:1"]
    for url in run.urls.values():
        got = integrity(url, list(run.recorded))
        got.check(run.recorded)  # 1..n of each emitter, each once, whatever was shipped twice


@pytest.mark.kafka
@pytest.mark.timeout(300)
@pytest.mark.parametrize("engine", ["chdb", pytest.param("clickhouse", marks=pytest.mark.clickhouse)])
def test_after_healing_every_verdict_is_exact(healed, engine):
    run = healed
    if engine not in run.urls:
        pytest.skip("an external ClickHouse URL: no server of the session's own")
    got, res = run.judged(run.urls[engine], expected=run.expected())
    assert {k: (v.verdict, v.flags) for k, v in got.items()} == {(run.never, run.group): (V.NEVER_SENT, [])}
    assert not res.seq_gaps and res.audit_complete
    assert res.summary[V.DELIVERED] == 3 * BLOCK


# --- repaired: no automatic recovery; the audit says so, and ship --repair closes the gap ---------------

@pytest.fixture(scope="module")
def repaired(request, kafka_bootstrap, tmp_path_factory):
    run = _scenario(request, kafka_bootstrap, tmp_path_factory.mktemp("audit-repaired"), recover=False)
    try:
        run.collect()
        out = {"before": {}, "after": {}}
        for engine, url in run.urls.items():
            got = integrity(url, list(run.recorded))
            out["before"][engine] = {
                "integrity": got,
                "health": _cli("audit-health", "--store", url, "--spool", str(run.spools["orders"]), "--json"),
                "verdicts": run.judged(url, expected=run.expected()),
                "cli": _cli("reconcile", "--store", url, "--from", _iso(run.t0), "--to", _iso(now_us() + 10**6),
                            "--grace", "0", "--group", run.group, "--expected", str(run.tmp / "expected.csv"),
                            "--expected-time-column", "paid_at", "--json", "--no-write"),
                "cli_blocks": _cli("reconcile", "--store", url, "--from", _iso(run.t0),
                                   "--to", _iso(now_us() + 10**6), "--grace", "0", "--group", run.group,
                                   "--expected", str(run.expected(with_never=False).path),
                                   "--expected-time-column", "paid_at", "--json", "--no-write"),
            }
        run.repairs = {}  # type: ignore[attr-defined]
        for service, spool in run.spools.items():
            run.repairs[service] = _cli("ship", "--repair", "--spool", str(spool), "--store", run.urls["chdb"],
                                        "--bootstrap", run.audit.bootstrap, "--audit-topic", run.topic, "--json")
        wait_until(lambda: _stored_whole(run), 120, "the repaired events to be stored", interval=1)
        for engine, url in run.urls.items():
            out["after"][engine] = {
                "health": _cli("audit-health", "--store", url, "--spool", str(run.spools["orders"]), "--json"),
                "verdicts": run.judged(url, expected=run.expected()),
            }
        run.out = out  # type: ignore[attr-defined]
        yield run
    finally:
        _teardown(run)


def _iso(us: int) -> str:
    from tracer.analysis.evidence import fmt_us

    return fmt_us(us)


ENGINES = ["chdb", pytest.param("clickhouse", marks=pytest.mark.clickhouse)]


@pytest.mark.kafka
@pytest.mark.timeout(400)
@pytest.mark.parametrize("engine", ENGINES)
def test_without_recovery_the_lost_block_is_audit_gap_never_a_loss(repaired, engine):
    run = repaired
    if engine not in run.urls:
        pytest.skip("an external ClickHouse URL: no server of the session's own")
    before = run.out["before"][engine]  # type: ignore[attr-defined]
    stored = before["integrity"]
    for emitter, n in run.recorded.items():
        s = stored.emitters[emitter]
        assert (s.lo, s.hi, s.missing) == (1, n, run.lost[emitter])
    got, res = before["verdicts"]
    assert {g.emitter_id: g.missing for g in res.seq_gaps} == run.lost
    for m in run.blocks["A"] + run.blocks["C"]:
        assert (m, run.group) not in got, got.get((m, run.group))  # plainly delivered
    for m in run.blocks["B"]:
        v = got[(m, run.group)]
        assert v.verdict == V.AUDIT_GAP and v.decided_by == "producer_seq_gap", (m, v)
        assert "msgtrace ship --repair" in v.evidence and "order-service" in v.evidence
    assert got[(run.never, run.group)].verdict == V.NEVER_SENT  # outside the gap's time range: a real loss
    assert res.audit_gaps == BLOCK and res.lost == 1 and not res.audit_complete
    # the command line: exit 1 for the real loss; without it, 2 and "audit incomplete", never 1
    cli = before["cli"]
    assert cli.returncode == 1, cli.stderr
    doc = json.loads(cli.stdout)
    assert doc["summary"][V.AUDIT_GAP] == BLOCK and doc["audit"]["complete"] is False and doc["lost"] == 1
    blocks = before["cli_blocks"]
    assert blocks.returncode == 2 and "audit incomplete" in blocks.stderr, (blocks.returncode, blocks.stderr)
    assert json.loads(blocks.stdout)["lost"] == 0


@pytest.mark.kafka
@pytest.mark.timeout(400)
@pytest.mark.parametrize("engine", ENGINES)
def test_audit_health_shows_the_gaps_and_ship_repair_closes_them(repaired, engine):
    run = repaired
    if engine not in run.urls:
        pytest.skip("an external ClickHouse URL: no server of the session's own")
    health = run.out["before"][engine]["health"]  # type: ignore[attr-defined]
    assert health.returncode == 2, health.stderr
    doc = json.loads(health.stdout)
    assert doc["complete"] is False
    rows = {e["emitter_id"]: e for e in doc["emitters"]}
    orders_id = next(e for e, r in rows.items() if r["service"] == "order-service")
    o = rows[orders_id]
    assert o["missing"] == run.lost[orders_id] and len(o["gaps"]) == 1
    gap = o["gaps"][0]
    b_times = [run.times[m] for m in run.blocks["B"]]
    assert gap["after"] < _iso(int(min(b_times) * 1e6)) and gap["before"] > _iso(int(max(b_times) * 1e6))
    assert o["spool"]["state"] == "running" and o["recorded"] == run.recorded[orders_id]
    assert o["shipped"] == run.recorded[orders_id] and o["dropped"] == 0
    assert {s["service"] for s in doc["services"]} == {"order-service", "red-packet"}
    for service, p in run.repairs.items():  # type: ignore[attr-defined]
        assert p.returncode == 0, (service, p.stderr)
        rep = json.loads(p.stdout.strip().splitlines()[-1])
        assert rep["complete"] is True and rep["sent"] == sum(
            run.lost[e["emitter_id"]] for e in rep["emitters"]), rep
    after = run.out["after"][engine]  # type: ignore[attr-defined]
    assert after["health"].returncode == 0, after["health"].stdout[-2000:]
    got, res = after["verdicts"]
    assert {k: v.verdict for k, v in got.items()} == {(run.never, run.group): V.NEVER_SENT}
    assert res.audit_complete and res.summary[V.DELIVERED] == 3 * BLOCK
