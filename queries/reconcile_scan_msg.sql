-- msgtrace: shard-local per-shard
-- Reconcile, pass 1 by message (the usual case: the consumer stages of each message belong to one
-- group). One lean GROUP BY over the scanned range that also finds the groups expected on each
-- topic, so reconcile_topic_groups.sql (a second read of the window) is not needed. It groups by
-- h = cityHash64(msg_id), not by the id: a UInt64 key makes the aggregation ~15 % cheaper than a
-- String key (no key strings stored or compared). Candidates come back as hashes (mid), whose ids
-- reconcile_resolve.sql finds (or pass 2 selects its events by hash directly). Two messages with one
-- hash are one group here: their events together are never plain unless they happen to make exactly
-- one event per stage; any other such group is a candidate and pass 2 judges both ids exactly.
-- Row kinds:
--   0  plainly delivered judged messages: one count per (topic, group);
--   1  every other judged message, by its hash: pass 2 (reconcile_pairs.sql) judges all its pairs;
--   3  messages outside the window (not judged), counted per (topic, group, recvwin);
--   4  messages this shape cannot judge: consumer stages of more than one group or events naming
--      different topics (judged, or received in the window), or a judged message with a producer
--      stage naming a consumer group. tracer.analysis then judges the window per pair
--      (reconcile_topic_groups.sql + reconcile_scan.sql).
-- recvwin = 1 when the message has a `received` in [from, cut): its group is then one of the groups
-- expected on its topic (reconcile_topic_groups.sql's definition), so the groups of a topic are
-- those of its rows with recvwin = 1, and a delivered message counts as plain (kind 0) only with
-- recvwin = 1. Plain ({plain}, generated from tracer.analysis.rules) = the rules say delivered
-- with no flag, no replay event, and exactly one event per stage (rows = stage bits set,
-- {once}): a duplicated audit event, a redelivery or a second outcome makes a message kind 1,
-- and pass 2 judges it exactly.
-- Topics and groups are compared by cityHash64 (th, gh; a consumer stage without a group hashes ''
-- and is '(no group)'): string aggregates per message (min/max of the names) cost more than the
-- rest of the query. The names behind the hashes come from the first receipts of the window
-- (reconcile_groups_hint.sql), else from reconcile_names.sql. Two different names with one 64-bit
-- hash in a window would be taken for one.
-- code per event: the stage bit (tracer.events.STAGE_BITS, {stage_bit}), {replay_bit} for an
-- event of a replay run (notEmpty first: most events have no attrs, and it reads only the sizes),
-- 65536 for a received in [from, cut), 131072 for a producer stage naming a
-- consumer group.
-- {judge_extra}: "OR h IN (hashes of the expected ids)" when an expected source is given, else nothing.
-- {group_filter}: with one group named (--group), "AND (producer stage OR that group)"; else
-- nothing (a constant-false OR would still be evaluated per row).
-- ifNull(cityHash64(consumer_group), cityHash64('')): NULL and '' hash alike ('(no group)'); not
-- cityHash64(assumeNotNull(..)), as the value under a NULL is whatever the writer left there.
SELECT
    kind,
    th,
    gh,
    mid,
    recvwin,
    count() AS n
FROM
(
    SELECT
        h,
        t_lo AS th,
        bitAnd(masks, {producer_mask:SQL}) AS pm,
        bitAnd(masks, {consumer_mask:SQL}) AS cm,
        bitAnd(bitShiftRight(masks, 16), 1) AS recvwin,
        bitAnd(bitShiftRight(masks, 17), 1) AS producer_group,
        if(cm = 0, toUInt64(0), g_lo) AS gh,
        cm != 0 AND g_lo != g_hi AS multi,
        n_ev = {once:SQL} AS once,
        toUInt8(multiIf(
            (multi OR t_lo != t_hi) AND (judged OR recvwin = 1), 4,
            judged AND producer_group = 1, 4,
            NOT judged, 3,
            once AND recvwin = 1 AND {plain:SQL}, 0,
            1)) AS kind,
        if(kind = 1, h, toUInt64(0)) AS mid
    FROM
    (
        SELECT
            h,
            groupBitOr(code) AS masks,
            count() AS n_ev,
            min(tcode) AS tmin,
            if(tmin >= 4611686018427387904, toUInt64(tmin - 4611686018427387904), tmin) AS msg_time,
            ((msg_time >= {from_us:UInt64} AND msg_time < {to_us:UInt64}) {judge_extra:SQL}) AS judged,
            min(th1) AS t_lo,
            max(th1) AS t_hi,
            minIf(gh1, consumer = 1) AS g_lo,
            maxIf(gh1, consumer = 1) AS g_hi
        FROM
        (
            SELECT
                cityHash64(msg_id) AS h,
                {stage_bit:SQL} AS bit,
                toUInt8(bitAnd(bit, {consumer_mask:SQL}) != 0) AS consumer,
                toUInt32(bitOr(bitOr(bitOr(toUInt32(bit), if(notEmpty(attr_keys) AND has(attr_keys, 'replay_run'),
                                                           toUInt32({replay_bit:SQL}), toUInt32(0))),
                                     if(bit = {received_bit:SQL} AND ts_us >= {from_us:UInt64}, toUInt32(65536), toUInt32(0))),
                               if(consumer = 0 AND gh1 != cityHash64(''), toUInt32(131072), toUInt32(0)))) AS code,
                -- message time: the first sent, else the first event (offset by 2^62 so sent wins)
                if(bit = {sent_bit:SQL}, ts_us, ts_us + 4611686018427387904) AS tcode,
                cityHash64(topic) AS th1,
                ifNull(cityHash64(consumer_group), cityHash64('')) AS gh1
            FROM {db:Identifier}.trace_events
            WHERE ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64} {group_filter:SQL}
        )
        GROUP BY h
    )
)
GROUP BY kind, th, gh, mid, recvwin
