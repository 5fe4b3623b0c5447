-- Where each listed message's stages last ran, per side: g = '' producer, else the consumer group.
-- {ids} is the run's generated staging table of msg_ids (never user input); {producer_stages} the
-- producer stages of the contract.
SELECT
    msg_id,
    if(stage IN {producer_stages:SQL}, '',
       if(ifNull(consumer_group, '') = '', '(no group)', assumeNotNull(consumer_group))) AS g,
    argMax(host, ts_us) AS last_host,
    argMax(pid, ts_us) AS last_pid,
    argMax(service, ts_us) AS last_service
FROM {db:Identifier}.trace_events
WHERE ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64}
  AND msg_id IN (SELECT msg_id FROM {db:Identifier}.{ids:Identifier})
GROUP BY msg_id, g
