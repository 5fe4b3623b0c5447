-- The verdicts of one stored reconcile run that `msgtrace replay` may re-publish, filtered by verdict,
-- consumer group and topic (an empty filter array = no filter on that column).
SELECT msg_id, consumer_group, topic, verdict, stopped_at, flags, evidence
FROM {db:Identifier}.verdicts
WHERE run_id = {run_id:String}
  AND (length({verdicts:Array(String)}) = 0 OR has({verdicts:Array(String)}, verdict))
  AND (length({groups:Array(String)}) = 0 OR has({groups:Array(String)}, consumer_group))
  AND (length({topics:Array(String)}) = 0 OR has({topics:Array(String)}, topic))
ORDER BY msg_id, consumer_group
