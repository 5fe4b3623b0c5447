"""msgtrace incident: loss clusters (stage x topic x partition x host x minute), funnel, hop latencies."""
from __future__ import annotations

import orjson

from tests.test_reconcile import scenario_events
from tests.test_reconcile_cli import WINDOW, run, wide_console  # noqa: F401 (fixture)


def test_incident_clusters_funnel_latencies(store):
    store.insert_events(scenario_events().events)
    r = run(store, "incident", *WINDOW, "--json")
    assert r.exit_code == 1, r.stderr
    doc = orjson.loads(r.stdout)
    cl = doc["clusters"]
    assert cl and all({"verdict", "stopped_at", "topic", "partition", "host", "minute", "pairs"} <= set(c) for c in cl)
    assert sum(c["pairs"] for c in cl) == sum(n for v, n in doc["summary"].items() if v != "delivered")
    assert cl == sorted(cl, key=lambda c: -c["pairs"])
    assert any(c["host"].startswith("h1/") for c in cl)
    g1 = next(f for f in doc["funnel"] if f["consumer_group"] == "g1")
    assert g1["sent"] >= g1["broker_acked"] > 0 and g1["received"] >= g1["business_done"] > 0
    lat = g1["latency_acked_received_us"]
    assert set(lat) == {"p50", "p90", "p99"} and 0 < lat["p50"] <= lat["p99"]
    r = run(store, "incident", *WINDOW)
    assert "loss bursts" in r.stdout and "stage funnel" in r.stdout and "hop latencies" in r.stdout


def test_progress_display_only_on_a_terminal():
    import io

    from rich.console import Console

    from tracer.cli.util import progress_display

    buf = io.StringIO()
    with progress_display(True, console=Console(file=buf, force_terminal=False)) as p:
        p("judging")
        assert not p.enabled
    assert buf.getvalue() == ""
    term = Console(file=io.StringIO(), force_terminal=True, width=80)
    with progress_display(False, console=term) as p:  # --json
        assert not p.enabled
    assert term.file.getvalue() == ""
    with progress_display(True, console=term) as p:
        assert p.enabled
        p("pass 1")
        p("measuring the stage funnel")
    assert "measuring the stage funnel" in term.file.getvalue()
