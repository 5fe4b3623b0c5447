"""``msgtrace demo``: the red-packet case end to end, every seed loss injected and found, then replayed.

Modules: :mod:`tracer.demo.base` (ground truth, service processes), :mod:`tracer.demo.story` (the
Kafka story, kafka-python or confluent-kafka), :mod:`tracer.demo.rabbit` (the RabbitMQ story),
:mod:`tracer.demo.apps` and one module per client (the services), :mod:`tracer.demo.verify` (the
msgtrace commands run afterwards, checked), :mod:`tracer.demo.report` (the comparisons and tables).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from tracer.cli.util import handle_errors


@click.command("demo")
@click.option("--mq", type=click.Choice(["kafka", "rabbitmq"]), default="kafka", show_default=True,
              help="The business MQ: Kafka (Tansu) or RabbitMQ (a node of the demo's own).")
@click.option("--client", type=click.Choice(["kafka-python", "confluent", "pika"]), default=None,
              help="The client library in the services: Kafka: kafka-python (default) or confluent "
                   "(confluent-kafka); RabbitMQ: pika.")
@click.option("--replay/--no-replay", default=True, show_default=True,
              help="End by replaying what was lost (msgtrace replay, dry run then --execute) and reconciling "
                   "again. Kafka only: msgtrace replay re-publishes to Kafka.")
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
def demo(mq: str, client: str | None, replay: bool, workdir: Path | None, scale: int, seed: int, sink: str,
         keep: bool, as_json: bool) -> None:
    """Run the red-packet story with each seed loss injected, then reconcile and compare.

    Exit status: 0 when every injected loss was found as injected (and, with the replay, every
    recoverable message recovered), every trace-msg answered as expected; 1 on a mismatch; 2 on an
    error.
    """
    from tracer.demo.base import StoryBase

    client = client or ("pika" if mq == "rabbitmq" else "kafka-python")
    if (mq == "rabbitmq") != (client == "pika"):
        raise click.BadParameter(f"{client} is not a client for {mq} (Kafka: kafka-python, confluent; "
                                 "RabbitMQ: pika)", param_hint="--client")
    _preflight(mq, client)
    console = Console(stderr=as_json, highlight=False)
    if not console.is_terminal:  # a log or a pipe: wide enough for the tables (COLUMNS still wins)
        console = Console(stderr=as_json, highlight=False, width=int(os.environ.get("COLUMNS") or 150))
    workdir = (workdir or Path(tempfile.mkdtemp(prefix="msgtrace-demo-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    story: StoryBase
    if mq == "rabbitmq":
        from tracer.demo.rabbit import RabbitStory

        story = RabbitStory(workdir, scale=scale, seed=seed, sink=sink, console=console)
    else:
        from tracer.demo.story import Story

        story = Story(workdir, scale=scale, seed=seed, sink=sink, console=console, client=client, replay=replay)
    console.rule(f"[bold]msgtrace demo: order paid -> red packet, on {story.describe()}")
    ok = False
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        result = _run(story, console, replay and story.replayable, show=not as_json)
        ok = result["ok"]
        if as_json:
            sys.stdout.write(json.dumps(result) + "\n")
        console.rule()
        verdict = "[green]all injected losses found[/]" if ok else "[red]mismatch between injected and detected[/]"
        if result.get("after") and ok:
            gaps = sum(r["known_gap"] for r in result["after"]["categories"])
            verdict += " and every recoverable one recovered" + (
                f" but {gaps} (known gap, in the table)" if gaps else "")
        timings = ", ".join(f"{k} {v:.0f} s" for k, v in result["timings"].items())
        console.print(f"{verdict} in {time.time() - story.t0:.0f} s ({timings}); workdir {workdir}")
        console.print(f"explore: trace-msg <id> --store {story.store_url}")
        if keep:
            console.print("brokers and store kept up; Ctrl-C to stop")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        console.print("interrupted; cleaning up")
    finally:
        story.cleanup()
    sys.exit(0 if ok else 1)


def _preflight(mq: str, client: str) -> None:
    """The client library and broker a story needs, or one line saying how to get them."""
    import importlib.util

    from tracer.errors import ConfigError

    need = {"confluent": ("confluent_kafka", "confluent-kafka", "confluent"), "pika": ("pika", "pika", "rabbitmq")}
    if client in need:
        module, dist, extra = need[client]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"the {client} demo needs the PyPI package {dist}: pip install 'msgtrace[{extra}]' "
                              f"(scripts/demo.sh installs it)")
    if mq == "rabbitmq":
        from tracer.localsvc.rabbitmq import rabbitmq_server_binary

        if rabbitmq_server_binary() is None:
            raise ConfigError("the RabbitMQ demo runs a node of its own from Debian's rabbitmq-server: "
                              "apt-get install rabbitmq-server (scripts/demo.sh installs it)")


def _audit_fault_outcome(story: Any, report: dict[str, Any], console: Console) -> bool:
    """Says what became of the orders whose audit events the audit broker lost: each must be judged
    delivered in both groups (recovered), else audit_gap (the audit says it is incomplete); any other
    verdict would be a false loss."""
    from tracer.verdicts import AUDIT_GAP

    fault = story.audit_fault
    rows = [m for m in report.get("messages", []) if m["msg_id"].removesuffix(":paid") in set(fault["orders"])]
    false_losses = [m for m in rows if m["verdict"] != AUDIT_GAP]
    gaps = len(rows) - len(false_losses)
    fault.update(audit_gap=gaps, false_losses=[f"{m['msg_id']} {m['consumer_group']}: {m['verdict']}"
                                               for m in false_losses])
    n = len(fault["orders"])
    if false_losses:
        console.print(f"[red]audit-broker fault: {len(false_losses)} false losses[/] among the {n} orders whose "
                      f"audit events were lost: {fault['false_losses']}")
    elif gaps:
        console.print(f"[yellow]audit-broker fault[/]: {gaps} pairs judged audit_gap (not recovered, but never "
                      "blamed on the queue)")
    else:
        console.print(f"[green]audit-broker fault[/]: the audit broker lost the events of {n} delivered orders; "
                      f"the emitters shipped {fault['reshipped']} events again and all {n} are judged delivered "
                      "(no false loss)")
    return not false_losses


def _run(story: Any, console: Console, replay: bool, show: bool = True) -> dict[str, Any]:
    from tracer.demo.report import (
        before_after_table,
        compare,
        comparison_table,
        remedies_table,
        replay_table,
        unrecovered_lines,
    )
    from tracer.demo.verify import Verifier

    timings: dict[str, float] = {}
    mark = time.time()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.time()
        timings[name] = now - mark
        mark = now

    story.run()
    lap("story")
    v = Verifier(story, console, show=show)
    if not replay:
        story.stop_services()  # their spools were flushed; a clean stop closes the clients
    v.ship_dead_spools()
    v.collect()
    report = v.reconcile(time.time() + 1)
    rows = compare(story.cats, report)
    console.print(comparison_table(rows))
    console.print(remedies_table(story.cats))
    lap("audit+reconcile")
    for cat in story.cats.values():
        if cat.orders:
            v.trace_msg(cat, cat.expect)
    lap("trace-msg")
    result: dict[str, Any] = {
        "mq": story.mq, "client": story.client, "workdir": str(story.workdir), "run_id": report.get("run_id"),
        "summary": report.get("summary"), "categories": [r.as_json() for r in rows], "replay": None, "after": None}
    ok = all(r.ok for r in rows)
    if story.audit_fault is not None:
        ok = _audit_fault_outcome(story, report, console) and ok
        result["audit_fault"] = story.audit_fault
    if replay:
        problems: list[str] = []
        dry = v.replay_dry_run(report["run_id"])
        if dry.returncode != 1:
            problems.append(f"the dry run exited {dry.returncode}, expected 1 (messages still lost)")
        executed = v.replay_execute(report["run_id"])
        console.print(replay_table(executed, story.cats))
        published = {m["msg_id"] for m in executed.get("messages", []) if m.get("result") == "published"}
        lost = story.orders_of_lost()
        if published != lost:
            problems.append(f"re-published {sorted(published)}, expected the lost {sorted(lost)}")
        story.step(f"replay run {executed.get('replay_run')}: {executed.get('counts')}; waiting for both groups "
                   f"to process the {len(published)} re-published messages from {executed.get('to_topic')}")
        story.await_replays(published)
        story.settle()
        story.stop_services()
        lap("replay")
        v.ship_dead_spools()
        v.collect()
        report2 = v.reconcile(time.time() + 1)
        after = compare(story.cats, report2, after=True)
        console.print(before_after_table(rows, after, executed, story.cats))
        for line in unrecovered_lines(story.cats, report2):
            console.print(f"[yellow]not recovered[/] {line}", markup=True, highlight=False)
        for name in ("lost_in_consumer", "failed_and_committed"):
            cat = story.cats[name]
            if cat.orders:
                v.trace_msg(cat, cat.after, label="after the replay")
        lap("after the replay")
        for p in problems:
            console.print(f"[red]replay:[/] {p}")
        ok = ok and not problems and all(r.ok for r in after)
        result["replay"] = {"dry_run_exit": dry.returncode, "execute": {k: executed.get(k) for k in (
            "replay_run", "mode", "counts", "skipped_by_reason", "failed_by_reason", "still_lost", "to_topic")},
            "published": sorted(published), "problems": problems}
        result["after"] = {"run_id": report2.get("run_id"), "summary": report2.get("summary"),
                           "categories": [r.as_json() for r in after]}
    elif not story.replayable:
        console.print(f"[dim]no replay on {story.describe()}: msgtrace replay re-publishes to Kafka only "
                      "(--bootstrap); the remedies above stay in words[/]")
    ok = ok and all(c.ok for c in v.checks)
    result["trace_msg"] = [c.as_json() for c in v.checks]
    result["timings"] = {k: round(s, 1) for k, s in timings.items()}
    result["ok"] = ok
    return result
