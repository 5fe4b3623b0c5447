-- trace-msg --topic T --from A --to B: the messages sent to T in [A, B), oldest first. Reads
-- LIMIT 1000: the most --limit allows (18.16 takes no parameter there); the caller keeps its first --limit.
-- lookup_times by its sort key (topic, ts_us).
SELECT msg_id, min(ts_us) AS first_ts
FROM {db:Identifier}.lookup_times
WHERE topic = {topic:String} AND ts_us >= {from_us:UInt64} AND ts_us < {to_us:UInt64}
GROUP BY msg_id
ORDER BY first_ts
LIMIT 1000
