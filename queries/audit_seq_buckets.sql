-- Where the seq numbers of the given emitters have holes, coarsely: per block of {bucket} seq
-- numbers, how many are stored and the lowest and highest with their times. A hole between two
-- blocks is found here; a block holding fewer numbers than its span is read in detail
-- (audit_seq_points.sql). Only emitters known to have holes are asked about (tracer.analysis.gaps).
SELECT
    emitter_id,
    intDiv(seq, {bucket:UInt64}) AS b,
    uniqExact(seq) AS n,
    min(seq) AS lo,
    max(seq) AS hi,
    argMin(ts_us, seq) AS lo_ts,
    argMax(ts_us, seq) AS hi_ts
FROM {db:Identifier}.trace_events
WHERE ts_us >= {from_us:UInt64} AND ts_us < {to_us:UInt64} AND has({emitters:Array(String)}, emitter_id)
    AND seq > 0
GROUP BY emitter_id, b
ORDER BY emitter_id, b
