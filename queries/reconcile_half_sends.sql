-- msgtrace: shard-local group-by
-- The transaction of the half message (RocketMQ: sent with attrs rocketmq.half = 'true' or
-- rocketmq.transaction_id) of a few unacked messages, read by primary key after pass 2: its evidence
-- names the transaction in doubt (reconcile_pairs.sql reads no attr_values). The latest half sent wins;
-- '' where it carries no transaction id (tracer.analysis.facts.half_txn says so in words).
SELECT
    msg_id,
    argMax(if(has(attr_keys, 'rocketmq.transaction_id'), attr_values[indexOf(attr_keys, 'rocketmq.transaction_id')],
              ''), ts_us) AS txn_id
FROM {db:Identifier}.trace_events
WHERE msg_id IN (SELECT arrayJoin({ids:Array(String)}))
  AND ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64} AND stage = 'sent'
  AND (has(attr_keys, 'rocketmq.transaction_id')
       OR (has(attr_keys, 'rocketmq.half') AND attr_values[indexOf(attr_keys, 'rocketmq.half')] = 'true'))
GROUP BY msg_id
