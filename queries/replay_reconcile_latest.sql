-- The latest reconcile run (replay --run latest).
SELECT run_id, started_us, finished_us, window_from_us, window_to_us, grace_s
FROM {db:Identifier}.reconcile_runs
ORDER BY started_us DESC, run_id DESC
LIMIT 1
