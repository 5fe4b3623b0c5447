-- Emitters whose seq numbers show gaps: the audit lost some of their events. One scan of
-- [scan_from, scan_to), scan_to a margin past the window's cut: lo, hi, n, missing describe the
-- numbering before the cut (the window's gaps); xlo, xhi, xn the whole scan, so that a hole that
-- starts in the window and ends after the cut is seen too (tracer.analysis.gaps).
-- One distinct count over the whole scan ({distinct_seq}: uniqExact(seq), or on chDB
-- groupBitmap(seq), exact too and cheaper; not on 18.16), and one over the events after the cut
-- ({distinct_seq_after}: few rows, cheap): when every seq number after the cut is above every one
-- before it (seq order is emit order, and ts_us the emit time), the window's count is their
-- difference. Otherwise exact = 0, and tracer.analysis.gaps counts that emitter again with
-- reconcile_seq_gaps_exact.sql (two full distinct counts: ~0.25x the bare GROUP BY msg_id more).
SELECT emitter_id, lo, hi, n, if(n > 0, hi - lo + 1 - n, 0) AS missing, xlo, xhi, xn, exact
FROM
(
    SELECT emitter_id,
        minIf(seq, ts_us < {cut:UInt64}) AS lo,
        maxIf(seq, ts_us < {cut:UInt64}) AS hi,
        min(seq) AS xlo,
        max(seq) AS xhi,
        {distinct_seq:SQL} AS xn,
        countIf(ts_us >= {cut:UInt64}) AS n_after,
        minIf(seq, ts_us >= {cut:UInt64}) AS a_lo,
        {distinct_seq_after:SQL} AS a_n,
        toUInt8(n_after = 0 OR hi < a_lo) AS exact,
        if(n_after = 0, xn, toUInt64(xn - a_n)) AS n
    FROM {db:Identifier}.trace_events
    WHERE ts_us >= {scan_from:UInt64} AND ts_us < {scan_to:UInt64} AND emitter_id != '' AND seq > 0
    GROUP BY emitter_id
)
WHERE xhi - xlo + 1 > xn
