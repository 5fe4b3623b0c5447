-- Reconcile, pass 2 (details): one verdict per (msg_id, consumer group) with the facts that decide
-- it, for the messages pass 1 (reconcile_scan*.sql) found not plainly delivered; also the reference
-- for trace-msg's Python judge. With collapse = 1, plainly delivered pairs come back as counts.
-- Runs unchanged on chDB and ClickHouse 18.16 (no JOIN: UNION ALL + GROUP BY + bitmasks).
--
-- Level 1 aggregates the events (and the expected ids, if any) per (msg_id, g) where g = '' for
-- producer-side stages and the consumer group for consumer-side stages; duplicates of an audit
-- event (same event_id) change nothing: bit OR, min/max are idempotent and counts are uniqExact.
-- Level 2 folds the groups of a message into parallel arrays; level 3 expands the pairs to judge
-- (expected groups of the topic + groups seen for this message) and names the verdict; level 4
-- collapses plainly delivered pairs into one count per (topic, group) so that only pairs worth
-- reading travel to Python.
-- {groups}: with restrict_groups = 1 exactly the groups judged, else groups added to every message's.
-- unsure = 1 only in the variant reconcile.py makes by replacing the COUNTS..END_COUNTS fragment
-- (_FRAG_ROW_COUNTS): received / business_done counted by rows, which needs no read of event_id
-- (the widest column); a count that duplicated audit events could inflate (more than two rows, or
-- two with one ts_us) sets unsure, and reconcile.py judges those messages again with this text.
-- Markers replaced by reconcile.py with fixed fragments (never user input):
--   EVENT_FILTER marker:    extra predicate on trace_events (e.g. one msg_id for trace-msg)
--   EXPECTED_UNION marker:  UNION ALL of the run's expected-id staging table, or nothing
--   JUDGE_FILTER marker:    which messages are judged (window by message time, or all)
-- Stage bits (tracer.events.STAGE_BITS): sent 1, send_failed 2, broker_acked 4, received 8,
-- offset_committed 16, business_done 32, business_failed 64, dead_lettered 128.
SELECT
    v_verdict AS verdict,
    v_topic AS topic,
    v_grp AS consumer_group,
    if({collapse:UInt8} = 1 AND v_verdict = 'delivered' AND empty(v_flags), '', v_msg_id) AS mid,
    count() AS n,
    any(v_flags) AS flags,
    any(v_msg_time) AS msg_time,
    any(v_pmask) AS pmask,
    any(v_cm) AS cmask,
    any(v_any_cmask) AS any_cmask,
    any(v_n_recv) AS n_recv,
    any(v_n_done) AS n_done,
    any(v_sent_ts) AS sent_ts,
    any(v_sfail_ts) AS sfail_ts,
    any(v_ack_ts) AS ack_ts,
    any(v_ack_p) AS ack_p,
    any(v_ack_o) AS ack_o,
    any(v_loc_p) AS loc_p,
    any(v_loc_o) AS loc_o,
    any(v_recv_ts) AS recv_ts,
    any(v_commit_ts) AS commit_ts,
    any(v_commit_o) AS commit_o,
    any(v_done_ts) AS done_ts,
    any(v_bfail_ts) AS bfail_ts,
    any(v_dl_ts) AS dl_ts,
    any(v_last_ts) AS last_ts,
    any(v_p_error) AS p_error,
    any(v_c_error) AS c_error,
    any(v_trace_id) AS trace_id,
    any(v_expected) AS expected,
    any(v_unsure) AS unsure
FROM
(
    SELECT
        msg_id AS v_msg_id,
        topic AS v_topic,
        grp AS v_grp,
        verdict AS v_verdict,
        flags AS v_flags,
        msg_time AS v_msg_time,
        pmask AS v_pmask,
        cm AS v_cm,
        any_cmask AS v_any_cmask,
        n_recv AS v_n_recv,
        n_done AS v_n_done,
        sent_ts AS v_sent_ts,
        sfail_ts AS v_sfail_ts,
        ack_ts AS v_ack_ts,
        ack_p AS v_ack_p,
        ack_o AS v_ack_o,
        loc_p AS v_loc_p,
        loc_o AS v_loc_o,
        recv_ts AS v_recv_ts,
        commit_ts AS v_commit_ts,
        commit_o AS v_commit_o,
        done_ts AS v_done_ts,
        bfail_ts AS v_bfail_ts,
        dl_ts AS v_dl_ts,
        last_ts AS v_last_ts,
        p_error AS v_p_error,
        c_error AS v_c_error,
        trace_id AS v_trace_id,
        expected AS v_expected,
        unsure AS v_unsure
    FROM
    (
        SELECT
            msg_id,
            topic,
            grp,
            msg_time,
            pmask,
            any_cmask,
            expected,
            unsure,
            sent_ts,
            sfail_ts,
            ack_ts,
            ack_p,
            ack_o,
            trace_id,
            p_error,
            indexOf(groups, grp) AS gi,
            if(gi > 0, g_mask[gi], 0) AS cm,
            if(gi > 0, g_nrecv[gi], 0) AS n_recv,
            if(gi > 0, g_ndone[gi], 0) AS n_done,
            if(gi > 0, g_recv_ts[gi], 0) AS recv_ts,
            if(gi > 0, g_commit_ts[gi], 0) AS commit_ts,
            if(gi > 0, g_commit_o[gi], -1) AS commit_o,
            if(gi > 0, g_done_ts[gi], 0) AS done_ts,
            if(gi > 0, g_bfail_ts[gi], 0) AS bfail_ts,
            if(gi > 0, g_dl_ts[gi], 0) AS dl_ts,
            if(gi > 0, g_last_ts[gi], p_last_ts) AS last_ts,
            if(gi > 0, g_error[gi], '') AS c_error,
            -- where the broker stored it: the ack, else where a group received it (ack lost)
            if(ack_ts > 0, ack_p, any_recv_p) AS loc_p,
            if(ack_ts > 0, ack_o, any_recv_o) AS loc_o,
            (bitAnd(pmask, 4) != 0 OR bitAnd(any_cmask, 248) != 0) AS stored,
            multiIf(
                pmask = 0 AND any_cmask = 0, 'never_sent',
                bitAnd(pmask, 3) = 0, 'audit_gap',
                bitAnd(pmask, 4) != 0 AND bitAnd(pmask, 1) = 0, 'audit_gap',
                cm != 0 AND bitAnd(cm, 8) = 0, 'audit_gap',
                n_done > 0, 'delivered',
                bitAnd(cm, 128) != 0, 'dead_lettered',
                bitAnd(cm, 64) != 0 AND bitAnd(cm, 16) != 0, 'failed_and_committed',
                bitAnd(cm, 16) != 0, 'lost_in_consumer',
                bitAnd(cm, 8) != 0, 'in_flight',
                stored, 'pending_in_broker',
                bitAnd(pmask, 2) != 0, 'send_failed',
                'unacked') AS verdict,
            arrayFilter(x -> x != '', [
                if(n_recv > 1, 'redelivered', ''),
                if(n_done > 1, 'duplicate_processing', ''),
                if(bitAnd(pmask, 2) != 0 AND bitAnd(pmask, 4) = 0 AND bitAnd(any_cmask, 248) != 0, 'ack_lost', '')
            ]) AS flags
        FROM
        (
            SELECT
                msg_id,
                anyIf(t1, t1 != '') AS topic,
                groupBitOrIf(mask1, g = '') AS pmask,
                groupBitOrIf(mask1, g != '') AS any_cmask,
                max(e1) AS expected,
                max(unsure1) AS unsure,
                maxIf(sent1, g = '') AS sent_ts,
                maxIf(sfail1, g = '') AS sfail_ts,
                maxIf(ack1, g = '') AS ack_ts,
                maxIf(ackp1, g = '') AS ack_p,
                maxIf(acko1, g = '') AS ack_o,
                maxIf(last1, g = '') AS p_last_ts,
                anyIf(err1, g = '' AND err1 != '') AS p_error,
                anyIf(tid1, tid1 != '') AS trace_id,
                anyIf(recvp1, g != '' AND recv1 > 0) AS any_recv_p,
                anyIf(recvo1, g != '' AND recv1 > 0) AS any_recv_o,
                if(sent_ts > 0, sent_ts, minIf(first1, first1 > 0)) AS msg_time,
                groupArrayIf(g, g != '') AS groups,
                groupArrayIf(mask1, g != '') AS g_mask,
                groupArrayIf(nrecv1, g != '') AS g_nrecv,
                groupArrayIf(ndone1, g != '') AS g_ndone,
                groupArrayIf(recv1, g != '') AS g_recv_ts,
                groupArrayIf(commit1, g != '') AS g_commit_ts,
                groupArrayIf(commito1, g != '') AS g_commit_o,
                groupArrayIf(done1, g != '') AS g_done_ts,
                groupArrayIf(bfail1, g != '') AS g_bfail_ts,
                groupArrayIf(dl1, g != '') AS g_dl_ts,
                groupArrayIf(last1, g != '') AS g_last_ts,
                groupArrayIf(err1, g != '') AS g_error
            FROM
            (
                SELECT
                    msg_id,
                    g,
                    groupBitOr(bit) AS mask1,
                    max(is_expected) AS e1,
                    /*COUNTS*/uniqExactIf(event_id, stage = 'received') AS nrecv1,
                    uniqExactIf(event_id, stage = 'business_done') AS ndone1,
                    toUInt8(0) AS unsure1,/*END_COUNTS*/
                    minIf(ts_us, stage = 'sent') AS sent1,
                    maxIf(ts_us, stage = 'send_failed') AS sfail1,
                    minIf(ts_us, bit != 0) AS first1,
                    maxIf(ts_us, bit != 0) AS last1,
                    maxIf(ts_us, stage = 'broker_acked') AS ack1,
                    argMaxIf(part, ts_us, stage = 'broker_acked') AS ackp1,
                    argMaxIf(off, ts_us, stage = 'broker_acked') AS acko1,
                    minIf(ts_us, stage = 'received') AS recv1,
                    argMinIf(part, ts_us, stage = 'received') AS recvp1,
                    argMinIf(off, ts_us, stage = 'received') AS recvo1,
                    maxIf(ts_us, stage = 'offset_committed') AS commit1,
                    maxIf(off, stage = 'offset_committed') AS commito1,
                    maxIf(ts_us, stage = 'business_done') AS done1,
                    maxIf(ts_us, stage = 'business_failed') AS bfail1,
                    maxIf(ts_us, stage = 'dead_lettered') AS dl1,
                    argMaxIf(err, ts_us, err != '') AS err1,
                    anyIf(topic, topic != '') AS t1,
                    anyIf(tid, tid != '') AS tid1
                FROM
                (
                    SELECT
                        msg_id,
                        if(stage IN ('sent', 'send_failed', 'broker_acked'), '',
                           if(ifNull(consumer_group, '') = '', '(no group)', assumeNotNull(consumer_group))) AS g,
                        toUInt8(transform(stage,
                            ['sent', 'send_failed', 'broker_acked', 'received', 'offset_committed',
                             'business_done', 'business_failed', 'dead_lettered'],
                            [1, 2, 4, 8, 16, 32, 64, 128], 0)) AS bit,
                        toUInt8(0) AS is_expected,
                        event_id,
                        stage,
                        ts_us,
                        toInt64(ifNull(partition, -1)) AS part,
                        ifNull(offset, toInt64(-1)) AS off,
                        ifNull(error, '') AS err,
                        topic,
                        ifNull(trace_id, '') AS tid
                    FROM {db:Identifier}.trace_events
                    WHERE ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64} /*EVENT_FILTER*/
                    /*EXPECTED_UNION*/
                )
                GROUP BY msg_id, g
            )
            GROUP BY msg_id
            HAVING /*JUDGE_FILTER*/
        )
        ARRAY JOIN
            if({restrict_groups:UInt8} = 1, {groups:Array(String)},
               if(empty(arrayDistinct(arrayConcat(groups, {groups:Array(String)},
                        arrayElement({topic_groups:Array(Array(String))}, indexOf({topics:Array(String)}, topic))))),
                  [''],
                  arrayDistinct(arrayConcat(groups, {groups:Array(String)},
                        arrayElement({topic_groups:Array(Array(String))}, indexOf({topics:Array(String)}, topic))))))
            AS grp
    )
)
GROUP BY verdict, topic, consumer_group, mid
