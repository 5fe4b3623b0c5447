"""The audit's own gaps: emitters whose seq numbers have holes in the scanned range.

Each emitter numbers its events 1, 2, 3, ... (DESIGN.md, wire format); a hole means audit events
were lost (a spool overflowed, a disk died). A non-delivered verdict of a message with events from
such an emitter carries the ``emitter_seq_gap`` flag: its verdict may rest on missing events.
"""
from __future__ import annotations

from tracer import verdicts as V
from tracer.analysis.result import SeqGap, Verdict
from tracer.analysis.sql import render
from tracer.analysis.window import Window
from tracer.store import Store


def seq_gaps(store: Store, window: Window) -> list[SeqGap]:
    """Emitters with seq gaps in the window's scanned range (exact, duplicates included)."""
    # groupBitmap: an exact distinct count ~2x cheaper than uniqExact on chDB; not on 18.16
    distinct = "groupBitmap(seq)" if store.engine == "chdb" else "uniqExact(seq)"
    rows = store.query(render("reconcile_seq_gaps", distinct_seq=distinct), window.scan(), small=True)
    return [SeqGap(r["emitter_id"], r["lo"], r["hi"], r["n"], r["missing"]) for r in rows]


def flag_seq_gaps(store: Store, rows: list[Verdict], window: Window,
                  gaps: list[SeqGap] | None = None) -> list[SeqGap]:
    """Flag non-delivered verdicts of messages whose emitters show seq gaps; return the gaps
    (``gaps``: already read, e.g. by :meth:`tracer.analysis.broker.EvidenceContext.gaps`)."""
    if gaps is None:
        gaps = seq_gaps(store, window)
    if not gaps:
        return []
    msgs = {r["msg_id"] for r in store.query(render("reconcile_gap_msgs"), {
        **window.scan(), "emitters": [g.emitter_id for g in gaps]})}
    for r in rows:
        if r.verdict != V.DELIVERED and r.msg_id in msgs and V.EMITTER_SEQ_GAP not in r.flags:
            r.flags.append(V.EMITTER_SEQ_GAP)
            r.evidence += "; an emitter of this message shows seq gaps in the window (audit events lost)"
    return gaps
