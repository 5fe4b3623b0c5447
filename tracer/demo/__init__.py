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

from ..cliutil import handle_errors


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _msgtrace(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a msgtrace command in a fresh process, as a user or a cron job would."""
    p = subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode not in (0, 1):
        raise click.ClickException(f"msgtrace {args[0]} failed (exit {p.returncode}): "
                                   f"{(p.stderr or p.stdout).strip()[-500:]}")
    return p


def compare(story, report: dict[str, Any]) -> tuple[Table, bool]:
    """Injected ground truth beside what the reconciler found, per category and group."""
    found = {(m["msg_id"], m["consumer_group"]): (m["verdict"], frozenset(m.get("flags") or ()))
             for m in report.get("messages", [])}
    t = Table(title="injected vs detected", show_lines=False)
    for col in ("category (seed case)", "group", "expected", "injected", "detected", ""):
        t.add_column(col)
    ok_all = True
    for cat in story.cats.values():
        for group, (verdict, flags) in cat.expect.items():
            hits, misses = 0, []
            for oid in cat.orders:
                got = found.get((f"{oid}:paid", group), ("delivered", frozenset()))
                if got[0] == verdict and flags <= got[1]:
                    hits += 1
                else:
                    misses.append(f"{oid}={got[0]}{'+' + ','.join(sorted(got[1])) if got[1] else ''}")
            ok = hits == len(cat.orders)
            ok_all &= ok
            label = verdict + (f" +{','.join(sorted(flags))}" if flags else "")
            t.add_row(f"{cat.name} ({cat.seed_case})" if group == "red-packet" else "", group, label,
                      str(len(cat.orders)), str(hits) + (f"  [red]{'; '.join(misses[:3])}[/]" if misses else ""),
                      "[green]✓[/]" if ok else "[red]✗[/]")
    return t, ok_all


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the store, spools, databases and logs go (default: a new temp dir).")
@click.option("--scale", type=click.IntRange(4, 100_000), default=20, show_default=True,
              help="Normal orders in the first batch.")
@click.option("--seed", type=int, default=7, show_default=True, help="Random seed (users, amounts).")
@click.option("--sink", type=click.Choice(["collector", "direct"]), default="collector", show_default=True,
              help="Ship audit events through the audit topic and the collector, or straight to the store.")
@click.option("--keep", is_flag=True, help="Leave the brokers and the store up for exploring; Ctrl-C ends.")
@handle_errors
def demo(workdir: Path | None, scale: int, seed: int, sink: str, keep: bool) -> None:
    """Run the red-packet story with each seed loss injected, then reconcile and compare."""
    from .story import Story

    console = Console(stderr=False, highlight=False)
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
        table, ok = compare(story, report)
        console.print(table)
        for cat in story.cats.values():
            if not cat.orders:
                continue
            msg_id = f"{cat.orders[0]}:paid"
            console.rule(f"trace-msg {msg_id}  [dim]({cat.name})")
            tm = subprocess.run([sys.executable, "-c", "from tracer.cli import trace_msg_main; trace_msg_main()",
                                 msg_id, "--store", store], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "COLUMNS": str(console.width)})
            console.print(tm.stdout.rstrip(), markup=False, highlight=False)
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
