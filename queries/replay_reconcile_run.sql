-- One reconcile run's row (replay --run ID): its window and grace.
SELECT run_id, started_us, finished_us, window_from_us, window_to_us, grace_s
FROM {db:Identifier}.reconcile_runs
WHERE run_id = {run_id:String}
LIMIT 1
