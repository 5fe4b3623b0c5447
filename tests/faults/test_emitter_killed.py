"""An emitter SIGKILLed in the middle of writing an event; the next process adopts its spool.

A child process records in a tight loop (spool only). The test stops it (SIGSTOP) at random
moments and looks at a copy of its newest segment until a stop lands *inside* a write -- the
payload of a frame copied, its length not yet -- and SIGKILLs it right there. So the kill really
cuts a write in two, every time, and the test knows the last complete seq K.

Then a new process (a Tracer writing to the store, on each engine) adopts the dead spool and ships
it: the store must hold exactly seq 1..K of the dead emitter (nothing lost, nothing twice), and the
torn frame must be detected and counted.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from faultkit import child_env, integrity

from tracer import Tracer
from tracer.events import decode_batch
from tracer.localsvc import wait_until
from tracer.sdk.emitter import drain_spools

CHILD = textwrap.dedent("""
    import sys
    from tracer import Tracer
    from tracer.sdk.emitter import NullSink
    t = Tracer(service="order-service", sink=NullSink(), spool_dir=sys.argv[1], segment_bytes=256 << 10)
    print(t.stats["emitter_id"], flush=True)
    pad = "x" * 1500
    i = 0
    while True:
        t.record("sent", f"order-{i}:paid", topic="orders", pad=pad)
        i += 1
""")


class ListSink:
    """A sink that keeps what it is given (wire lines)."""

    name = "list"
    chunk_bytes = 1 << 20
    interval = 0.05

    def __init__(self) -> None:
        self.events: list = []

    def ship(self, data: bytes, lines: int) -> None:
        self.events.extend(decode_batch(data, check_header=False).events)

    def close(self) -> None:
        pass


def probe(spool: Path, emitter_id: str, scratch: Path) -> tuple[int, int]:
    """(torn frames, last complete seq) of the newest segment of a stopped writer, read from a copy."""
    src = spool / emitter_id
    segs = sorted(p.name for p in src.iterdir() if p.name.startswith("seg-"))
    if not segs:
        return 0, 0
    dst = scratch / emitter_id
    shutil.rmtree(scratch, ignore_errors=True)
    dst.mkdir(parents=True)
    for name in ("owner.json", segs[-1]):
        shutil.copyfile(src / name, dst / name)
    sink = ListSink()
    stats = drain_spools(str(scratch), sink)
    return stats["torn"], max((e.seq for e in sink.events), default=0)


@dataclass
class Killed:
    spool: Path
    emitter_id: str
    last_seq: int
    tries: int


def kill_mid_write(tmp: Path, timeout: float = 30) -> Killed:
    spool = tmp / "spool"
    spool.mkdir()
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(spool)], stdout=subprocess.PIPE, text=True,
                         env=child_env())
    try:
        emitter_id = p.stdout.readline().strip()
        assert emitter_id, "the child did not start"
        wait_until(lambda: probe(spool, emitter_id, tmp / "probe")[1] > 2_000, 30, "the child to record")
        deadline = time.monotonic() + timeout
        tries = 0
        while time.monotonic() < deadline:
            tries += 1
            os.kill(p.pid, signal.SIGSTOP)
            os.waitpid(p.pid, os.WUNTRACED)  # it is stopped now, wherever it was
            torn, last = probe(spool, emitter_id, tmp / "probe")
            if torn:
                os.kill(p.pid, signal.SIGKILL)  # the write in progress is cut for good
                p.wait(10)
                return Killed(spool, emitter_id, last, tries)
            os.kill(p.pid, signal.SIGCONT)
            time.sleep(0.001 * (tries % 7))  # vary the phase of the next stop (not a wait for anything)
        raise AssertionError(f"no stop landed inside a write in {tries} tries")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)


@pytest.fixture(params=["chdb", pytest.param("clickhouse", marks=pytest.mark.clickhouse)])
def adopted(request, tmp_path):
    url = request.getfixturevalue("chdb_url" if request.param == "chdb" else "server_url")
    k = kill_mid_write(tmp_path)
    t = Tracer(service="order-service", store=url, spool_dir=str(k.spool), adopt_interval=0.2)
    try:
        wait_until(lambda: t.stats["adopted_events"] >= k.last_seq and t.flush(1), 60,
                   "the dead spool to be adopted and shipped")
        stats = dict(t.stats)
    finally:
        t.close(30)
    print(f"\nkilled inside a write after {k.tries} stops; last complete seq {k.last_seq}; stats {stats}")
    return k, stats, url


@pytest.mark.timeout(120)
def test_the_dead_spool_is_adopted_and_shipped_nothing_else_lost(adopted):
    k, stats, url = adopted
    got = integrity(url, [k.emitter_id])
    got.check({k.emitter_id: k.last_seq})  # 1..K, each once: only the torn event is missing
    assert stats["adopted_spools"] == 1 and stats["adopted_events"] == k.last_seq
    # drained: nothing is left to ship (the spool itself is retained for a while, for re-shipping)
    assert drain_spools(str(k.spool), ListSink(), retention_s=0) == {"spools": 0, "events": 0, "torn": 0, "left": 0}
    assert not (k.spool / k.emitter_id).exists()  # without a retention it is removed


@pytest.mark.timeout(120)
@pytest.mark.parametrize("adopted", ["chdb"], indirect=True)  # a counter: one engine is enough
def test_the_torn_frame_is_counted(adopted):
    _, stats, _ = adopted
    assert stats.get("torn") == 1, stats
