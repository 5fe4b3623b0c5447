-- Where each listed message's stages ran, per side: g = '' the producer, else the consumer group.
-- Read by key (the table is ordered by msg_id) for the few messages that were not plainly delivered:
-- the host/pid that recorded each side's last stage (the producer host / consumer host of a burst),
-- and, for the consumer side, the instances (host/pid) that received it: two instances receiving
-- one record is a rebalance seen from the audit.
-- {ids} is the run's generated staging table of msg_ids (never user input); {producer_stages} the
-- producer stages of the contract.
SELECT
    msg_id,
    if(stage IN {producer_stages:SQL}, '',
       if(ifNull(consumer_group, '') = '', '(no group)', assumeNotNull(consumer_group))) AS g,
    argMax(host, ts_us) AS last_host,
    argMax(pid, ts_us) AS last_pid,
    argMax(service, ts_us) AS last_service,
    groupUniqArrayIf(concat(host, '/', toString(pid)), stage = 'received') AS receivers,
    argMinIf(concat(host, '/', toString(pid)), ts_us, stage = 'received') AS first_receiver,
    argMaxIf(concat(host, '/', toString(pid)), ts_us, stage = 'received') AS last_receiver,
    minIf(ts_us, stage = 'received') AS first_recv_ts,
    maxIf(ts_us, stage = 'received') AS last_recv_ts,
    uniqExactIf(ts_us, stage = 'received') AS receipts
FROM {db:Identifier}.trace_events
WHERE ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64}
  AND msg_id IN (SELECT msg_id FROM {db:Identifier}.{ids:Identifier})
GROUP BY msg_id, g
