"""What the fault tests share: collector processes, the audit's integrity counted in the store,
latency percentiles, verdict maps.

The integrity check is the one every fault test ends with: for each emitter, the store holds
exactly the seq numbers 1..recorded, each once by event id (``uniqExact``, as the reconciler and
``trace-msg`` count), and no (emitter, seq) has two event ids (a re-encoded copy would).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracer.store import Store

HERE = Path(__file__).resolve().parent
CHILD = str(HERE / "collector_child.py")


IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(what: str, why: object) -> None:
    """A needed service is missing: fail under CI, skip on a developer machine (as tests/conftest.py)."""
    import pytest

    msg = f"{what} unavailable: {why}"
    if IN_CI:
        pytest.fail(msg + " (CI=true: missing services fail the run)", pytrace=False)
    pytest.skip(msg)


def names(prefix: str = "audit") -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"{prefix}-{tag}", f"collector-{tag}"


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["MSGTRACE_STORE_LOCK_TIMEOUT"] = "60"
    root = str(HERE.parent.parent)  # the checkout under test, whatever the installed copy is
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def collector_cmd(bootstrap: str, topic: str, url: str, group: str, *extra: str) -> list[str]:
    return [sys.executable, CHILD, bootstrap, topic, url, group, *extra]


def start_collector(bootstrap: str, topic: str, url: str, group: str, log: Path, *extra: str) -> subprocess.Popen:
    out = open(log, "ab")  # noqa: SIM115 (handed to the child, closed here)
    try:
        return subprocess.Popen(collector_cmd(bootstrap, topic, url, group, *extra), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env())
    finally:
        out.close()


def drain(bootstrap: str, topic: str, url: str, group: str, timeout: float = 180) -> dict[str, Any]:
    """A clean collector process run ``--until-idle``; its stats."""
    import orjson

    p = subprocess.run(collector_cmd(bootstrap, topic, url, group, "--until-idle", "--json", "--batch-events",
                                     "20000"), capture_output=True, env=child_env(), timeout=timeout, check=False)
    assert p.returncode == 0, p.stderr.decode(errors="replace")[-3000:]
    return orjson.loads(p.stdout.strip().splitlines()[-1])


def stop(proc: subprocess.Popen, timeout: float = 60) -> int:
    """SIGTERM (finish the batch, commit), then wait; SIGKILL if it does not end."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    """Records committed by ``group`` over all partitions of ``topic``."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return sum(c.committed(TopicPartition(topic, p)) or 0 for p in range(partitions))
    finally:
        c.close()


@dataclass(slots=True)
class EmitterSeqs:
    """One emitter's numbering as stored."""

    n: int        # distinct seq numbers
    lo: int
    hi: int
    events: int   # distinct event ids

    @property
    def missing(self) -> int:
        return self.hi - self.lo + 1 - self.n


@dataclass(slots=True)
class Integrity:
    """The audit trail as the store holds it."""

    distinct: int                 # distinct event ids
    rows: int                     # physical rows (copies of a re-read batch included)
    keys: int                     # distinct (emitter_id, seq)
    emitters: dict[str, EmitterSeqs] = field(default_factory=dict)
    stages: dict[str, int] = field(default_factory=dict)

    def check(self, recorded: dict[str, int]) -> None:
        """Every emitter in ``recorded`` (emitter_id -> events it recorded) is stored as seq 1..n,
        each once; no other emitter is there; nothing counts twice."""
        assert self.distinct == self.keys == sum(recorded.values()), (self.distinct, self.keys, recorded)
        got = {e: (s.lo, s.hi, s.n, s.events) for e, s in self.emitters.items()}
        want = {e: (1, n, n, n) for e, n in recorded.items() if n}
        assert got == want, {"stored": got, "recorded": want}


def integrity(url: str, emitters: Iterable[str] | None = None) -> Integrity:
    sel = list(emitters) if emitters is not None else None
    where = "WHERE has({ems:Array(String)}, emitter_id)" if sel is not None else ""
    params = {"ems": sel} if sel is not None else None
    with Store(url) as s, s.session():
        total = s.query("SELECT uniqExact(event_id) AS n, count() AS rows, uniqExact(emitter_id, seq) AS k "
                        f"FROM {{db:Identifier}}.trace_events {where}", params)[0]
        per = s.query("SELECT emitter_id, uniqExact(seq) AS n, min(seq) AS lo, max(seq) AS hi, "
                      f"uniqExact(event_id) AS ev FROM {{db:Identifier}}.trace_events {where} GROUP BY emitter_id",
                      params)
        stages = s.query(f"SELECT stage, uniqExact(event_id) AS n FROM {{db:Identifier}}.trace_events {where} "
                         "GROUP BY stage", params)
    return Integrity(int(total["n"]), int(total["rows"]), int(total["k"]),
                     {r["emitter_id"]: EmitterSeqs(int(r["n"]), int(r["lo"]), int(r["hi"]), int(r["ev"]))
                      for r in per},
                     {r["stage"]: int(r["n"]) for r in stages})


def stored_events(url: str) -> int:
    with Store(url) as s:
        return int(s.query("SELECT uniqExact(event_id) AS n FROM {db:Identifier}.trace_events")[0]["n"])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    k = min(len(v) - 1, max(0, round(q / 100 * (len(v) - 1))))
    return v[k]


def now_us() -> int:
    return time.time_ns() // 1000


def verdicts(store: Store, t0_us: int, **kw: Any):  # -> tuple[dict[(msg, group), Verdict], ReconcileResult]
    """Reconcile [t0, now + 1 s) with no grace, nothing written: the pairs not plainly delivered."""
    from tracer.analysis.reconcile import reconcile

    now = now_us()
    res = reconcile(store, t0_us, now + 1_000_000, grace_s=0, now_us=now + 2_000_000, write=False, **kw)
    return {(r.msg_id, r.consumer_group): r for r in res.rows}, res
