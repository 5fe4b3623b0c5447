"""msgtrace incident on the red-packet demo's store (real Tansu brokers, real processes, faults
injected by the demo): each injected loss is found as its own burst with the right cause, no burst
was not injected, and the killed instances and the rebalance show up as signals."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest

from tracer.analysis.bursts import KIND
from tracer.verdicts import DELIVERED


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.slow
def test_incident_finds_each_injected_fault_as_one_burst(tmp_path, kafka_bootstrap):
    # kafka_bootstrap: makes sure the Tansu binary is there (fails under CI when it is not)
    t0 = time.time() - 1
    work = tmp_path / "demo"
    # the losses as injected: without the replay of them at the end, where the demo has one
    usage = subprocess.run([sys.executable, "-m", "tracer", "demo", "--help"], capture_output=True, text=True,
                           timeout=60, check=False).stdout
    no_replay = ["--no-replay"] if "--no-replay" in usage else []
    p = subprocess.run([sys.executable, "-m", "tracer", "demo", "--scale", "4", "--json", "--workdir", str(work),
                        *no_replay], capture_output=True, text=True, timeout=400, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    truth = json.loads(p.stdout.strip().splitlines()[-1])["categories"]
    html = tmp_path / "incident.html"
    q = subprocess.run([sys.executable, "-m", "tracer", "incident", "--from", _iso(t0), "--to", _iso(time.time() + 1),
                        "--grace", "0", "--group", "red-packet", "--group", "points", "--json", "--html", str(html),
                        "--expected-sql", "SELECT order_id || ':paid' AS msg_id FROM orders WHERE status = 'paid'",
                        "--expected-dsn", f"sqlite:///{work / 'orders.db'}", "--store", f"chdb://{work / 'store'}"],
                       capture_output=True, text=True, timeout=300, check=False)
    assert q.returncode == 1, q.stderr[-2000:]
    doc = json.loads(q.stdout)

    # the ground truth: per injected loss category, its verdict, the groups that lost it, how many
    injected: dict[tuple[str, str], dict[str, int]] = {}
    for row in truth:
        if row["expected"] != DELIVERED:
            injected.setdefault((row["category"], row["expected"]), {})[row["consumer_group"]] = row["injected"]
    expect = sorted((verdict, tuple(sorted(groups)), max(groups.values())) for (_, verdict), groups in injected.items())
    got = sorted((b["verdict"], tuple(sorted(b["groups"])), b["messages"]) for b in doc["bursts"])
    assert got == expect, doc["bursts"]
    for b in doc["bursts"]:
        assert b["cause"] == KIND[b["verdict"]][1].value
        assert b["samples"] and all(c.startswith("trace-msg ") for c in b["commands"])
    words = {b["verdict"]: b["text"] for b in doc["bursts"]}
    assert "the broker lost acknowledged messages" in words["lost_in_broker"]
    assert "committed before the work was done" in words["lost_in_consumer"]
    assert "crashed" in words["lost_in_consumer"]  # the SIGKILLed red-packet instance
    assert "swallowed" in words["failed_and_committed"]
    assert "did not retry" in words["send_failed"]

    sig = doc["signals"]
    crashed = [i for i in sig["stopped_instances"] if i["crashed"]]
    assert [i["service"] for i in crashed] == ["red-packet-service"]
    assert {i["service"] for i in sig["stopped_instances"]} >= {"order-service", "red-packet-service", "points-service"}
    assert any(r["consumer_group"] == "points" for r in sig["rebalances"])  # the points instance killed before its commit
    assert html.stat().st_size > 10_000 and "Loss bursts" in html.read_text()
