-- Stage funnel and hop latencies per (topic, consumer group) for the messages of a window.
-- Producer stages count once per group row of their message (so each row is one message's path to
-- that group); a message no group received shows up under consumer_group ''.
-- Latencies in microseconds: quantiles 0.5, 0.9, 0.99 of each hop (only where both ends exist and
-- are in order: clock skew between hosts can put them backwards).
SELECT
    topic,
    grp AS consumer_group,
    count() AS messages,
    countIf(bitAnd(pmask, 1) != 0) AS sent,
    countIf(bitAnd(pmask, 2) != 0) AS send_failed,
    countIf(bitAnd(pmask, 4) != 0) AS broker_acked,
    countIf(bitAnd(cm, 8) != 0) AS received,
    countIf(bitAnd(cm, 16) != 0) AS offset_committed,
    countIf(bitAnd(cm, 32) != 0) AS business_done,
    countIf(bitAnd(cm, 64) != 0) AS business_failed,
    countIf(bitAnd(cm, 128) != 0) AS dead_lettered,
    quantilesIf(0.5, 0.9, 0.99)(ack_ts - sent_ts, sent_ts > 0 AND ack_ts >= sent_ts) AS lat_sent_acked,
    quantilesIf(0.5, 0.9, 0.99)(recv_ts - ack_ts, ack_ts > 0 AND recv_ts >= ack_ts) AS lat_acked_received,
    quantilesIf(0.5, 0.9, 0.99)(done_ts - recv_ts, recv_ts > 0 AND done_ts >= recv_ts) AS lat_received_done,
    quantilesIf(0.5, 0.9, 0.99)(done_ts - sent_ts, sent_ts > 0 AND done_ts >= sent_ts) AS lat_sent_done
FROM
(
    SELECT
        topic,
        pmask,
        sent_ts,
        ack_ts,
        grp,
        indexOf(groups, grp) AS gi,
        if(gi > 0, g_mask[gi], 0) AS cm,
        if(gi > 0, g_recv[gi], 0) AS recv_ts,
        if(gi > 0, g_done[gi], 0) AS done_ts
    FROM
    (
        SELECT
            msg_id,
            anyIf(t1, t1 != '') AS topic,
            groupBitOrIf(mask1, g = '') AS pmask,
            maxIf(sent1, g = '') AS sent_ts,
            maxIf(ack1, g = '') AS ack_ts,
            if(sent_ts > 0, sent_ts, min(first1)) AS msg_time,
            groupArrayIf(g, g != '') AS groups,
            groupArrayIf(mask1, g != '') AS g_mask,
            groupArrayIf(recv1, g != '') AS g_recv,
            groupArrayIf(done1, g != '') AS g_done
        FROM
        (
            SELECT
                msg_id,
                if(stage IN ('sent', 'send_failed', 'broker_acked'), '',
                   if(ifNull(consumer_group, '') = '', '(no group)', assumeNotNull(consumer_group))) AS g,
                groupBitOr(toUInt8(transform(stage,
                    ['sent', 'send_failed', 'broker_acked', 'received', 'offset_committed',
                     'business_done', 'business_failed', 'dead_lettered'],
                    [1, 2, 4, 8, 16, 32, 64, 128], 0))) AS mask1,
                minIf(ts_us, stage = 'sent') AS sent1,
                minIf(ts_us, stage = 'broker_acked') AS ack1,
                minIf(ts_us, stage = 'received') AS recv1,
                minIf(ts_us, stage = 'business_done') AS done1,
                min(ts_us) AS first1,
                anyIf(topic, topic != '') AS t1
            FROM {db:Identifier}.trace_events
            WHERE ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64}
            GROUP BY msg_id, g
        )
        GROUP BY msg_id
        HAVING msg_time >= {from_us:UInt64} AND msg_time < {to_us:UInt64}
    )
    ARRAY JOIN if(empty(groups), [''], groups) AS grp
)
GROUP BY topic, consumer_group
ORDER BY topic, consumer_group
