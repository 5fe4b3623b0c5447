-- Emitters whose seq numbers show gaps, exactly in every case, for the given emitters (those
-- reconcile_seq_gaps.sql could not count alone: seq numbers before and after the cut interleave).
-- Emitters whose seq numbers show gaps: the audit lost some of their events. One scan of
-- [scan_from, scan_to), scan_to a margin past the window's cut: lo, hi, n, missing describe the
-- numbering before the cut (the window's gaps); xlo, xhi, xn the whole scan, so that a hole that
-- starts in the window and ends after the cut is seen too (tracer.analysis.gaps).
-- {distinct_seq}: uniqExact(seq), or on chDB groupBitmap(seq) (exact too, cheaper; not on 18.16);
-- {distinct_seq_window}: the same counting only the events before the cut.
SELECT emitter_id, lo, hi, n, if(n > 0, hi - lo + 1 - n, 0) AS missing, xlo, xhi, xn
FROM
(
    SELECT emitter_id,
        minIf(seq, ts_us < {cut:UInt64}) AS lo,
        maxIf(seq, ts_us < {cut:UInt64}) AS hi,
        {distinct_seq_window:SQL} AS n,
        min(seq) AS xlo,
        max(seq) AS xhi,
        {distinct_seq:SQL} AS xn
    FROM {db:Identifier}.trace_events
    WHERE ts_us >= {scan_from:UInt64} AND ts_us < {scan_to:UInt64} AND emitter_id != '' AND seq > 0
      AND emitter_id IN (SELECT arrayJoin({emitters:Array(String)}))
    GROUP BY emitter_id
)
WHERE xhi - xlo + 1 > xn
