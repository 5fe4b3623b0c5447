-- Messages with events from the given emitters (those with seq gaps) in the window.
SELECT DISTINCT msg_id
FROM {db:Identifier}.trace_events
WHERE ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64} AND has({emitters:Array(String)}, emitter_id)
