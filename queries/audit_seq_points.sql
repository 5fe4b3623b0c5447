-- Every stored seq number (with its earliest time) of one emitter in the given blocks of {bucket}
-- seq numbers: the blocks audit_seq_buckets.sql found holes inside (at most {bucket} rows each).
SELECT seq, min(ts_us) AS ts
FROM {db:Identifier}.trace_events
WHERE ts_us >= {from_us:UInt64} AND ts_us < {to_us:UInt64} AND emitter_id = {emitter:String}
    AND has({buckets:Array(UInt64)}, intDiv(seq, {bucket:UInt64}))
GROUP BY seq
ORDER BY seq
