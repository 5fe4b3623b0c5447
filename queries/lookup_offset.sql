-- trace-msg --at TOPIC/PARTITION@OFFSET: the messages the broker stored there (more than one when a
-- LIMIT 1000: the most --limit allows (18.16 takes no parameter there); the caller keeps its first --limit.
-- broker lost its log and reused offsets). Reads lookup_offsets by its sort key.
SELECT msg_id, min(ts_us) AS first_ts
FROM {db:Identifier}.lookup_offsets
WHERE topic = {topic:String} AND partition = {partition:Int32} AND offset = {offset:Int64}
GROUP BY msg_id
ORDER BY first_ts
LIMIT 1000
