-- The events of the messages a replay considers (read by primary key, de-duplicated by event_id): where
-- the business topic holds each (broker_acked, received), which DLQ took it (dead_lettered), which
-- groups completed it (business_done), and earlier replays (attrs replay_run).
SELECT
    event_id,
    msg_id,
    stage,
    ts_us,
    topic,
    toInt64(ifNull(partition, -1)) AS part,
    ifNull(offset, toInt64(-1)) AS off,
    ifNull(consumer_group, '') AS g,
    attr_keys,
    attr_values
FROM {db:Identifier}.trace_events
WHERE msg_id IN (SELECT arrayJoin({ids:Array(String)}))
ORDER BY msg_id, ts_us
LIMIT 1 BY event_id
