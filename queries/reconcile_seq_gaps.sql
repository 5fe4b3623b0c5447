-- Emitters whose seq numbers show gaps in the window: the audit lost some of their events.
-- {distinct_seq}: uniqExact(seq), or on chDB groupBitmap(seq) (exact too, cheaper; not on 18.16).
SELECT emitter_id, lo, hi, n, hi - lo + 1 - n AS missing
FROM
(
    SELECT emitter_id, min(seq) AS lo, max(seq) AS hi, {distinct_seq:SQL} AS n
    FROM {db:Identifier}.trace_events
    WHERE ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64} AND emitter_id != '' AND seq > 0
    GROUP BY emitter_id
)
WHERE hi - lo + 1 > n
