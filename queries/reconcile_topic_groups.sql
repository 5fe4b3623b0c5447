-- Consumer groups expected per topic by default: the groups seen receiving from it in the window.
SELECT
    topic AS t,
    groupUniqArray(if(ifNull(consumer_group, '') = '', '(no group)', assumeNotNull(consumer_group))) AS gs
FROM {db:Identifier}.trace_events
WHERE stage = 'received' AND ts_us >= {from_us:UInt64} AND ts_us < {cut:UInt64}
GROUP BY topic
