-- Ids starting with a prefix (help for an unknown id). The range predicate lets the primary key
-- (msg_id, event_id) skip to the prefix.
SELECT DISTINCT msg_id
FROM {db:Identifier}.trace_events
WHERE msg_id >= {prefix:String} AND startsWith(msg_id, {prefix:String})
ORDER BY msg_id
LIMIT 10
