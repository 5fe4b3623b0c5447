"""The demo's ground truth beside what msgtrace found: comparisons and the tables that show them.

Pure functions of the story's categories and the JSON that ``msgtrace reconcile`` / ``replay`` /
``trace-msg`` printed; nothing here judges a message.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from tracer.demo.base import Category, Expect, msg_id


@dataclass(slots=True)
class Row:
    """One (category, group): how many messages were injected and how many msgtrace judged as expected."""

    category: str
    seed_case: str
    consumer_group: str
    expect: Expect
    injected: int
    detected: int
    misses: list[dict[str, Any]] = field(default_factory=list)
    msg_ids: list[str] = field(default_factory=list)
    #: judged with the expectation's interim verdict (a known gap, reported elsewhere)
    known_gap: int = 0

    @property
    def ok(self) -> bool:
        return self.detected + self.known_gap == self.injected

    def as_json(self) -> dict[str, Any]:
        return {"category": self.category, "seed_case": self.seed_case, "consumer_group": self.consumer_group,
                "expected": self.expect.verdict, "expected_flags": sorted(self.expect.flags),
                "expected_evidence": self.expect.evidence, "injected": self.injected, "detected": self.detected,
                "msg_ids": self.msg_ids, "misses": self.misses, "known_gap": self.known_gap,
                "known_gap_verdict": self.expect.interim if self.known_gap else "",
                "known_gap_why": self.expect.interim_why if self.known_gap else "", "ok": self.ok}


def _found(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["msg_id"], m["consumer_group"]): m for m in report.get("messages", [])}


def matches(exp: Expect, verdict: str, flags: set[str] | frozenset[str], evidence: str) -> bool:
    return verdict == exp.verdict and exp.flags <= set(flags) and exp.evidence in evidence


def compare(cats: dict[str, Category], report: dict[str, Any], after: bool = False) -> list[Row]:
    """Injected ground truth beside the reconciler's verdicts, per category and group (``after``: the
    expectations after the replay). A message the report does not list was judged plainly delivered."""
    found = _found(report)
    rows = []
    for cat in cats.values():
        for group, exp in (cat.after if after else cat.expect).items():
            row = Row(cat.name, cat.seed_case, group, exp, len(cat.orders), 0, msg_ids=[msg_id(o) for o in cat.orders])
            for oid in cat.orders:
                m = found.get((msg_id(oid), group)) or {"verdict": "delivered", "flags": [], "evidence": ""}
                flags = set(m.get("flags") or ())
                if matches(exp, m["verdict"], flags, m.get("evidence") or ""):
                    row.detected += 1
                elif exp.interim and m["verdict"] == exp.interim and exp.flags <= flags:
                    row.known_gap += 1
                else:
                    row.misses.append({"msg_id": msg_id(oid), "verdict": m["verdict"],
                                       "flags": sorted(m.get("flags") or ()), "evidence": m.get("evidence") or ""})
            rows.append(row)
    return rows


def _got(r: Row, of: bool = False) -> str:
    miss = "; ".join(f"{m['msg_id']}={m['verdict']}" + "".join(f" +{f}" for f in m["flags"]) for m in r.misses[:3])
    known = f" [yellow]{r.known_gap} {r.expect.interim}: known gap[/]" if r.known_gap else ""
    return str(r.detected) + (f"/{r.injected}" if of else "") + known + (f" [red]{miss}[/]" if miss else "")


def _mark(r: Row) -> str:
    if not r.ok:
        return "[red]✗[/]"
    return "[yellow]~[/]" if r.known_gap else "[green]✓[/]"


def comparison_table(rows: list[Row]) -> Table:
    t = Table(title="injected (ground truth) vs detected (msgtrace reconcile)")
    for col in ("category", "group", "expected verdict"):
        t.add_column(col)
    t.add_column("injected", justify="right")
    t.add_column("detected", justify="right")
    t.add_column("")
    prev = None
    for r in rows:
        t.add_row(r.category if r.category != prev else "", r.consumer_group, r.expect.label(), str(r.injected),
                  _got(r), _mark(r))
        prev = r.category
    return t


def remedies_table(cats: dict[str, Category], seeds_title: str = "injected as (seeds)") -> Table:
    from tracer.verdicts import REMEDY

    t = Table(title="what was injected, and the remedy msgtrace points to")
    t.add_column("verdict")
    t.add_column(seeds_title)
    t.add_column("remedy")
    for cat in cats.values():
        verdict = cat.expect["red-packet"].verdict if cat.name != "redelivered" else "delivered +redelivered"
        remedy = REMEDY.get(cat.name, "") or ("make processing idempotent (it was: no double payment)"
                                              if cat.name == "redelivered" else "-")
        t.add_row(verdict, cat.seed_case, remedy)
    return t


def before_after_table(before: list[Row], after: list[Row], replay: dict[str, Any],
                       cats: dict[str, Category]) -> Table:
    """Per category and group: the ground truth, the first verdict, what the replay did, the verdict after."""
    how: dict[str, str] = {}
    for m in replay.get("messages", []):
        src = m.get("source") or ""
        how[m["msg_id"]] = f"{m.get('result', '')} from {src.replace('_', ' ')}" if src else str(m.get("result", ""))
    t = Table(title="before and after the replay, beside the ground truth (detected / injected)")
    for col in ("category", "group", "before", "replay", "after: expected", "after", ""):
        t.add_column(col)
    prev = None
    for b, a in zip(before, after):
        cat = cats[b.category]
        first = b.category != prev
        done = ", ".join(sorted({how.get(msg_id(o), "not replayed") for o in cat.orders})) if first else ""
        exp = a.expect.label() + (f" [dim](evidence: {a.expect.evidence}…)[/]" if a.expect.evidence else "")
        t.add_row(b.category if first else "", b.consumer_group, f"{b.expect.label()} {b.detected}/{b.injected}",
                  done, exp, _got(a, of=True), _mark(a))
        prev = b.category
    notes = sorted({r.expect.interim_why for r in after if r.known_gap})
    if notes:
        t.caption = "known gap: " + "; ".join(notes)
    return t


def replay_table(result: dict[str, Any], cats: dict[str, Category]) -> Table:
    """What ``msgtrace replay --execute`` did, per message."""
    cat_of = {msg_id(o): c.name for c in cats.values() for o in c.orders}
    t = Table(title=f"msgtrace replay --execute: run {result.get('replay_run', '?')}, {result.get('counts')}")
    for col in ("message", "category", "verdict", "from", "result"):
        t.add_column(col)
    for m in result.get("messages", []):
        pub = m.get("published") or {}
        res = str(m.get("result", "")) + (f" {pub.get('topic')}/{pub.get('partition')}@{pub.get('offset')}"
                                          if pub else "")
        t.add_row(m["msg_id"], cat_of.get(m["msg_id"], "?"), ", ".join(m.get("verdicts") or ()),
                  str(m.get("from") or m.get("source") or ""), res)
    return t


def unrecovered_lines(cats: dict[str, Category], report: dict[str, Any]) -> list[str]:
    """For each category the replay could not recover: one message, its verdict and its evidence (which
    carries the replay attempt), in words."""
    found = _found(report)
    out = []
    for cat in cats.values():
        for group, exp in sorted(cat.after.items()):
            if exp.verdict == "delivered" or not cat.orders:
                continue
            m = found.get((msg_id(cat.orders[0]), group))
            if m is not None:
                out.append(f"{m['msg_id']} ({group}): {m['verdict']}: {m.get('evidence') or ''}")
    return out
