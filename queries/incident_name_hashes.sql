-- cityHash64 of a few names (topics, consumer groups): incident_timeline.sql groups by these hashes
-- and tracer.analysis.funnel names its rows back with them.
SELECT name, cityHash64(name) AS h
FROM (SELECT arrayJoin({names:Array(String)}) AS name)
