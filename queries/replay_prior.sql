-- Earlier replay runs that published any of these messages (read by primary key): such a message is
-- not replayed again unless --again.
SELECT msg_id, run_id, max(at_us) AS at_us
FROM {db:Identifier}.replay_messages
WHERE msg_id IN (SELECT arrayJoin({ids:Array(String)})) AND result = 'published'
GROUP BY msg_id, run_id
ORDER BY msg_id, at_us
