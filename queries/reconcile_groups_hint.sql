-- A hint, never a verdict: does some topic have several consumer groups (fan-out)? Reads only the
-- first 10000 received rows it meets (LIMIT; a literal, as 18.16 takes no expression there), so it
-- costs ~10 ms on 1M messages. With fan-out, pass 1 by message (reconcile_scan_msg.sql) cannot judge
-- the window and reconcile.py goes straight to the per-pair pass (reconcile_topic_groups.sql +
-- reconcile_scan.sql); a wrong hint costs time only.
SELECT count() AS n
FROM
(
    SELECT topic
    FROM
    (
        SELECT topic, ifNull(consumer_group, '') AS g
        FROM {db:Identifier}.trace_events
        WHERE ts_us >= {from_us:UInt64} AND ts_us < {cut:UInt64} AND stage = 'received'
        LIMIT 10000
    )
    GROUP BY topic
    HAVING uniqExact(g) > 1
)
