-- A hint, never a verdict, from the first 10000 receipts of the window (LIMIT; a literal, as 18.16
-- takes no expression there; ~10 ms on 1M messages): the (topic, group) pairs they name, with the
-- hashes reconcile_scan_msg.sql uses for them. A topic with several groups (fan-out) sends the run
-- straight to the per-pair pass (reconcile_topic_groups.sql + reconcile_scan.sql), and the names
-- behind pass 1's hashes are looked up here first; a wrong hint costs time only.
SELECT DISTINCT
    cityHash64(topic) AS th,
    topic,
    cityHash64(g) AS gh,
    if(g = '', '(no group)', g) AS consumer_group
FROM
(
    SELECT topic, ifNull(consumer_group, '') AS g
    FROM {db:Identifier}.trace_events
    WHERE ts_us >= {from_us:UInt64} AND ts_us < {cut:UInt64} AND stage = 'received'
    LIMIT 10000
)
