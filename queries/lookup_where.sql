-- Where the matched messages were stored (their first ack, else first receipt) and their key: the
-- columns of trace-msg's match list. Read by key (msg_id) for a short list of ids.
SELECT
    msg_id,
    anyIf(topic, topic != '') AS topic,
    argMinIf(partition, ts_us, stage IN ('broker_acked', 'received') AND partition IS NOT NULL) AS partition,
    argMinIf(offset, ts_us, stage IN ('broker_acked', 'received') AND offset IS NOT NULL) AS offset,
    anyIf(key, key IS NOT NULL) AS key,
    minIf(ts_us, stage = 'sent') AS sent_ts
FROM {db:Identifier}.trace_events
WHERE msg_id IN (SELECT arrayJoin({ids:Array(String)}))
GROUP BY msg_id
