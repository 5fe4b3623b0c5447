-- Groups seen receiving from a topic around one message's time: the groups expected to process it
-- (trace-msg judges the message for each of them, even those that never received it).
SELECT groupUniqArray(if(ifNull(consumer_group, '') = '', '(no group)', assumeNotNull(consumer_group))) AS gs
FROM {db:Identifier}.trace_events
WHERE stage = 'received' AND topic = {topic:String} AND ts_us >= {lo:UInt64} AND ts_us < {hi:UInt64}
