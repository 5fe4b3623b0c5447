-- msgtrace: shard-local per-shard
-- Reconcile, pass 1 per pair, for windows pass 1 by message (reconcile_scan_msg.sql) cannot judge
-- (fan-out: several groups on a topic; mixed topics): every (msg_id, consumer group) pair,
-- returned as counts for plainly delivered pairs (per topic and group) and one row per other pair,
-- whose verdict pass 2 (reconcile_pairs.sql) decides for those messages only.
-- Lean on purpose: one GROUP BY over the events, replicated by ARRAY JOIN to the groups expected for
-- their topic (producer stages to every expected group, consumer stages also to their own). Per
-- event, code = its stage bit (tracer.events.STAGE_BITS) for a producer stage, the bit shifted by 16
-- for a consumer stage (any group), {replay_bit} for an event of a replay run; for the pair's own
-- group the consumer bits are copied back to their place by the shift below. Receipts and outcomes
-- are counted by rows (received in bits 0-19, business_done from bit 20): a duplicated audit event
-- may make a pair look not plain, and pass 2 counts exactly (uniqExact of event_id).
-- {plain} is generated from tracer.analysis.rules: delivered with no flag.
-- {judge_extra}: "OR msg_id IN (expected ids)" when an expected source is given, else nothing.
SELECT
    plain,
    topic,
    grp AS consumer_group,
    if(plain, '', msg_id) AS mid,
    count() AS n
FROM
(
    SELECT
        msg_id,
        grp,
        topic,
        bitAnd(masks, {producer_mask:SQL}) AS pmask,
        bitAnd(masks, {consumer_mask:SQL}) AS cm,
        bitAnd(bitShiftRight(masks, 16), {consumer_mask:SQL}) AS any_cmask,
        bitAnd(counts, 1048575) AS n_recv,
        bitShiftRight(counts, 20) AS n_done,
        bitAnd(masks, {replay_bit:SQL}) = 0 AND {plain:SQL} AS plain
    FROM
    (
        SELECT
            msg_id,
            grp,
            groupBitOr(if(g = grp, bitOr(code, bitShiftRight(code, 16)), code)) AS masks,
            sum(if(g = grp, cnt, 0)) AS counts,
            min(tcode) AS tmin,
            anyIf(topic, topic != '') AS topic,
            if(tmin >= 4611686018427387904, toUInt64(tmin - 4611686018427387904), tmin) AS msg_time
        FROM
        (
            SELECT
                msg_id,
                {stage_bit:SQL} AS bit,
                bitAnd(bit, {producer_mask:SQL}) != 0 AS producer,
                if(producer OR bit = 0, '', if(ifNull(consumer_group, '') = '', '(no group)',
                                               assumeNotNull(consumer_group))) AS g,
                toUInt32(bitOr(if(producer OR bit = 0, toUInt32(bit), bitShiftLeft(toUInt32(bit), 16)),
                               if(notEmpty(attr_keys) AND has(attr_keys, 'replay_run'), toUInt32({replay_bit:SQL}), toUInt32(0)))) AS code,
                toUInt64(multiIf(bit = {received_bit:SQL}, 1, bit = {done_bit:SQL}, 1048576, 0)) AS cnt,
                -- message time: the first sent, else the first event (offset by 2^62 so sent wins)
                if(bit = {sent_bit:SQL}, ts_us, ts_us + 4611686018427387904) AS tcode,
                topic,
                arrayElement({topic_groups:Array(Array(String))}, indexOf({topics:Array(String)}, topic)) AS tg,
                if({restrict_groups:UInt8} = 1, {groups:Array(String)},
                   if(g != '' AND NOT has(tg, g), arrayPushBack(tg, g), tg)) AS garr
            FROM {db:Identifier}.trace_events
            WHERE ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64}
        )
        ARRAY JOIN if(empty(garr), [''], garr) AS grp
        GROUP BY msg_id, grp
        HAVING (msg_time >= {from_us:UInt64} AND msg_time < {to_us:UInt64}) {judge_extra:SQL}
    )
)
GROUP BY plain, topic, consumer_group, mid
