"""The spool's disk full while the audit Kafka is down.

The spool lives on a 3 MiB tmpfs (mounted by the test; without mount rights, the emitter's own
``max_spool_bytes`` cap stands in for the disk). The audit broker is down, so nothing ships and
the spool fills the disk. A traced producer keeps sending business messages: no send may raise or
fail, every event is either recorded or counted in ``Tracer.stats``, and once the audit broker is
up the events that did not fit are exactly the seq gap the reconciler reports (on both engines:
the scenario runs once and is collected into chDB and into the 18.16 server).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass

import pytest
from faultkit import drain, integrity, names, now_us, unavailable, verdicts
from kafka import KafkaProducer

from collectors.testing import create_topic
from tracer import Tracer
from tracer.localsvc import ServiceError, TansuBroker, free_port, wait_until
from tracer.store import Store

CHUNK = 2_000
MAX_SENDS = 200_000


@dataclass
class Full:
    on_tmpfs: bool
    stats: dict          # Tracer.stats when the disk was full
    attempted: int       # events the hooks tried to record by then
    recorded: int
    lost: int            # events that did not fit (whatever counter they went to)
    t0: int
    urls: dict[str, str]


@pytest.fixture(scope="module")
def disk_full(kafka_bootstrap, clickhouse_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spool-full")
    mnt = tmp / "tmpfs"
    mnt.mkdir()
    on_tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                              capture_output=True, check=False).returncode == 0
    if on_tmpfs:
        spool, cap = str(mnt), {"segment_bytes": 512 << 10}
    else:  # no mount rights: the size cap is the full disk
        spool, cap = str(tmp / "spool"), {"max_spool_bytes": 2 << 20}
    audit_port = free_port()  # the audit broker is down at first
    audit_topic, group = names()
    business = f"orders-{audit_topic[-8:]}"
    create_topic(kafka_bootstrap, business, 1)
    t = Tracer(service="order-service", bootstrap=f"127.0.0.1:{audit_port}", audit_topic=audit_topic,
               spool_dir=spool, **cap)
    producer = t.wrap_producer(KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5))
    audit = None
    try:
        t0 = now_us()
        began = time.monotonic()
        sends = 0

        def burst(n: int) -> None:
            nonlocal sends
            futures = [producer.send(business, b"paid", msg_id=f"{business}:order-{i}")
                       for i in range(sends, sends + n)]
            sends += n
            producer.flush(60)
            assert all(fu.get(0).offset >= 0 for fu in futures)  # every business send went through

        while t.stats["recorded"] == 2 * sends and sends < MAX_SENDS:  # until the disk is full
            burst(CHUNK)
        burst(CHUNK)  # and on for a while with the disk full
        full = dict(t.stats)
        print(f"\nspool on {'a 3 MiB tmpfs' if on_tmpfs else 'a 2 MiB max_spool_bytes cap'}: {sends} sends in "
              f"{time.monotonic() - began:.1f} s; recorded {full['recorded']}, dropped {full['dropped']}, "
              f"errors {full['errors']}, hook errors {full['hook_errors']}; last error: {full['last_error']}")
        if on_tmpfs:
            st = os.statvfs(spool)
            print(f"tmpfs free after the burst: {st.f_bavail * st.f_frsize} bytes")
        try:
            audit = TansuBroker(port=audit_port).start()
        except (ServiceError, TimeoutError, OSError) as e:
            unavailable("Tansu broker", e)
        create_topic(audit.bootstrap, audit_topic, 1)
        wait_until(lambda: t.flush(5), 90, "the full spool to drain once the audit broker is up")
        for i in range(sends, sends + 20):  # events after the gap make its end visible
            producer.send(business, b"paid", msg_id=f"{business}:order-{i}").get(timeout=30)
        assert t.flush(60), t.stats
        after = dict(t.stats)
        lost = 2 * sends + 40 - after["recorded"]
        urls = {"chdb": f"chdb://{tmp / 'store'}"}
        if clickhouse_server is not None:
            urls["clickhouse"] = clickhouse_server.url(f"t_{uuid.uuid4().hex[:12]}")
        for url in urls.values():
            drain(audit.bootstrap, audit_topic, url, f"{group}-{url[:5]}")
        yield Full(on_tmpfs, full, 2 * sends, after["recorded"], lost, t0, urls)
    finally:
        producer.close(5)
        t.close(10)
        if audit is not None:
            audit.stop()
            shutil.rmtree(audit.workdir, ignore_errors=True)
        if on_tmpfs:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


@pytest.mark.kafka
@pytest.mark.timeout(180)
@pytest.mark.parametrize("engine", ["chdb", pytest.param("clickhouse", marks=pytest.mark.clickhouse)])
def test_disk_full_recording_never_raises_and_what_did_not_fit_is_the_seq_gap(disk_full, engine):
    f = disk_full
    s = f.stats
    assert s["hook_errors"] == 0
    assert s["recorded"] < f.attempted  # the disk did fill up
    assert s["dropped"] + s["errors"] > 0, s  # and the emitter noticed (how: the test below)
    url = f.urls[engine]
    got = integrity(url)
    [(emitter, seqs)] = got.emitters.items()
    assert (seqs.n, seqs.hi, seqs.missing) == (f.recorded, f.recorded + f.lost, f.lost), (seqs, f.recorded, f.lost)
    with Store(url) as store:
        _, res = verdicts(store, f.t0)
    assert [(g.emitter_id, g.missing) for g in res.seq_gaps] == [(emitter, f.lost)], res.seq_gaps


@pytest.mark.kafka
@pytest.mark.timeout(180)
def test_disk_full_drops_are_counted_as_dropped(disk_full):
    s = disk_full.stats
    assert s["dropped"] == disk_full.attempted - s["recorded"] and s["errors"] == 0, s
