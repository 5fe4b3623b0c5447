-- Log resets of one partition (e.g. a restarted in-memory broker starting again at offset 0): times of
-- acks whose offset is below the previous ack's, when it is 0 or came after a pause (>= 100 ms), so
-- two producers' acks arriving slightly out of order are not taken for a reset.
SELECT
    arrayFilter((t, o, po, pt) -> o < po AND (o = 0 OR t - pt >= 100000),
                ts_arr, off_arr,
                arrayPopBack(arrayPushFront(off_arr, toInt64(-1))),
                arrayPopBack(arrayPushFront(ts_arr, toUInt64(0)))) AS resets
FROM
(
    SELECT groupArray(ts_us) AS ts_arr, groupArray(off) AS off_arr
    FROM
    (
        SELECT ts_us, ifNull(offset, toInt64(-1)) AS off
        FROM {db:Identifier}.trace_events
        WHERE topic = {topic:String} AND partition = {part:Int32} AND stage = 'broker_acked'
          AND ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64}
        ORDER BY ts_us, off
        LIMIT 1 BY ts_us, off
    )
)
