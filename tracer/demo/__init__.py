"""``msgtrace demo``: the red-packet case end to end, every seed loss injected and found."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from tracer.cli.util import handle_errors


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _msgtrace(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a msgtrace command in a fresh process, as a user or a cron job would."""
    p = subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode not in (0, 1):
        raise click.ClickException(f"msgtrace {args[0]} failed (exit {p.returncode}): "
                                   f"{(p.stderr or p.stdout).strip()[-500:]}")
    return p


def compare(story, report: dict[str, Any]) -> list[dict[str, Any]]:
    """Injected ground truth beside what the reconciler found, per category and group."""
    found = {(m["msg_id"], m["consumer_group"]): (m["verdict"], frozenset(m.get("flags") or ()))
             for m in report.get("messages", [])}
    rows = []
    for cat in story.cats.values():
        for group, (verdict, flags) in cat.expect.items():
            hits, misses = 0, []
            for oid in cat.orders:
                got = found.get((f"{oid}:paid", group), ("delivered", frozenset()))
                if got[0] == verdict and flags <= got[1]:
                    hits += 1
                else:
                    misses.append({"msg_id": f"{oid}:paid", "verdict": got[0], "flags": sorted(got[1])})
            rows.append({"category": cat.name, "seed_case": cat.seed_case, "consumer_group": group,
                         "expected": verdict, "expected_flags": sorted(flags), "injected": len(cat.orders),
                         "detected": hits, "misses": misses, "ok": hits == len(cat.orders)})
    return rows


def comparison_table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="injected (ground truth) vs detected (msgtrace reconcile)")
    for col, kw in (("category", {}), ("group", {}), ("expected verdict", {}), ("injected", {"justify": "right"}),
                    ("detected", {"justify": "right"}), ("", {})):
        t.add_column(col, **kw)
    prev = None
    for r in rows:
        label = r["expected"] + "".join(f" +{f}" for f in r["expected_flags"])
        miss = "; ".join(f"{m['msg_id']}={m['verdict']}" for m in r["misses"][:3])
        t.add_row(r["category"] if r["category"] != prev else "", r["consumer_group"], label, str(r["injected"]),
                  str(r["detected"]) + (f" [red]{miss}[/]" if miss else ""), "[green]✓[/]" if r["ok"] else "[red]✗[/]")
        prev = r["category"]
    return t


def remedies_table(story) -> Table:
    from tracer.verdicts import REMEDY

    t = Table(title="what was injected, and the remedy msgtrace points to")
    t.add_column("verdict")
    t.add_column("injected as (seeds)")
    t.add_column("remedy")
    for cat in story.cats.values():
        verdict = cat.expect["red-packet"][0] if cat.name != "redelivered" else "delivered +redelivered"
        remedy = REMEDY.get(cat.name, "") or ("make processing idempotent (it was: no double payment)"
                                              if cat.name == "redelivered" else "-")
        t.add_row(verdict, cat.seed_case, remedy)
    return t


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the store, spools, databases and logs go (default: a new temp dir).")
@click.option("--scale", type=click.IntRange(4, 100_000), default=20, show_default=True,
              help="Normal orders in the first batch.")
@click.option("--seed", type=int, default=7, show_default=True, help="Random seed (users, amounts).")
@click.option("--sink", type=click.Choice(["collector", "direct"]), default="collector", show_default=True,
              help="Ship audit events through the audit topic and the collector, or straight to the store.")
@click.option("--keep", is_flag=True, help="Leave the brokers and the store up for exploring; Ctrl-C ends.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON on stdout (progress on stderr).")
@handle_errors
def demo(workdir: Path | None, scale: int, seed: int, sink: str, keep: bool, as_json: bool) -> None:
    """Run the red-packet story with each seed loss injected, then reconcile and compare."""
    from tracer.demo.story import Story

    console = Console(stderr=as_json, highlight=False)
    workdir = (workdir or Path(tempfile.mkdtemp(prefix="msgtrace-demo-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    story = Story(workdir, scale=scale, seed=seed, sink=sink, console=console)
    console.rule("[bold]msgtrace demo: order paid -> red packet")
    t0 = time.time()
    ok = False
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        story.run()
        window_to = time.time() + 1
        store = story.store_url
        # the spools of processes that died and were not restarted in place
        for spool in story.dead_spools:
            if sink == "collector":
                _msgtrace("ship", "--spool", str(spool), "--bootstrap", story.audit.bootstrap)
            else:
                _msgtrace("ship", "--spool", str(spool), "--store", store)
        if sink == "collector":
            p = _msgtrace("collect", "--until-idle", "--json", "--bootstrap", story.audit.bootstrap,
                          "--store", store)
            stats = json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else {}
            story.step(f"collector drained the audit topic: {stats}")
        p = _msgtrace("reconcile", "--from", _iso(story.t0 - 1), "--to", _iso(window_to), "--grace", "0",
                      "--group", "red-packet", "--group", "points", "--json", "--store", store,
                      "--expected-sql", "SELECT order_id || ':paid' AS msg_id FROM orders WHERE status = 'paid'",
                      "--expected-dsn", f"sqlite:///{workdir / 'orders.db'}")
        report = json.loads(p.stdout)
        story.step(f"reconciled: {report.get('summary')}")
        rows = compare(story, report)
        ok = all(r["ok"] for r in rows)
        console.print(comparison_table(rows))
        console.print(remedies_table(story))
        width = str(max(console.width, 150)) if not console.is_terminal else str(console.width)
        for cat in story.cats.values():
            if not cat.orders:
                continue
            msg_id = f"{cat.orders[0]}:paid"
            console.rule(f"trace-msg {msg_id}  [dim]({cat.name})")
            tm = subprocess.run([sys.executable, "-c", "from tracer.cli import trace_msg_main; trace_msg_main()",
                                 msg_id, "--store", store], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "COLUMNS": width})
            console.print(tm.stdout.rstrip(), markup=False, highlight=False, soft_wrap=True)
        if as_json:
            sys.stdout.write(json.dumps({"ok": ok, "workdir": str(workdir), "summary": report.get("summary"),
                                         "categories": rows}) + "\n")
        console.rule()
        console.print(f"{'[green]all injected losses found[/]' if ok else '[red]mismatch between injected and detected[/]'}"
                      f" in {time.time() - t0:.0f} s; workdir {workdir}")
        console.print(f"explore: trace-msg <id> --store {store}")
        if keep:
            console.print("brokers and store kept up; Ctrl-C to stop")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        console.print("interrupted; cleaning up")
    finally:
        story.cleanup()
    sys.exit(0 if ok else 1)
