-- Reconcile, pass 1 with the default groups when every topic has at most one expected consumer
-- group (the common case): like reconcile_scan_single.sql, but aggregated per msg_id alone (no
-- (msg_id, group) key). A message is plain when its topic's group received it exactly once and
-- finished it exactly once, no other group left a consumer-side event, and nothing else makes it
-- a verdict other than delivered (see reconcile_scan.sql). Plain messages come back as one count
-- per topic and group; every other message of the window by its id, and pass 2
-- (reconcile_pairs.sql) judges all its pairs (putting plainly delivered ones back among the counts).
-- Counts are of rows: duplicated audit events make a message a candidate, and pass 2 counts exactly.
-- JUDGE_EXTRA marker: "OR msg_id IN (expected ids)" when an expected source is given.
-- Stage bits: sent 1, send_failed 2, broker_acked 4, received 8, offset_committed 16,
-- business_done 32, business_failed 64, dead_lettered 128.
SELECT
    plain,
    topic,
    if(plain, tgroup, '') AS consumer_group,
    if(plain, '', msg_id) AS mid,
    count() AS n
FROM
(
    SELECT
        msg_id,
        topic,
        transform(topic, {topics:Array(String)}, {first_groups:Array(String)}, '') AS tgroup,
        bitAnd(masks, 255) AS pmask,
        bitAnd(bitShiftRight(masks, 8), 255) AS cm,
        bitShiftRight(masks, 16) AS other_cm,
        bitAnd(counts, 1048575) AS n_recv,
        bitShiftRight(counts, 20) AS n_done,
        bitAnd(pmask, 3) != 0
            AND NOT (bitAnd(pmask, 4) != 0 AND bitAnd(pmask, 1) = 0)
            AND NOT (bitAnd(pmask, 2) != 0 AND bitAnd(pmask, 4) = 0)
            AND other_cm = 0 AND n_recv = 1 AND n_done = 1 AS plain
    FROM
    (
        SELECT
            msg_id,
            -- producer bits in 0-7; consumer bits of the topic's group in 8-15, of other groups in 16-23
            groupBitOr(code) AS masks,
            -- receipts (bits 0-19) and outcomes (20-) of the topic's group
            sum(cnt) AS counts,
            min(tcode) AS tmin,
            anyIf(topic, topic != '') AS topic,
            if(tmin >= 4611686018427387904, toUInt64(tmin - 4611686018427387904), tmin) AS msg_time
        FROM
        (
            SELECT
                msg_id,
                toUInt8(transform(stage,
                    ['sent', 'send_failed', 'broker_acked', 'received', 'offset_committed',
                     'business_done', 'business_failed', 'dead_lettered'],
                    [1, 2, 4, 8, 16, 32, 64, 128], 0)) AS bit,
                bit >= 8 AND if(ifNull(consumer_group, '') = '', '(no group)', assumeNotNull(consumer_group))
                    = transform(topic, {topics:Array(String)}, {first_groups:Array(String)}, '') AS own,
                toUInt32(if(bit < 8, bit, bitShiftLeft(toUInt32(bit), if(own, 8, 16)))) AS code,
                toUInt64(if(own, multiIf(bit = 8, 1, bit = 32, 1048576, 0), 0)) AS cnt,
                -- message time: the first sent, else the first event (offset by 2^62 so sent wins)
                if(bit = 1, ts_us, ts_us + 4611686018427387904) AS tcode,
                topic
            FROM {db:Identifier}.trace_events
            WHERE ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64}
        )
        GROUP BY msg_id
        HAVING (msg_time >= {from_us:UInt64} AND msg_time < {to_us:UInt64}) /*JUDGE_EXTRA*/
    )
)
GROUP BY plain, topic, consumer_group, mid
