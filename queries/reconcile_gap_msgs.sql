-- The events of the given emitters (those with seq gaps) in the window, by message, side and
-- emitter: which messages they touch (the emitter_seq_gap flag), and which emitters recorded a
-- message's producer stages (consumer_group '') or a group's stages, so that a gap is charged only
-- to the pairs whose missing stage that emitter would have recorded (tracer.analysis.gaps).
SELECT DISTINCT msg_id, if(stage IN {producer_stages:SQL}, '', ifNull(consumer_group, '')) AS consumer_group,
    emitter_id
FROM {db:Identifier}.trace_events
WHERE ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64} AND has({emitters:Array(String)}, emitter_id)
