-- Consumer groups a reconcile run judged this message for (the verdicts table keeps every pair that
-- was not plainly delivered): trace-msg judges the message for them too.
SELECT DISTINCT consumer_group
FROM {db:Identifier}.verdicts
WHERE msg_id = {msg_id:String} AND consumer_group != ''
