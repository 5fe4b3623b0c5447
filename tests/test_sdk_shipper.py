"""The shipper process (the default for the audit topic) against the real broker (Tansu).

Shipping runs in ``python -m tracer.sdk.shipper``, reading the business process's spool, so that JSON
encoding and kafka-python's producer take nothing from the business threads' GIL. What must hold:
the owner SIGKILLed -> its shipper adopts the spool, ships every event once and leaves nothing
behind; the shipper SIGKILLed -> the owner starts another and nothing is lost; a fork() -> two
emitters, two shippers, both gap-free.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from test_hooks import assert_gap_free, new_topic, read_audit

from tracer import Tracer
from tracer.localsvc import wait_until

OWNER = textwrap.dedent("""
    import os, signal, sys
    from tracer import Tracer
    bootstrap, topic, spool = sys.argv[1:4]
    t = Tracer(service="owner", bootstrap=bootstrap, audit_topic=topic, spool_dir=spool, adopt=False)
    assert t.stats["shipper"] == "process"
    for i in range(200):
        t.record("sent", f"m{i}", topic="orders")
    assert t.flush(60), t.stats
    for i in range(200, 500):
        t.record("sent", f"m{i}", topic="orders")
    print(t.emitter._proc.pid, t.stats["spool"], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # nothing closed, nothing flushed
""")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours counts as gone
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def test_owner_sigkilled_its_shipper_adopts_the_spool_and_ships_everything_once(kafka_bootstrap, tmp_path):
    topic = new_topic(kafka_bootstrap, 1, "audit")
    spool = tmp_path / "spool"
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    p = subprocess.run([sys.executable, str(script), kafka_bootstrap, topic, str(spool)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    shipper_pid, own_dir = p.stdout.split()
    events = read_audit(kafka_bootstrap, topic, expect=500, timeout=60)
    unique = {e.event_id: e for e in events}
    assert sorted(e.msg_id for e in unique.values()) == sorted(f"m{i}" for i in range(500))
    assert_gap_free(list(unique.values()))
    wait_until(lambda: not alive(int(shipper_pid)), 30, "the orphaned shipper to finish and exit")
    assert os.listdir(spool) == [os.path.basename(own_dir)]  # adopted, drained, retained (default 24 h)
    from tracer.sdk.emitter import NullSink, drain_spools
    assert drain_spools(str(spool), NullSink(), retention_s=0)["events"] == 0  # nothing left unshipped
    assert os.listdir(spool) == []


def test_a_killed_shipper_process_is_replaced_and_nothing_is_lost(kafka_bootstrap, tmp_path):
    topic = new_topic(kafka_bootstrap, 1, "audit")
    t = Tracer(service="svc", bootstrap=kafka_bootstrap, audit_topic=topic, spool_dir=str(tmp_path), adopt=False)
    for i in range(100):
        t.record("sent", f"a{i}", topic="orders")
    assert t.flush(60)
    first = t.emitter._proc.pid
    os.kill(first, signal.SIGKILL)
    for i in range(100):
        t.record("sent", f"b{i}", topic="orders")
    assert t.flush(60), t.stats  # a new shipper process took over
    assert t.emitter._proc.pid != first and t.stats["shipper"] == "process"
    events = {e.event_id: e for e in read_audit(kafka_bootstrap, topic, expect=200)}
    assert len(events) == 200 and t.stats["recorded"] == 200
    assert_gap_free(list(events.values()))
    assert t.close(30)


def test_a_forked_child_gets_its_own_shipper_process(kafka_bootstrap, tmp_path):
    topic = new_topic(kafka_bootstrap, 1, "audit")
    t = Tracer(service="svc", bootstrap=kafka_bootstrap, audit_topic=topic, spool_dir=str(tmp_path), adopt=False)
    t.record("sent", "p1", topic="orders")
    assert t.flush(60)
    parent_shipper = t.emitter._proc.pid
    pid = os.fork()
    if pid == 0:  # child
        ok = False
        try:
            t.record("sent", "c1", topic="orders")
            t.record("sent", "c2", topic="orders")
            ok = t.flush(60) and t.emitter._proc.pid != parent_shipper and t.stats["recorded"] == 2
            t.close(10)
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    t.record("sent", "p2", topic="orders")
    assert t.flush(60) and t.emitter._proc.pid == parent_shipper  # the parent's shipper lives on
    events = {e.event_id: e for e in read_audit(kafka_bootstrap, topic, expect=4)}
    by_emitter: dict[str, list] = {}
    for ev in events.values():
        by_emitter.setdefault(ev.emitter_id, []).append((ev.seq, ev.msg_id, ev.pid))
    assert sorted(sorted(v) for v in by_emitter.values()) == [
        [(1, "c1", pid), (2, "c2", pid)], [(1, "p1", os.getpid()), (2, "p2", os.getpid())]]
    assert t.close(30)


def test_without_a_usable_interpreter_shipping_falls_back_to_a_thread(kafka_bootstrap, tmp_path, monkeypatch):
    """An embedded interpreter (sys.executable is not Python): the shipper process cannot start, or dies
    at once; shipping then runs on a thread of the owner and nothing is lost."""
    topic = new_topic(kafka_bootstrap, 1, "audit")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    t = Tracer(service="svc", bootstrap=kafka_bootstrap, audit_topic=topic, spool_dir=str(tmp_path / "a"), adopt=False)
    assert t.stats["shipper"] == "thread"
    t.record("sent", "x1", topic="orders")
    assert t.flush(60)
    monkeypatch.setattr(sys, "executable", "/bin/false")  # starts, and exits at once
    u = Tracer(service="svc", bootstrap=kafka_bootstrap, audit_topic=topic, spool_dir=str(tmp_path / "b"), adopt=False)
    u.record("sent", "x2", topic="orders")
    assert u.flush(60), u.stats  # the supervisor gave up on the process after two quick deaths
    assert u.stats["shipper"] == "thread"
    assert {e.msg_id for e in read_audit(kafka_bootstrap, topic, expect=2)} == {"x1", "x2"}
    assert t.close(10) and u.close(10)
