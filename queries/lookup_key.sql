-- trace-msg --key K [--topic T]: the messages sent (or received) with that key, oldest first.
-- LIMIT 1000: the most --limit allows (18.16 takes no parameter there); the caller keeps its first --limit.
-- Reads lookup_keys by its sort key; {any_topic} = 1 ignores the topic.
SELECT msg_id, any(topic) AS msg_topic, min(ts_us) AS first_ts
FROM {db:Identifier}.lookup_keys
WHERE key = {key:String} AND ({any_topic:UInt8} = 1 OR topic = {topic:String})
GROUP BY msg_id
ORDER BY first_ts
LIMIT 1000
