-- trace-msg --key K [--topic T]: the messages sent (or received) with that key, oldest first.
-- Reads lookup_keys by its sort key; {any_topic} = 1 ignores the topic.
SELECT msg_id, any(topic) AS msg_topic, min(ts_us) AS first_ts
FROM {db:Identifier}.lookup_keys
WHERE key = {key:String} AND ({any_topic:UInt8} = 1 OR topic = {topic:String})
GROUP BY msg_id
ORDER BY first_ts
LIMIT {limit:UInt32}
