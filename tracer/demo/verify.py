"""After the story: the msgtrace commands an on-call engineer would run, each in a fresh process, checked.

``ship`` (the spools of services that died), ``collect --until-idle`` (the audit topic into the
store), ``reconcile`` (verdicts for every expected order), ``trace-msg`` per category (shown as a
person sees it, and checked: its exit code and its JSON verdicts must match the ground truth, so a
trace-msg that fails fails the demo), and for a story that can be replayed, ``replay`` (a dry run
shown, then ``--execute``) followed by a second collect and reconcile.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console

from tracer.demo.apps import RETRY_TOPIC
from tracer.demo.base import GROUPS, Category, Expect, StoryBase, msg_id
from tracer.demo.report import matches

#: rebuilds a message the broker never had (or lost) from the order service's own table
SOURCE_SQL = ("SELECT order_id || ':paid' AS id, order_id AS key, "
              "json_object('order_id',order_id,'user_id',user_id,'amount',amount) AS payload "
              "FROM orders WHERE order_id || ':paid' IN :ids")
#: trace-msg as installed (the console script's entry point), in a fresh process
TRACE_MSG = [sys.executable, "-c", "from tracer.cli import trace_msg_main; trace_msg_main()"]
EXPECTED_SQL = "SELECT order_id || ':paid' AS msg_id FROM orders WHERE status = 'paid'"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def msgtrace(*args: str, ok: tuple[int, ...] = (0, 1), timeout: float = 300,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a msgtrace command in a fresh process, as a user or a cron job would; an exit code outside
    ``ok`` is an error of the demo (the command's own error line is quoted)."""
    p = subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True, text=True, timeout=timeout,
                       check=False, env=env)
    if p.returncode not in ok:
        raise click.ClickException(f"msgtrace {args[0]} failed (exit {p.returncode}): "
                                   f"{(p.stderr or p.stdout).strip()[-800:]}")
    return p


def last_json(p: subprocess.CompletedProcess[str], what: str) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
        return doc
    except (ValueError, IndexError):
        raise click.ClickException(f"{what} printed no JSON: {(p.stderr or p.stdout).strip()[-500:]}") from None


@dataclass(slots=True)
class TraceCheck:
    """One trace-msg call of the demo: what it must answer, and what it did."""

    category: str
    msg_id: str
    expect: dict[str, Expect]
    exit_code: int = -1
    expected_exit: int = 0
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {"category": self.category, "msg_id": self.msg_id, "exit_code": self.exit_code,
                "expected_exit": self.expected_exit,
                "verdicts": {g: v.get("verdict") for g, v in sorted(self.verdicts.items())},
                "expected": {g: e.label() for g, e in sorted(self.expect.items())},
                "problems": self.problems, "ok": self.ok}


def expected_exit(expect: dict[str, Expect]) -> int:
    """trace-msg's exit status for a message with these verdicts: 3 when it has no events at all (never
    sent), 0 when delivered to every group, else 1."""
    verdicts = {e.verdict for e in expect.values()}
    if verdicts == {"never_sent"}:
        return 3
    return 0 if verdicts == {"delivered"} else 1


class Verifier:
    """Runs the commands for one story and keeps what they answered."""

    def __init__(self, story: StoryBase, console: Console, show: bool = True) -> None:
        self.story = story
        self.console = console
        #: print trace-msg's and replay's own output as a person sees it (off with --json: the checks stay)
        self.show = show
        self.store = story.store_url
        self.checks: list[TraceCheck] = []

    # --- the audit into the store ------------------------------------------------------------------
    def ship_dead_spools(self) -> None:
        """The spools of services that died and were not restarted in place."""
        st = self.story
        for spool in st.dead_spools:
            target = ["--bootstrap", st.audit_bootstrap] if st.sink == "collector" else ["--store", self.store]
            msgtrace("ship", "--spool", str(spool), *target, ok=(0,))
        st.dead_spools.clear()

    def collect(self) -> None:
        st = self.story
        if st.sink != "collector":
            return
        p = msgtrace("collect", "--until-idle", "--json", "--bootstrap", st.audit_bootstrap, "--store", self.store,
                     ok=(0,))
        stats = last_json(p, "collect")
        st.step(f"collector drained the audit topic: stored {stats.get('stored')} events "
                f"({stats.get('duplicates')} duplicates, {stats.get('quarantined')} quarantined)")

    def reconcile(self, window_to: float) -> dict[str, Any]:
        st = self.story
        groups = [a for g in GROUPS for a in ("--group", g)]
        p = msgtrace("reconcile", "--from", iso(st.t0 - 1), "--to", iso(window_to), "--grace", "0", *groups,
                     "--json", "--store", self.store, "--expected-sql", EXPECTED_SQL,
                     "--expected-dsn", f"sqlite:///{st.workdir / 'orders.db'}")
        report: dict[str, Any] = json.loads(p.stdout)
        st.step(f"reconciled (run {report.get('run_id')}): {report.get('summary')}")
        return report

    # --- trace-msg, shown and checked ------------------------------------------------------------------
    def trace_msg(self, cat: Category, expect: dict[str, Expect], oid: str | None = None,
                  label: str = "") -> TraceCheck:
        """Show ``trace-msg`` for one message of ``cat`` and check its exit status and JSON verdicts."""
        mid = msg_id(oid or cat.orders[0])
        width = str(max(self.console.width, 150)) if not self.console.is_terminal else str(self.console.width)
        env = {**os.environ, "COLUMNS": width}
        groups = [a for g in sorted(expect) for a in ("--group", g)]
        check = TraceCheck(cat.name if not label else f"{cat.name} ({label})", mid, expect,
                           expected_exit=expected_exit(expect))
        shown = None
        if self.show:
            self.console.rule(f"trace-msg {mid}  [dim]({label or cat.name})")
            shown = subprocess.run([*TRACE_MSG, mid, *groups, "--store", self.store],
                                   capture_output=True, text=True, timeout=60, env=env, check=False)
            self.console.print((shown.stdout or shown.stderr).rstrip(), markup=False, highlight=False,
                               soft_wrap=True)
        p = subprocess.run([*TRACE_MSG, mid, *groups, "--store", self.store,
                            "--json"], capture_output=True, text=True, timeout=60, env=env, check=False)
        check.exit_code = p.returncode
        for run, what in ((shown, "trace-msg"), (p, "trace-msg --json")):
            if run is not None and run.returncode != check.expected_exit:
                err = run.stderr.strip().splitlines()
                check.problems.append(f"{what} exited {run.returncode}, expected {check.expected_exit}"
                                      + (f": {err[-1]}" if err else ""))
        try:
            doc = json.loads(p.stdout)
        except ValueError:
            check.problems.append(f"trace-msg --json printed no JSON: {p.stdout.strip()[:200]!r}")
            doc = {}
        check.verdicts = {v["consumer_group"]: v for v in doc.get("verdicts", [])}
        if check.expected_exit == 3:  # never sent: no event anywhere, nothing to judge
            if doc.get("events"):
                check.problems.append(f"{len(doc['events'])} events for a message that was never sent")
        else:
            for g, e in sorted(expect.items()):
                v = check.verdicts.get(g)
                if v is None:
                    check.problems.append(f"no verdict for group {g}")
                elif not matches(e, v["verdict"], set(v.get("flags") or ()), v.get("evidence") or ""):
                    check.problems.append(f"group {g}: {v['verdict']} {v.get('flags') or ''}, expected {e.label()}"
                                          + (f" with '{e.evidence}' in the evidence" if e.evidence else ""))
        if check.problems:
            self.console.print(f"[red]trace-msg check failed:[/] {'; '.join(check.problems)}")
        self.checks.append(check)
        return check

    # --- the replay --------------------------------------------------------------------------------------
    def replay_args(self, run_id: str) -> list[str]:
        st = self.story
        args = ["replay", "--run", run_id, "--bootstrap", st.business_bootstrap, "--to-topic", RETRY_TOPIC,
                "--source-sql", SOURCE_SQL, "--source-dsn", f"sqlite:///{st.workdir / 'orders.db'}",
                "--store", self.store, "--spool-dir", str(st.workdir / "spool" / "replay"), "--all"]
        if st.sink == "collector":
            args += ["--audit-bootstrap", st.audit_bootstrap]
        return args

    def replay_dry_run(self, run_id: str) -> subprocess.CompletedProcess[str]:
        """Shown as a person sees it; exit 1: the messages are still lost, nothing was written anywhere."""
        args = self.replay_args(run_id)
        shown = " ".join(a if " " not in a else repr(a) for a in ["msgtrace", *args])
        self.console.rule("msgtrace replay (dry run)")
        self.console.print(f"$ {shown}", markup=False, highlight=False, soft_wrap=True)
        p = msgtrace(*args, env={**os.environ, "COLUMNS": str(max(self.console.width, 150))})
        out = p.stdout.rstrip()
        if not self.show:  # the summary lines only
            out = "\n".join(line for line in out.splitlines() if not line.startswith(("┃", "│", "┏", "┡", "└", " ")))
        self.console.print(out, markup=False, highlight=False, soft_wrap=True)
        return p

    def replay_execute(self, run_id: str) -> dict[str, Any]:
        p = msgtrace(*self.replay_args(run_id), "--execute", "--json")
        return last_json(p, "replay --execute")
